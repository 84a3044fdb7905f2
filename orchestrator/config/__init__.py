"""What a job is: inventory, presets and `--set`, the plan."""
