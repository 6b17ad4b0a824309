"""A GGUF header reader that needs only the header bytes: the one both planes use (the GGUF format is a fact
they share, beside the contract).

gguf-py's GGUFReader memory-maps the whole file and imports numpy; the planner must describe a 131-212 GB split
set from its headers alone, read locally or with HTTP range requests, and the runtime's merge must start at
once. This reads the key-value section and the tensor table through a `read(offset, size)` callable, in
buffered chunks, and never touches tensor data. Large arrays (the vocabulary, merges) are skipped, keeping only
their length. Each key's byte span is kept, so a merge can copy a header's key-values byte for byte.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from r1_operator.api import ggml

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_KEEP_ARRAY = 4096  # longer arrays are summarised as their length


class GGUFError(ValueError):
    """The file is not a readable GGUF header; the message names the file and the byte offset."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    dims: tuple[int, ...]  # GGUF ne order
    nbytes: int
    offset: int = 0  # from the start of the data section

    @classmethod
    def make(cls, name: str, type_: int, dims: tuple[int, ...], offset: int = 0) -> TensorInfo:
        return cls(name, type_, tuple(dims), ggml.nbytes(type_, math.prod(dims)), offset)


@dataclass(frozen=True)
class SkippedArray:
    type: int
    length: int


@dataclass
class GGUFHeader:
    source: str
    version: int
    kv: dict[str, object]
    tensors: list[TensorInfo]
    data_offset: int
    kv_spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> [start, end) of its entry


class _Cursor:
    def __init__(self, read: Callable[[int, int], bytes], source: str, chunk: int = 1 << 20) -> None:
        self._read = read
        self.source = source
        self.chunk = chunk
        self.pos = 0
        self._buf = b""
        self._buf_start = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if not (self._buf_start <= self.pos and end <= self._buf_start + len(self._buf)):
            want = max(n, self.chunk)
            data = self._read(self.pos, want)
            if len(data) < n:
                raise GGUFError(f"{self.source}: truncated GGUF header at byte {self.pos} (wanted {n} bytes, got {len(data)})")
            self._buf, self._buf_start = data, self.pos
        off = self.pos - self._buf_start
        self.pos = end
        return self._buf[off : off + n]

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise GGUFError(f"{self.source}: implausible string length {n} at byte {self.pos - 8}")
        return self.take(n).decode("utf-8", "replace")


def _value(cur: _Cursor, vtype: int):
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        etype = cur.unpack("<I")
        count = cur.unpack("<Q")
        if count > MAX_KEEP_ARRAY:
            _skip(cur, etype, count)
            return SkippedArray(etype, count)
        return [_value(cur, etype) for _ in range(count)]
    raise GGUFError(f"{cur.source}: unknown GGUF value type {vtype} at byte {cur.pos - 4}")


def _skip(cur: _Cursor, etype: int, count: int) -> None:
    """Step over `count` values of type etype: scalars in one stride, strings by their lengths."""
    if etype in _SCALARS:
        cur.take(struct.calcsize(_SCALARS[etype]) * count)
        return
    if etype != _STRING:
        for _ in range(count):
            _value(cur, etype)
        return
    for _ in range(count):
        n = cur.unpack("<Q")
        if n > 1 << 24:
            raise GGUFError(f"{cur.source}: implausible string length {n} at byte {cur.pos - 8}")
        cur.take(n)


def read_header(read: Callable[[int, int], bytes], source: str) -> GGUFHeader:
    cur = _Cursor(read, source)
    magic = cur.take(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{source}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{source}: unsupported GGUF version {version}")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise GGUFError(f"{source}: implausible counts (tensors {n_tensors}, keys {n_kv})")
    kv: dict[str, object] = {}
    spans: dict[str, tuple[int, int]] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        kv[key] = _value(cur, cur.unpack("<I"))
        spans[key] = (start, cur.pos)
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise GGUFError(f"{source}: tensor {name} has {n_dims} dimensions")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ttype = cur.unpack("<I")
        offset = cur.unpack("<Q")
        try:
            tensors.append(TensorInfo.make(name, ttype, dims, offset))
        except ValueError as exc:
            raise GGUFError(f"{source}: tensor {name}: {exc}") from None
    align = int(kv.get("general.alignment", 32))  # type: ignore[arg-type]
    data_offset = (cur.pos + align - 1) // align * align
    return GGUFHeader(source=source, version=version, kv=kv, tensors=tensors, data_offset=data_offset,
                      kv_spans=spans)


def read_local(path: str) -> GGUFHeader:
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open: {exc.strerror}") from None
    with f:
        def read(offset: int, size: int) -> bytes:
            f.seek(offset)
            return f.read(size)

        return read_header(read, path)
