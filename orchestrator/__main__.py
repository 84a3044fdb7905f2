"""`python -m orchestrator` is the same as the `orchestrate` console script."""

from __future__ import annotations

from orchestrator.cli.main import main

if __name__ == "__main__":
    main()
