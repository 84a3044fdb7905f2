"""Crafted weight files, built here, against the hardened readers
(orchestrate_bloom.ckpt.weights_safe).

    python -m pytest tests/unit/test_weights_safe.py -q

Each crafted case must give one ConvertError line naming the file, never a crash, an
allocation past the file, or bytes from outside a tensor's storage (issue 14 item 4, 8).
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt.weights_safe import (
    ConvertError,
    index_shards,
    read_safetensors,
    read_torch_bin,
)


def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    return b"\x8a\x09" + n.to_bytes(9, "little", signed=True)  # LONG1


def _tuple(xs: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(x) for x in xs) + b"t"


def tensor_pickle(numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                  storage: str = "FloatStorage", glob: bytes = b"torch._utils\n_rebuild_tensor_v2"
                  ) -> bytes:
    """The data.pkl torch.save writes for {"w": tensor}, opcode by opcode (protocol 2)."""
    pid = (b"(" + _u("storage") + b"ctorch\n" + storage.encode() + b"\n" + _u("0") + _u("cpu")
           + _int(numel) + b"tQ")
    t = b"c" + glob + b"\n(" + pid + _int(offset) + _tuple(size) + _tuple(stride) + b"\x89}tR"
    return b"\x80\x02}" + _u("w") + t + b"s."


def torch_bin(path: Path, pkl: bytes, data: bytes, compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr(zipfile.ZipInfo("archive/data/0"), data, compress_type=compress)
    return path


FOUR = np.arange(4, dtype="<f4").tobytes()


def one_line(e: pytest.ExceptionInfo[ConvertError], path: Path) -> str:
    text = str(e.value)
    assert "\n" not in text and str(path) in text and len(text) < 400, text
    return text


def test_a_well_formed_bin_is_read(tmp_path: Path) -> None:
    path = torch_bin(tmp_path / "ok.bin", tensor_pickle(4, 0, (2, 2), (2, 1)), FOUR)
    got = read_torch_bin(path)
    assert got["w"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    t = read_torch_bin(torch_bin(tmp_path / "t.bin", tensor_pickle(4, 1, (2,), (2,)), FOUR))
    assert t["w"].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("numel,offset,size,stride,why", [
    (4, 0, (2**18,), (1,), "reads element"),           # 1 MiB of heap before the fix
    (4, 0, (2, 2), (2**40, 1), "reads element"),       # SIGSEGV before the fix
    (4, 3, (2,), (1,), "reads element"),               # offset + size past the storage
    (4, -1, (2,), (1,), "bad tensor"),                 # negative offset
    (4, 0, (2,), (-1,), "bad tensor"),                 # negative stride
    (2**30, 0, (2,), (1,), "expected 4294967296 stored"),  # numel larger than the bytes
])
def test_crafted_bin_views_are_refused(tmp_path: Path, numel: int, offset: int,
                                       size: tuple[int, ...], stride: tuple[int, ...],
                                       why: str) -> None:
    path = torch_bin(tmp_path / "x.bin", tensor_pickle(numel, offset, size, stride), FOUR)
    with pytest.raises(ConvertError) as e:
        read_torch_bin(path)
    assert why in one_line(e, path)


def test_bin_globals_and_compressed_storages_are_refused(tmp_path: Path) -> None:
    evil = torch_bin(tmp_path / "g.bin", tensor_pickle(4, 0, (4,), (1,), glob=b"os\nsystem"),
                     FOUR)
    with pytest.raises(ConvertError) as e:
        read_torch_bin(evil)
    assert "unsupported object os.system" in one_line(e, evil)
    bomb = torch_bin(tmp_path / "z.bin", tensor_pickle(4, 0, (4,), (1,)), FOUR,
                     zipfile.ZIP_DEFLATED)
    with pytest.raises(ConvertError) as e:
        read_torch_bin(bomb)
    assert "stored" in one_line(e, bomb)
    junk = torch_bin(tmp_path / "j.bin", b"\x80\x02(((((", FOUR)
    with pytest.raises(ConvertError) as e:
        read_torch_bin(junk)
    assert "cannot unpickle" in one_line(e, junk)


def safetensors(path: Path, header: object, data: bytes, hlen: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    return path


def test_a_well_formed_safetensors_is_read(tmp_path: Path) -> None:
    path = safetensors(tmp_path / "ok.safetensors",
                       {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                        "__metadata__": {"format": "pt"}}, FOUR)
    assert read_safetensors(path)["w"].tolist() == [[0.0, 1.0], [2.0, 3.0]]


@pytest.mark.parametrize("header,hlen,why", [
    ({}, 2**63, "does not fit the file"),
    ({}, 2**40, "does not fit the file"),
    ([1, 2], None, "not a JSON object"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1 << 40]}}, None, "outside"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 4]}}, None, "outside"),
    ({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 16]}}, None, "needs 256 bytes"),
    ({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, None, "unsupported dtype"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, None, "bad shape"),
    ({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, None, "bad shape"),
    ({"w": [1]}, None, "not an object"),
])
def test_crafted_safetensors_are_refused(tmp_path: Path, header: object, hlen: int | None,
                                         why: str) -> None:
    path = safetensors(tmp_path / "x.safetensors", header, FOUR, hlen)
    with pytest.raises(ConvertError) as e:
        read_safetensors(path)
    assert why in one_line(e, path)


def test_index_shards_stay_in_the_model_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (model / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    assert index_shards(index) == [model / "s1.safetensors"]
    for bad in ("../outside.safetensors", "/etc/passwd", "sub/x.safetensors",
                "link.safetensors", ".."):
        index.write_text(json.dumps({"weight_map": {"a": bad}}))
        with pytest.raises(ConvertError) as e:
            index_shards(index)
        assert "not a file in the model folder" in one_line(e, index)
    index.write_text("[" * 100_000)
    with pytest.raises(ConvertError):
        index_shards(index)


def test_a_manifest_model_section_cannot_size_a_huge_model(tmp_path: Path) -> None:
    """The model section of a node's manifest sizes the load check's model: it must fit the
    checkpoint's bytes before anything is built (issue 14 item 10)."""
    from orchestrate_bloom.ckpt import tools as ckpt_tools
    from orchestrate_bloom.config import BloomConfig

    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\0" * 1000)
    huge = BloomConfig.from_dict({"n_layer": 100_000, "hidden_size": 8192, "n_head": 64}, "x")

    def never(_config: object) -> object:
        raise AssertionError("a model was built")

    with pytest.raises(ckpt_tools.ToolError, match="more than the 1000-byte checkpoint can hold"):
        ckpt_tools.check(ckpt, huge, model_factory=never)
