"""`python -m orchestrate_bloom.data`: prepare a dataset (orchestrate_bloom.data.prepare)."""

from __future__ import annotations

import sys

from .prepare import main

sys.exit(main())
