"""Jinja2 launch templates, installed as package `orchestrator.templates` (see bundle.py)."""
