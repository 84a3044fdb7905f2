"""Job records and the job lifecycle (up / status / logs / down)."""
