"""How many examples a property test draws: its own number, or fewer in CI.

    @settings(max_examples=examples(300), deadline=None)

tests/run.sh (CI) runs pytest with `--hypothesis-profile=ci`: every property still runs, on
at most CI_EXAMPLES examples each (hypothesis' data generation was ~40 % of the unit tier).
A plain `python -m pytest` (the default profile) draws each test's own, larger number.
"""

from __future__ import annotations

from hypothesis import settings

CI_EXAMPLES = 60
settings.register_profile("ci", max_examples=CI_EXAMPLES)


def examples(n: int) -> int:
    """`n`, or at most CI_EXAMPLES when the "ci" profile is loaded."""
    return min(n, CI_EXAMPLES) if settings.get_current_profile_name() == "ci" else n
