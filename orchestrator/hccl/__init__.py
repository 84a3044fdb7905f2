"""HCCL rank tables: build, validate, discover device IPs."""
