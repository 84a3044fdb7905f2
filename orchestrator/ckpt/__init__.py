"""collect-ckpt: choose the step, fetch, merge, write the outputs."""
