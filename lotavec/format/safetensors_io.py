"""Hardened safetensors container: parse, map and write without torch.

Used for both tickets (untrusted input) and model checkpoints. Parsing validates everything
before any allocation: header length cap, JSON object shape, dtype names, shapes, offsets
that tile the data section exactly (no gaps, no overlaps, no trailing bytes), and
``numel * itemsize == byte length``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .. import native
from ..errors import InvalidHeaderError, LimitExceededError, NotFoundError, TruncatedFileError
from .dtypes import STORAGE, storage_dtype

#: Largest header accepted (bytes), as in the reference safetensors implementation.
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Largest number of dimensions accepted.
MAX_NDIM = 16
#: Largest element count accepted for one tensor (2**48).
MAX_NUMEL = 1 << 48


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset inside the data section
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _parse_shape(name: str, raw: object, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_NDIM:
        raise InvalidHeaderError(f"{where}: tensor {name!r} has an invalid shape {raw!r}")
    shape = []
    numel = 1
    for d in raw:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidHeaderError(f"{where}: tensor {name!r} has an invalid dimension {d!r}")
        shape.append(d)
        numel *= d
        if numel > MAX_NUMEL:
            raise LimitExceededError(f"{where}: tensor {name!r} declares more than 2**48 elements")
    return tuple(shape)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_header(head: bytes, file_size: int, where: str) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header.

    Args:
        head: at least the first ``8 + header_len`` bytes of the file (more is fine).
        file_size: total file size in bytes.
        where: file name for messages.

    Returns:
        ``(tensors by name, __metadata__ dict, data section offset)``.

    Raises:
        TruncatedFileError, LimitExceededError, InvalidHeaderError.
    """
    if file_size < 8 or len(head) < 8:
        raise TruncatedFileError(f"{where}: {file_size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise LimitExceededError(f"{where}: header declares {n} bytes, above the {MAX_HEADER_BYTES} byte limit")
    if 8 + n > file_size or 8 + n > len(head):
        raise TruncatedFileError(f"{where}: header declares {n} bytes but the file has {file_size}")
    try:
        doc = json.loads(head[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidHeaderError(f"{where}: header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidHeaderError(f"{where}: header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidHeaderError(f"{where}: __metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = file_size - data_start
    infos: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidHeaderError(f"{where}: tensor {name!r} entry must have exactly dtype, shape, data_offsets")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in STORAGE:
            raise InvalidHeaderError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        shape = _parse_shape(name, entry["shape"], where)
        offs = entry["data_offsets"]
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1]
        ):
            raise InvalidHeaderError(f"{where}: tensor {name!r} has invalid data_offsets {offs!r}")
        info = TensorInfo(name, dtype, shape, offs[0], offs[1])
        if info.numel * storage_dtype(dtype).itemsize != info.nbytes:
            raise InvalidHeaderError(
                f"{where}: tensor {name!r} spans {info.nbytes} bytes but {dtype}{list(shape)} needs "
                f"{info.numel * storage_dtype(dtype).itemsize}"
            )
        infos[name] = info
    pos = 0
    for info in sorted(infos.values(), key=lambda i: (i.start, i.end)):
        if info.start != pos:
            kind = "overlaps the previous tensor" if info.start < pos else "leaves a hole before it"
            raise InvalidHeaderError(f"{where}: tensor {info.name!r} at offset {info.start} {kind}")
        pos = info.end
    if pos != data_len:
        if pos > data_len:
            raise TruncatedFileError(f"{where}: tensors need {pos} data bytes but the file has {data_len}")
        raise InvalidHeaderError(f"{where}: {data_len - pos} trailing bytes after the last tensor")
    return infos, meta, data_start


def join_ranges(ranges: Iterable[tuple[int, int]], slack: int = 0) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` byte ranges, those overlapping or at most ``slack`` bytes apart joined."""
    joined: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if joined and a <= joined[-1][1] + slack:
            joined[-1] = (joined[-1][0], max(joined[-1][1], b))
        else:
            joined.append((a, b))
    return joined


class SafetensorsFile:
    """A validated, memory-mapped safetensors file giving zero-copy numpy storage views.

    Example:
        >>> f = SafetensorsFile("model.safetensors")  # doctest: +SKIP
        >>> w = f.array("model.layers.0.mlp.up_proj.weight")  # uint16 bit patterns for BF16
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise NotFoundError(f"{self.path}: is a folder, not a safetensors file") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:  # never allocate more than the file holds
                    head += fh.read(n)
            self.tensors, self.metadata, self.data_start = parse_header(head, size, self.path)
            self.size = size
            self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        # the mapping's address (it never moves), for compiled code; the view is dropped at once
        self._addr = np.frombuffer(self._mmap, np.uint8, count=1).__array_interface__["data"][0] if self._mmap else 0
        self._released: list[tuple[int, int]] = []  # byte ranges given up, not yet handed to the kernel
        self._released_bytes = 0
        self._release_lock = threading.Lock()

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return [i.name for i in sorted(self.tensors.values(), key=lambda i: i.start)]

    def info(self, name: str) -> TensorInfo:
        """Location, dtype and shape of a tensor."""
        try:
            return self.tensors[name]
        except KeyError:
            raise NotFoundError(f"{self.path}: no tensor named {name!r}") from None

    def buffer(self, name: str) -> memoryview:
        """The tensor's raw bytes (zero-copy view of the mapping)."""
        info = self.info(name)
        a = self.data_start + info.start
        return memoryview(self._mmap)[a : a + info.nbytes] if self._mmap is not None else memoryview(b"")

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy storage array of its shape (zero-copy)."""
        info = self.info(name)
        dt = storage_dtype(info.dtype)
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=dt)
        return np.frombuffer(self._mmap, dtype=dt, count=info.numel, offset=self.data_start + info.start).reshape(info.shape)

    #: Pages given up with :meth:`advise_done` are handed to the kernel once this many bytes are
    #: pending, adjacent ranges joined: each ``madvise`` call interrupts every CPU the process
    #: runs on (to flush its address translations), so a batch costs one such round instead of
    #: one per tensor.
    RELEASE_BATCH = 32 << 20

    def advise_done(self, name: str) -> None:
        """Tell the kernel the pages of ``name`` are no longer needed (keeps RSS flat when streaming).

        Thread-safe; pages are dropped in batches of about :attr:`RELEASE_BATCH` bytes.
        """
        if self._mmap is None:
            return
        info = self.info(name)
        page = mmap.PAGESIZE
        a = (self.data_start + info.start) // page * page
        b = self.data_start + info.end
        if b <= a:
            return
        with self._release_lock:
            self._released.append((a, b))
            self._released_bytes += b - a
            if self._released_bytes < self.RELEASE_BATCH:
                return
            ranges, self._released, self._released_bytes = self._released, [], 0
        self._drop(ranges)

    def address(self, name: str) -> int:
        """Memory address of the tensor's first byte in the mapping (0 for an empty file); valid
        while the file is open."""
        return self._addr + self.data_start + self.info(name).start if self._addr else 0

    def populate(self, name: str) -> None:
        """Map the pages of ``name`` now, in one call (Linux 5.14+ ``MADV_POPULATE_READ``, through
        the compiled kernels, without holding the GIL): a tensor about to be read whole costs
        less this way than faulting its pages in as they are read. A hint: does nothing where it
        is not supported."""
        lib = native.kernels("codec")
        if self._mmap is None or lib is None:
            return
        info = self.info(name)
        if info.nbytes:
            lib.lv_populate(self.address(name), info.nbytes)

    def _drop(self, ranges: list[tuple[int, int]]) -> None:
        mm = self._mmap
        if mm is None or not hasattr(mm, "madvise"):
            return
        lib = native.kernels("codec")
        for a, b in join_ranges(ranges, slack=mmap.PAGESIZE):  # adjacent tensors: a partial page between
            if lib is not None:  # without holding the GIL
                lib.lv_release(self._addr + a, b - a)
                continue
            try:
                mm.madvise(mmap.MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Release the mapping (views taken earlier must no longer be used)."""
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # live numpy views keep it; the GC releases it later
            self._mmap = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_header(entries: Iterable[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str] | None) -> tuple[bytes, list[tuple[int, int]]]:
    """Build a safetensors header for tensors written back to back in the given order.

    Args:
        entries: ``(name, dtype, shape, nbytes)`` in data order.
        metadata: string-to-string ``__metadata__``.

    Returns:
        ``(header bytes including the 8-byte length, [(start, end)] per entry)``. The JSON is
        padded with spaces so the data section starts 8-byte aligned.
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offsets = []
    pos = 0
    for name, dtype, shape, nbytes in entries:
        if name in doc:
            raise InvalidHeaderError(f"duplicate tensor name {name!r}")
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets.append((pos, pos + nbytes))
        pos += nbytes
    js = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    js += b" " * ((-(8 + len(js))) % 8)
    return struct.pack("<Q", len(js)) + js, offsets


def write_safetensors(fh: BinaryIO, tensors: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview | np.ndarray]], metadata: Mapping[str, str] | None = None) -> int:
    """Write a complete safetensors stream of in-memory buffers to an open binary file.

    Returns:
        Bytes written.
    """
    items = [(n, d, tuple(s), memoryview(np.ascontiguousarray(b)).cast("B") if isinstance(b, np.ndarray) else memoryview(b).cast("B")) for n, d, s, b in tensors]
    header, _ = build_header([(n, d, s, len(b)) for n, d, s, b in items], metadata)
    fh.write(header)
    total = len(header)
    for *_, b in items:
        fh.write(b)
        total += len(b)
    return total
