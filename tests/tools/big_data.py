"""A local data folder that `up` accepts and that takes a moment to stage.

    big = big_data_folder(tmp_path / "bigdata", mib=64)
    orchestrate up ... --set data.path={big} --entrypoint 'sleep ...'

`up` refuses a local folder without MindRecord rows of seq_length + 1 ids
(orchestrator/job/dataset.check_rows, which reads the width from summary.json). The folder
holds an empty `alpaca.mindrecord`, a summary.json with the tiny preset's seq_length and
`mib` MiB of random bytes; the tests that use it run an entrypoint that never reads the rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrate_bloom.presets import load_preset_sections


def big_data_folder(folder: Path, mib: int, preset: str = "tiny") -> Path:
    """`folder` filled as above (created); returned."""
    folder.mkdir(parents=True)
    with open(folder / "blob.bin", "wb") as fh:
        fh.write(os.urandom(mib << 20))
    seq = int(load_preset_sections(preset)["model"]["seq_length"])
    (folder / "alpaca.mindrecord").write_bytes(b"")
    (folder / "summary.json").write_text(json.dumps({"seq_length": seq}))
    return folder
