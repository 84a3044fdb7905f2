"""Data: preparing Alpaca JSON into MindRecord shards and reading them back (kept import-light:
the control plane imports data.key, the content key of a prepared dataset, stdlib only).

    python -m orchestrate_bloom.data --input alpaca_data.json --output data/alpaca ...

prepare.py (entry point, `__main__` here runs it), key.py, read.py, pretokens.py,
template_ids.py, train_tokenizer.py.
"""
