"""The resume record: the trainer writes the step it resumed from, the control plane reads it.

    python -m pytest -q tests/unit/test_resumed.py

One source for `resumed_step` (model/ckpt/layout.py record_resumed / parse_resumed): data in
`ranks/<r>/resumed.json`, never a pattern grepped out of a log.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrate_bloom.ckpt import layout as ck


def test_record_then_parse_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ranks" / "3" / "resumed.json"
    path.parent.mkdir(parents=True)
    for step in (0, 30):
        ck.record_resumed(step, {ck.RESUMED_ENV: str(path)})
        assert ck.parse_resumed(path.read_text()) == step


def test_nothing_recorded_without_the_launcher(tmp_path: Path) -> None:
    ck.record_resumed(5, {})
    ck.record_resumed(5, {ck.RESUMED_ENV: ""})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["", "resumed from step 3", "{", "[3]", '{"resumed_step": -1}',
                                  '{"resumed_step": true}', '{"resumed_step": "3"}',
                                  '{"resumed_step": 3.5}', '{"other": 3}', "\x00" * 4096,
                                  '{"resumed_step": 3' + " " * 5000 + "}"[:1]])
def test_a_bad_record_is_none(text: str) -> None:
    """A node is untrusted: what is not a record reads as "not recorded", never a crash."""
    assert ck.parse_resumed(text[:ck.RESUMED_MAX_BYTES]) is None
