"""Codecs of ticket format v1 (spec/ticket-format.md §5–§6): mask streams and value streams.

Every function works on one chunk. Encoders take validated arrays; decoders take untrusted
bytes plus the sizes the manifest declares and raise :class:`CorruptTicketError` on anything
inconsistent. Decompression is bounded by the declared size.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np
import zstandard

from .. import native
from ..errors import CorruptTicketError

#: Mask codec names (spec §5).
MASK_CODECS = ("none", "all", "bitmap", "gaps8", "gaps16", "gaps32")
_GAP_WIDTH = {"gaps8": 1, "gaps16": 2, "gaps32": 4}
#: Value codec names (spec §6).
VALUE_CODECS = ("ulpdiff", "raw", "f32delta")

_ZSTD_LEVEL = 1
_local = threading.local()  # zstandard contexts are not thread-safe: one per thread


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def _cctx(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def crc32(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """``zlib.crc32(data, value)`` (the chunk checksum of spec §6); the compiled kernel folds with
    carry-less multiplication where the CPU has it (``bench_format``'s decode measures it)."""
    lib = native.kernels("codec")
    if lib is None:
        return zlib.crc32(data, value)
    arr = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if arr.size and not arr.flags.c_contiguous:
        return zlib.crc32(arr.tobytes(), value)
    return int(lib.lv_crc32(native.ptr(arr) if arr.size else None, arr.size, value & 0xFFFFFFFF, 1))


def zstd_compress(data: bytes | memoryview | np.ndarray, level: int = _ZSTD_LEVEL) -> bytes:
    """One zstd frame with the content size written in its header (one context per thread)."""
    buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
    return _cctx(level).compress(buf)


class _NativeDCtx:
    """A zstd decompression context of the system's libzstd (``lv_dctx_new``), freed with its thread."""

    def __init__(self, lib):
        self.lib, self.ptr = lib, lib.lv_dctx_new()

    def __del__(self):
        if self.ptr:
            self.lib.lv_dctx_free(self.ptr)


def _native_dctx(lib) -> int | None:
    d = getattr(_local, "ndctx", None)
    if d is None or d.lib is not lib:
        d = _local.ndctx = _NativeDCtx(lib)
    return d.ptr


def zstd_decompress(data: bytes | memoryview, expected: int, what: str) -> bytes | np.ndarray:
    """Decompress exactly one zstd frame that must declare and hold ``expected`` bytes.

    With the compiled kernels and the system's ``libzstd.so.1``, the frame is decoded by that
    library (a uint8 array is returned), the one the merge's compiled decoders use: zstd versions
    differ in which corrupt frames they detect, and a ticket must be accepted or refused alike
    whichever path reads it. Otherwise (or for an empty frame) by the ``zstandard`` package.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise CorruptTicketError(f"{what}: not a zstd frame ({e})") from None
    if declared != expected:
        raise CorruptTicketError(f"{what}: zstd frame declares {declared} bytes, manifest expects {expected}")
    lib = native.kernels("codec") if expected else None
    d = _native_dctx(lib) if lib is not None else None
    if d:
        src = np.frombuffer(data, np.uint8)
        out = np.empty(expected, np.uint8)
        rc = lib.lv_zstd_frame(d, native.ptr(src), src.size, native.ptr(out), expected)
        if rc == 0:
            return out
        if rc == -1:
            raise CorruptTicketError(f"{what}: zstd stream is corrupt (bytes after the frame)")
        why = "decompressed to fewer bytes than declared" if rc == -2 else lib.lv_zstd_error(rc).decode("ascii", "replace")
        raise CorruptTicketError(f"{what}: zstd stream is corrupt (decompression error: {why})")
    try:
        if expected == 0:
            # decompress() returns b"" for an empty frame without reading it: check the whole
            # stream is exactly one frame, with nothing after it.
            obj = _dctx().decompressobj()
            out = obj.decompress(data)
            if not obj.eof or obj.unused_data:
                raise CorruptTicketError(f"{what}: bytes after the zstd frame")
        else:
            out = _dctx().decompress(data, max_output_size=expected, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CorruptTicketError(f"{what}: zstd stream is corrupt ({e})") from None
    if len(out) != expected:
        raise CorruptTicketError(f"{what}: decompressed to {len(out)} bytes, expected {expected}")
    return out


def shuffle(values: np.ndarray, *, zigzag: bool = False) -> np.ndarray:
    """Byte-shuffle: all byte 0s, then all byte 1s, ... (little-endian element bytes).

    With ``zigzag`` the values (unsigned wrap-around differences) are first mapped by
    :func:`zigzag` as signed integers of their width.
    """
    v = np.ascontiguousarray(values).reshape(-1)
    n, w = v.size, v.dtype.itemsize
    if w == 1:
        return v.view(np.uint8)
    lib = native.kernels("codec")
    if lib is not None and w in (2, 4):
        out = np.empty(n * w, dtype=np.uint8)
        lib.lv_shuffle(native.ptr(v), w, n, int(zigzag), native.ptr(out))
        return out
    if zigzag:
        v = _zigzag(v.view(np.dtype(f"<i{w}")), 8 * w)
    u = v.view(np.dtype(f"<u{w}"))
    out = np.empty(n * w, dtype=np.uint8)
    for i in range(w):  # shift-and-truncate is several times faster than a strided transpose
        np.copyto(out[i * n : (i + 1) * n], u >> np.uint8(8 * i) if i else u, casting="unsafe")
    return out


def unshuffle(data: bytes | np.ndarray, dtype: np.dtype, n: int, *, zigzag: bool = False,
              out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`shuffle` for ``n`` elements of ``dtype`` (then :func:`unzigzag` with
    ``zigzag``), written into ``out`` (``n`` contiguous elements of ``dtype``) when given."""
    dtype = np.dtype(dtype)
    w = dtype.itemsize
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    lib = native.kernels("codec")
    if lib is not None and w in (2, 4) and raw.size == w * n:
        res = np.empty(n, dtype=dtype) if out is None else out
        lib.lv_unshuffle(native.ptr(raw), w, n, int(zigzag), native.ptr(res))
        return res
    if w == 1:
        res = raw.view(dtype)
    else:
        res = _unshuffle_numpy(raw, dtype, n)
        res = unzigzag(res, 8 * w) if zigzag else res
    if out is None:
        return res
    out[:] = res
    return out


def _unshuffle_numpy(raw: np.ndarray, dtype: np.dtype, n: int) -> np.ndarray:
    w = dtype.itemsize
    u = np.dtype(f"<u{w}")
    planes = raw.reshape(w, n)
    out = planes[0].astype(u)
    for i in range(1, w):
        p = planes[i]
        nz = np.flatnonzero(p) if w > 2 else None  # high planes of gaps are mostly zero
        if nz is not None and nz.size < n // 4:
            out[nz] |= p[nz].astype(u) << u.type(8 * i)
        else:
            out |= p.astype(u) << u.type(8 * i)
    return out.view(dtype)


# --- masks ---------------------------------------------------------------------------------


def encode_gaps(local: np.ndarray, start: int = 0) -> tuple[str, bytes]:
    """Gap-code sorted indices of a chunk beginning at ``start``: g0 = i0 − start, gj = ij − i(j−1) − 1.

    Gaps are stored as unsigned integers of the narrowest width (1, 2 or 4 bytes) that holds
    the largest one, byte-shuffled, → zstd. Returns ``(codec name, stream)``.
    """
    lib = native.kernels("codec")
    idx = np.ascontiguousarray(local, dtype=np.int64)
    if lib is not None:
        top = lib.lv_gaps_max(native.ptr(idx), idx.size, start, 1 << 62)
        if top < 0:
            raise ValueError("gap coding needs strictly increasing indices at or after the chunk start")
        width = 1 if top < 256 else (2 if top < 65536 else 4)
        out = np.empty(width * idx.size, np.uint8)
        lib.lv_gaps_pack(native.ptr(idx), idx.size, start, width, native.ptr(out))
        return {1: "gaps8", 2: "gaps16", 4: "gaps32"}[width], zstd_compress(out)
    gaps = np.empty(idx.size, dtype=np.int64)
    gaps[0] = idx[0] - start
    np.subtract(idx[1:], idx[:-1], out=gaps[1:])
    gaps[1:] -= 1
    top = int(gaps.max())
    codec, dt = ("gaps8", "<u1") if top < 256 else (("gaps16", "<u2") if top < 65536 else ("gaps32", "<u4"))
    return codec, zstd_compress(shuffle(gaps.astype(dt)))


def decode_gaps(data: bytes | memoryview, nnz: int, length: int, what: str, width: int = 4,
                out: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
    """Decode a gaps stream of ``width``-byte gaps to int64 indices: local ones below ``length``,
    plus ``offset``, written into ``out`` when given."""
    raw = zstd_decompress(data, width * nnz, what)
    lib = native.kernels("codec")
    if lib is not None:
        idx = np.empty(nnz, dtype=np.int64) if out is None else out
        src = np.frombuffer(raw, np.uint8)
        last = lib.lv_gaps_decode(native.ptr(src), width, nnz, offset, native.ptr(idx))
    else:
        gaps = unshuffle(raw, np.dtype(f"<u{width}"), nnz)
        idx = np.cumsum(gaps, dtype=np.int64, out=out)
        idx += np.arange(offset, offset + nnz, dtype=np.int64)
        last = int(idx[-1]) - offset if nnz else -1
    if last >= length:
        raise CorruptTicketError(f"{what}: mask index {last} is out of range for a chunk of {length} elements")
    return idx


def gap_planes(codec: str, data: bytes | memoryview, nnz: int, length: int, what: str
               ) -> tuple[int, bytes | np.ndarray] | None:
    """A chunk's mask as gap byte planes, for kernels that read the gaps themselves (see
    ``lv_cursor`` in lotavec/_csrc/codec.c): ``(width, planes)``, range-checked like
    :func:`decode_mask` but without writing any index out. ``none``/``all`` chunks give width-1
    planes (empty / all-zero gaps); ``None`` for codecs without gaps (``bitmap``) or without the
    compiled kernels.

    Raises:
        CorruptTicketError: as :func:`decode_mask`.
    """
    lib = native.kernels("codec")
    if lib is None or codec == "bitmap":
        return None
    if codec in ("none", "all"):
        decode_mask(codec, data, nnz, length, what)  # the same checks; cheap for these codecs
        return 1, bytes(nnz)
    if codec not in _GAP_WIDTH:
        raise CorruptTicketError(f"{what}: unknown mask codec {codec!r}")
    width = _GAP_WIDTH[codec]
    raw = zstd_decompress(data, width * nnz, what)
    src = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, np.uint8)
    last = lib.lv_gaps_decode(native.ptr(src) if src.size else None, width, nnz, 0, None)
    if last >= length:
        raise CorruptTicketError(f"{what}: mask index {last} is out of range for a chunk of {length} elements")
    return width, raw


def encode_bitmap(local: np.ndarray, length: int) -> bytes:
    """Bitmap of ``length`` bits, LSB-first within each byte, zero-padded, → zstd."""
    bits = np.zeros(length, dtype=np.bool_)
    bits[local] = True
    return zstd_compress(np.packbits(bits, bitorder="little"))


def decode_bitmap(data: bytes | memoryview, nnz: int, length: int, what: str,
                  out: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
    """Decode a bitmap stream to int64 local indices (plus ``offset``, into ``out`` when given),
    checking popcount and padding."""
    nbytes = (length + 7) // 8
    raw = np.frombuffer(zstd_decompress(data, nbytes, what), dtype=np.uint8)
    if length % 8 and raw[-1] >> (length % 8):
        raise CorruptTicketError(f"{what}: padding bits of the last mask byte are not zero")
    lib = native.kernels("codec")
    if lib is not None:
        idx = np.empty(nnz, dtype=np.int64) if out is None else out
        found = lib.lv_bitmap_decode(native.ptr(raw), length, offset, native.ptr(idx), nnz)
    else:
        bits = np.unpackbits(raw, bitorder="little", count=length)
        local = np.flatnonzero(bits)
        found = local.size
        if found == nnz:
            idx = np.add(local, offset, out=out, dtype=np.int64, casting="unsafe")
    if found != nnz:
        raise CorruptTicketError(f"{what}: bitmap holds {found} set bits, manifest declares nnz={nnz}")
    return idx


def encode_mask(local: np.ndarray, length: int, start: int = 0) -> tuple[str, bytes]:
    """Pick and apply the mask codec for one chunk; returns ``(codec, stream)``.

    ``local`` holds the chunk's indices, offset by ``start`` (the chunk's first flat index).
    ``none``/``all`` when the chunk is empty/full; otherwise the smaller of gaps and bitmap
    (both are tried in the density band where either can win).
    """
    nnz = local.size
    if nnz == 0:
        return "none", b""
    if nnz == length:
        return "all", b""
    p = nnz / length
    if p < 0.15:
        return encode_gaps(local, start)
    rel = local - start if start else local
    if p > 0.35:
        return "bitmap", encode_bitmap(rel, length)
    (gc, g), b = encode_gaps(local, start), encode_bitmap(rel, length)
    return (gc, g) if len(g) <= len(b) else ("bitmap", b)


def decode_mask(codec: str, data: bytes | memoryview, nnz: int, length: int, what: str,
                out: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
    """Decode one chunk's mask stream to int64 local indices (strictly increasing, < length).

    With ``offset`` the indices are shifted by it; with ``out`` (int64, ``nnz`` long) they are
    written there (and ``out`` is returned).
    """
    if codec == "none" or codec == "all":
        if len(data):
            raise CorruptTicketError(f"{what}: mask codec {codec!r} must have an empty stream")
        if codec == "none" and nnz != 0:
            raise CorruptTicketError(f"{what}: mask codec 'none' with nnz={nnz}")
        if codec == "all" and nnz != length:
            raise CorruptTicketError(f"{what}: mask codec 'all' with nnz={nnz} in a chunk of {length}")
        if out is None:
            return np.arange(offset, offset + nnz, dtype=np.int64)
        out[:] = np.arange(offset, offset + nnz, dtype=np.int64)
        return out
    if codec in _GAP_WIDTH:
        return decode_gaps(data, nnz, length, what, _GAP_WIDTH[codec], out, offset)
    if codec == "bitmap":
        return decode_bitmap(data, nnz, length, what, out, offset)
    raise CorruptTicketError(f"{what}: unknown mask codec {codec!r}")


# --- values --------------------------------------------------------------------------------


def zigzag(s: np.ndarray, bits: int) -> np.ndarray:
    """Map signed ints to unsigned: 0,-1,1,-2,... → 0,1,2,3,..."""
    u = np.dtype(f"<u{bits // 8}")
    return ((s.astype(s.dtype) << 1) ^ (s >> (bits - 1))).view(u)


_zigzag = zigzag  # for functions whose ``zigzag`` flag shadows the name


def unzigzag(z: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`zigzag`, returned as the unsigned wrap-around difference."""
    one = z.dtype.type(1)
    return (z >> one) ^ (-(z & one)).astype(z.dtype)


def encode_values(payload: np.ndarray, *, zigzag: bool = False) -> bytes:
    """Shuffle + zstd any value payload (u16/u32 patterns or float32 deltas); ``zigzag`` maps
    wrap-around differences first (the ``ulpdiff`` codec)."""
    if payload.size == 0:
        return b""
    return zstd_compress(shuffle(payload, zigzag=zigzag))


def decode_values(data: bytes | memoryview, dtype: np.dtype, nnz: int, what: str, *, zigzag: bool = False,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`encode_values` for ``nnz`` elements of ``dtype`` (then :func:`unzigzag`
    of the unsigned patterns with ``zigzag``), into ``out`` when given."""
    if nnz == 0:
        if len(data):
            raise CorruptTicketError(f"{what}: value stream must be empty when nnz=0")
        return np.empty(0, dtype=dtype) if out is None else out
    raw = zstd_decompress(data, nnz * np.dtype(dtype).itemsize, what)
    return unshuffle(raw, np.dtype(dtype), nnz, zigzag=zigzag, out=out)
