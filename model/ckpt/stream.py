"""MindSpore .ckpt files read and written one parameter at a time (no mindspore import).

    entries = scan(Path("rank_0.ckpt"))          # name -> Entry (shape, type, byte ranges)
    with CkptWriter(Path("out.ckpt")) as w:       # one parameter in memory at a time
        w.write("w", entries["w"].dims, "Float32", array)

A .ckpt is a sequence of protobuf `Checkpoint` messages, each holding one `Value` (field 1):
`tag` (the name, field 1) and a `TensorProto` (field 2) with `dims` (1), `tensor_type` (2)
and `tensor_content` (3); a parameter over 512 MiB is several consecutive Values with the same
tag and full dims, whose contents concatenate; the file may end with `crc_num` + 10 bytes.
`load_checkpoint` parses all of it into memory; here only the framing is parsed, and tensor
bytes go straight from the file into their final place (`read_into`), so reassembling or
filtering a checkpoint holds one parameter, not the whole file (or two copies of it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

ITEMSIZE = {
    "Float16": 2, "BFloat16": 2, "Float32": 4, "Float64": 8,
    "Int8": 1, "Int16": 2, "Int32": 4, "Int64": 8,
    "UInt8": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8, "Bool": 1,
}
SLICE_BYTES = 512 * 1024 * 1024  # bytes per Value (MindSpore's SLICE_SIZE)
_CRC_TAIL = 17  # b"crc_num" + 10 bytes
COPY_BLOCK = 8 << 20


class UnsupportedCkpt(ValueError):
    """Not a plain .ckpt this module can stream (encrypted, map tensors, unknown type)."""


@dataclass
class Entry:
    """One parameter of a .ckpt file: where its bytes are."""

    name: str
    dims: tuple[int, ...]
    dtype: str  # MindSpore's tensor_type, e.g. "Float32"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) of content
    records: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) whole Values

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.chunks)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise UnsupportedCkpt("truncated varint")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise UnsupportedCkpt("bad varint")


def _read_varint(fh: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise UnsupportedCkpt("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise UnsupportedCkpt("bad varint")


def _tensor_header(fh: BinaryIO, end: int) -> tuple[tuple[int, ...], str, int, int]:
    """Parse a TensorProto from the file position up to `end`: dims, type, content range."""
    dims: list[int] = []
    dtype = ""
    content = (-1, 0)
    while fh.tell() < end:
        key = _read_varint(fh)
        num, wire = key >> 3, key & 7
        if num == 1 and wire == 0:
            dims.append(_read_varint(fh))
        elif num == 1 and wire == 2:  # packed dims
            raw = fh.read(_read_varint(fh))
            pos = 0
            while pos < len(raw):
                d, pos = _varint(raw, pos)
                dims.append(d)
        elif num == 2 and wire == 2:
            dtype = fh.read(_read_varint(fh)).decode()
        elif num == 3 and wire == 2:
            size = _read_varint(fh)
            content = (fh.tell(), size)
            if content[0] + size > end:
                raise UnsupportedCkpt("tensor bytes run past their value")
            fh.seek(size, io.SEEK_CUR)
        else:
            raise UnsupportedCkpt(f"unexpected field {num} (wire type {wire}) in a tensor")
    if content[0] < 0 or not dtype:
        raise UnsupportedCkpt("tensor without type or content")
    return tuple(dims), dtype, content[0], content[1]


def scan(path: Path) -> dict[str, Entry]:
    """Every parameter of the .ckpt at `path` with its shape, type and byte ranges, in order.

    Raises:
        UnsupportedCkpt: not a plain .ckpt (encrypted, map tensors, unknown tensor type).
    """
    entries: dict[str, Entry] = {}
    size = path.stat().st_size
    with open(path, "rb") as fh:
        end = size
        if size >= _CRC_TAIL:
            fh.seek(size - _CRC_TAIL)
            if fh.read(7) == b"crc_num":
                end = size - _CRC_TAIL
            fh.seek(0)
        while fh.tell() < end:
            start = fh.tell()
            if _read_varint(fh) != (1 << 3 | 2):
                raise UnsupportedCkpt(f"{path}: not a checkpoint record at byte {start}")
            length = _read_varint(fh)
            record_end = fh.tell() + length
            if record_end > end:
                raise UnsupportedCkpt(f"{path}: record at byte {start} runs past the end")
            name, tensor = None, None
            while fh.tell() < record_end:
                key = _read_varint(fh)
                num, wire = key >> 3, key & 7
                if num == 1 and wire == 2:
                    name = fh.read(_read_varint(fh)).decode()
                elif num == 2 and wire == 2:
                    tlen = _read_varint(fh)
                    tensor = _tensor_header(fh, fh.tell() + tlen)
                else:
                    raise UnsupportedCkpt(f"{path}: field {num} in a value (map tensor?)")
            if fh.tell() != record_end:
                raise UnsupportedCkpt(f"{path}: value at byte {start} overruns its record")
            if name is None or tensor is None:
                raise UnsupportedCkpt(f"{path}: value without name or tensor at byte {start}")
            dims, dtype, offset, nbytes = tensor
            if dtype not in ITEMSIZE:
                raise UnsupportedCkpt(f"{path}: {name}: tensor type {dtype!r}")
            entry = entries.get(name)
            if entry is None:
                entry = entries[name] = Entry(name, dims, dtype)
            elif (entry.dims != dims or entry.dtype != dtype
                  or sum(entry.records[-1]) != start):  # chunks must be consecutive Values
                raise UnsupportedCkpt(f"{path}: {name} appears twice")
            entry.chunks.append((offset, nbytes))
            entry.records.append((start, record_end - start))
        for entry in entries.values():
            want = int(np.prod(entry.dims, dtype=np.int64)) * ITEMSIZE[entry.dtype]
            if entry.nbytes != want:
                raise UnsupportedCkpt(f"{path}: {entry.name} has {entry.nbytes} bytes for "
                                      f"shape {list(entry.dims)} {entry.dtype}")
    return entries


def read_into(fh: io.BufferedReader, entry: Entry, out: memoryview) -> None:
    """Read `entry`'s bytes (all its chunks, in order) into `out` (exactly its size)."""
    if out.nbytes != entry.nbytes:
        raise ValueError(f"{entry.name}: {entry.nbytes} bytes into a {out.nbytes}-byte buffer")
    pos = 0
    flat = out.cast("B")
    for offset, size in entry.chunks:
        fh.seek(offset)
        got = 0
        while got < size:
            n = fh.readinto(flat[pos + got:pos + size])
            if not n:
                raise UnsupportedCkpt(f"{entry.name}: file ended inside the tensor")
            got += n
        pos += size


def raw_dtype(dtype: str) -> np.dtype[Any]:
    """A numpy type of the same item size (bytes are moved, never interpreted)."""
    return np.dtype(f"u{ITEMSIZE[dtype]}")


def _key(num: int, wire: int) -> bytes:
    return _encode_varint(num << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class CkptWriter:
    """Writes a .ckpt one parameter at a time (the layout `save_checkpoint` writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed in close()
        self.names: list[str] = []

    def write(self, name: str, dims: tuple[int, ...], dtype: str, data: np.ndarray) -> None:
        """Append parameter `name` with bytes `data` (C-contiguous, any numpy type)."""
        if not data.flags.c_contiguous:
            raise ValueError(f"{name}: data must be C-contiguous")
        raw = data.data.cast("B")
        for pos in range(0, max(raw.nbytes, 1), SLICE_BYTES):  # big tensors: several Values
            self._value(name, dims, dtype, raw[pos:pos + SLICE_BYTES])
        self.names.append(name)

    def copy_records(self, src: BinaryIO, entry: Entry) -> None:
        """Append `entry` byte for byte from the open source file `src`."""
        for offset, size in entry.records:
            src.seek(offset)
            left = size
            while left:
                block = src.read(min(left, COPY_BLOCK))
                if not block:
                    raise UnsupportedCkpt(f"{entry.name}: source ended inside the record")
                self._fh.write(block)
                left -= len(block)
        self.names.append(entry.name)

    def _value(self, name: str, dims: tuple[int, ...], dtype: str, content: memoryview) -> None:
        tensor = b"".join(_key(1, 0) + _encode_varint(d) for d in dims)
        tensor += _key(2, 2) + _encode_varint(len(dtype)) + dtype.encode()
        tensor_head = tensor + _key(3, 2) + _encode_varint(content.nbytes)
        tag = name.encode()
        tensor_len = len(tensor_head) + content.nbytes
        value_head = (_key(1, 2) + _encode_varint(len(tag)) + tag
                      + _key(2, 2) + _encode_varint(tensor_len))
        value_len = len(value_head) + tensor_len
        self._fh.write(_key(1, 2) + _encode_varint(value_len) + value_head + tensor_head)
        self._fh.write(content)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> CkptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_entries(entries: dict[str, Entry]) -> Iterator[Entry]:
    """The entries in file order."""
    return iter(sorted(entries.values(), key=lambda e: e.records[0][0]))
