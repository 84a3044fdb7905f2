"""Checkpoints: the layout on nodes, collect-ckpt's MindSpore side, weight conversion.

    python -m orchestrate_bloom.ckpt.layout steps|adopt ...        (on nodes)
    python -m orchestrate_bloom.ckpt.tools merge-strategies|needed-ranks|strip|transform|check
    python -m orchestrate_bloom.ckpt.convert --hf DIR --out bloom.ckpt

layout.py (THE checkpoint layout), tools.py + strategy.py + transform.py + stream.py
(collect-ckpt), convert.py + weights_safe.py (HF), mindformers.py (MindFormers names).
"""
