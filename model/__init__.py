"""The bundled MindSpore Bloom (data plane): shipped to nodes, never imports orchestrator.

The model and inference at the top (bloom, layers, config, presets, infer, generate, pipeline,
tokenizer, prompts, fileio, tool_io); train/ (the trainer: `python -m orchestrate_bloom.train`),
data/ (dataset preparation: `python -m orchestrate_bloom.data`), ckpt/ (checkpoint layout,
collect-ckpt tools, weight conversion). docs/design.md says which module owns which contract.
"""
