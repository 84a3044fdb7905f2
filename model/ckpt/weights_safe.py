"""Readers of HF weight files that trust nothing in them: safetensors, torch .bin, shard index.

    read_safetensors(Path("model.safetensors"))       -> {name: float32/int ndarray}
    read_torch_bin(Path("pytorch_model.bin"))         -> {name: ndarray}   (no torch needed)
    index_shards(Path("m/model.safetensors.index.json")) -> [Path("m/model-00001-of-00002...")]

Downloaded weights are someone else's file. Every header length, offset, dtype, shape, stride
and shard name is checked against the file before anything is allocated or read: crafted input
gives one ConvertError line naming the file (and tensor), never a crash, an allocation larger
than the file, or bytes from outside the tensor's own storage. The .bin unpickler rebuilds only
tensors and dicts (any other global is refused) from stored (uncompressed) zip entries.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                      "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_, "BF16": "bfloat16"}
TORCH_STORAGES: dict[str, Any] = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16"}
_KEY = re.compile(r"[0-9A-Za-z_.]{1,64}")


class ConvertError(ValueError):
    """Weights cannot be read, mapped or written; the message names the file/tensor."""


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _itemsize(dtype: Any) -> int:
    return 2 if dtype == "bfloat16" else int(np.dtype(dtype).itemsize)


def _as_array(raw: bytes, dtype: Any) -> np.ndarray:
    if dtype == "bfloat16":
        return _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


def _dims(value: Any) -> tuple[int, ...] | None:
    """A shape/stride list of non-negative ints (no bools), else None."""
    if not isinstance(value, (list, tuple)) or len(value) > 16:
        return None
    if not all(type(v) is int and 0 <= v < 1 << 62 for v in value):
        return None
    return tuple(value)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file (bf16 widened to float32, exactly).

    Raises:
        ConvertError: a header length past the file or MAX_HEADER, a header that is not a
            JSON object, an unknown dtype, a shape or offsets that do not match the data.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) != 8:
                raise ConvertError(f"{path}: not a safetensors file ({size} bytes)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > min(MAX_HEADER, size - 8):
                raise ConvertError(f"{path}: header length {hlen} does not fit the file "
                                   f"({size} bytes)")
            header = json.loads(f.read(hlen))
            if not isinstance(header, dict):
                raise ConvertError(f"{path}: header is not a JSON object")
            base, data_len = 8 + hlen, size - 8 - hlen
            tensors = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype, shape, start, end = _entry(path, name, info, data_len)
                f.seek(base + start)
                raw = f.read(end - start)
                if len(raw) != end - start:
                    raise ConvertError(f"{path}: tensor {name!r}: file ends early")
                tensors[name] = _as_array(raw, dtype).reshape(shape).copy()
            return tensors
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConvertError(f"{path}: not a readable safetensors file: {e}") from e


def _entry(path: Path, name: str, info: Any, data_len: int
           ) -> tuple[Any, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, each checked against the data."""
    where = f"{path}: tensor {name[:80]!r}"
    if not isinstance(info, dict):
        raise ConvertError(f"{where}: entry is not an object")
    name_of = info.get("dtype")
    dtype = SAFETENSORS_DTYPES.get(name_of) if isinstance(name_of, str) else None
    if dtype is None:
        raise ConvertError(f"{where}: unsupported dtype {str(info.get('dtype'))[:20]!r}")
    shape, offsets = _dims(info.get("shape")), _dims(info.get("data_offsets"))
    if shape is None:
        raise ConvertError(f"{where}: bad shape {str(info.get('shape'))[:60]}")
    if offsets is None or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_len:
        raise ConvertError(f"{where}: data_offsets {str(info.get('data_offsets'))[:60]} outside "
                           f"the {data_len} data bytes")
    start, end = offsets
    if math.prod(shape) * _itemsize(dtype) != end - start:
        raise ConvertError(f"{where}: shape {list(shape)} needs "
                           f"{math.prod(shape) * _itemsize(dtype)} bytes, offsets give "
                           f"{end - start}")
    return dtype, shape, start, end


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds the tensors of a torch zip checkpoint as numpy arrays; refuses anything else."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_rest: data
        if module == "torch" and name in TORCH_STORAGES:
            return name
        raise ConvertError(f"{self.path}: unsupported object {module[:60]}.{name[:60]} in the "
                           "pickle; convert the file to model.safetensors with torch first")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConvertError(f"{self.path}: unsupported persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        dtype = TORCH_STORAGES.get(storage_type) if isinstance(storage_type, str) else None
        if dtype is None or not isinstance(key, str) or not _KEY.fullmatch(key) \
                or type(numel) is not int or numel < 0:
            raise ConvertError(f"{self.path}: bad storage reference {str(pid)[:80]}")
        if key not in self.storages:
            self.storages[key] = self._storage(key, dtype, numel)
        storage = self.storages[key]
        if storage.size != numel:
            raise ConvertError(f"{self.path}: storage {key} has {storage.size} elements, the "
                               f"pickle says {numel}")
        return storage

    def _storage(self, key: str, dtype: Any, numel: int) -> np.ndarray:
        name = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise ConvertError(f"{self.path}: storage {key} missing from the archive") from None
        want = numel * _itemsize(dtype)
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != want:
            raise ConvertError(f"{self.path}: storage {key}: {info.file_size} bytes "
                               f"(compression {info.compress_type}), expected {want} stored")
        return _as_array(self.archive.read(name), dtype)

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any,
                       *_ignored: Any) -> np.ndarray:
        """torch._utils._rebuild_tensor_v2 for numpy: a checked strided view, copied."""
        shape, strides = _dims(size), _dims(stride)
        if not isinstance(storage, np.ndarray) or type(offset) is not int or offset < 0 \
                or shape is None or strides is None or len(shape) != len(strides):
            raise ConvertError(f"{self.path}: bad tensor (offset {str(offset)[:20]}, size "
                               f"{str(size)[:40]}, stride {str(stride)[:40]})")
        if 0 in shape:
            return np.zeros(shape, dtype=storage.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= storage.size:
            raise ConvertError(f"{self.path}: tensor of size {list(shape)}, stride "
                               f"{list(strides)}, offset {offset} reads element {last} of a "
                               f"{storage.size}-element storage")
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape=shape,
                                               strides=tuple(s * storage.itemsize
                                                             for s in strides))
        return np.array(view)


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save` zip file (torch >= 1.6 format), without importing torch.

    Raises:
        ConvertError: not a torch zip, a global other than tensors/dicts, a storage or a
            view that does not fit the bytes in the file, a result that is not {str: tensor}.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ConvertError(f"{path}: not a torch zip checkpoint ({e}); legacy (pre-1.6) files "
                           "need torch: re-save them as model.safetensors") from e
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pkl:
            raise ConvertError(f"{path}: no data.pkl inside; not a torch checkpoint")
        prefix = pkl[0][: -len("/data.pkl")]
        try:
            with archive.open(pkl[0]) as f:
                state = _TorchUnpickler(f, archive, prefix, path).load()
        except ConvertError:
            raise
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError,
                IndexError, EOFError, RecursionError, OverflowError, zipfile.BadZipFile,
                OSError) as e:
            raise ConvertError(f"{path}: cannot unpickle: {str(e)[:200]}") from e
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise ConvertError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def index_shards(index: Path) -> list[Path]:
    """The shard files named by a `model.safetensors.index.json`, each inside its folder.

    Raises:
        ConvertError: unreadable JSON, no `weight_map` object of strings, or a shard name that
            is not a plain file name in the index's folder (no '/', '..', symlink out).
    """
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ConvertError(f"{index}: cannot read weight_map: {str(e)[:200]}") from e
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise ConvertError(f"{index}: weight_map: expected an object of shard file names")
    folder = index.parent.resolve()
    shards = []
    for name in sorted(set(wmap.values())):
        path = index.parent / name
        bad = ("/" in name or "\\" in name or name in ("", ".", "..") or "\0" in name
               or path.resolve().parent != folder)
        if bad:
            raise ConvertError(f"{index}: weight_map names shard {name[:80]!r}, which is not "
                               "a file in the model folder")
        shards.append(path)
    return shards
