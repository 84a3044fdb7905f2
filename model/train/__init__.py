"""Training: the trainer and what only it needs (kept import-light: the control plane imports
train.stages, the one layer split, without MindSpore).

    python -m orchestrate_bloom.train --job JOB.yaml [--resume] [--set section.key=value ...]

trainer.py (entry point, `__main__` here runs it), cells.py (the MindSpore cells), job.py (the
job file), stages.py (THE layer split), shard_plan.py, schedule.py, steplog.py, graceful.py,
cpu_share.py.
"""
