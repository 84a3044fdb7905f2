"""orchestrate: the control plane that plans, launches and collects Bloom jobs."""

from __future__ import annotations

__version__ = "0.1.0"
