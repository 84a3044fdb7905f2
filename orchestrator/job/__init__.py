"""A job's life: record, render, stage, launch, watch, stop, logs."""
