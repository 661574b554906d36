"""Read ticket files (spec §3–§7): validate on open, decode chunks on demand."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import native
from ..errors import (
    ChecksumError,
    CorruptTicketError,
    InvalidHeaderError,
    LimitExceededError,
    NotFoundError,
)
from .codecs import crc32, decode_mask, decode_values, gap_planes
from .dtypes import BITS
from .manifest import FORMAT_NAME, MANIFEST_KEY, Chunk, Manifest, TensorEntry, parse_manifest
from .safetensors_io import SafetensorsFile

#: Default cap on the memory one whole-tensor decode may allocate (indices + payload).
DEFAULT_MAX_TENSOR_BYTES = 8 << 30

_EXP_MASK = {"BF16": 0x7F80, "F16": 0x7C00, "F32": 0x7F800000}
#: Mask codecs of :meth:`TicketFile.chunk_records` (``bitmap`` is decoded by the Python codecs).
_RECORD_CODECS = {"none": 0, "all": 1, "gaps8": 2, "gaps16": 3, "gaps32": 4}


@dataclass
class GapCoded:
    """A decoded tensor whose mask stays gap-coded (see :meth:`TicketFile.read_tensor_gaps`):
    per chunk its first element, entry count, gap width and gap byte planes; the payload of all
    entries in order."""

    starts: np.ndarray
    counts: np.ndarray
    widths: np.ndarray
    planes: list[bytes | np.ndarray]
    payload: np.ndarray

    def kernel_args(self) -> tuple[tuple, list]:
        """The mask as the compiled kernels that read gap-coded chunks take it (``lv_cursor`` in
        lotavec/_csrc/codec.c): ``(nchunks, starts, counts, widths, plane pointers)``, and the
        objects that must stay alive while a kernel runs."""
        planes = [np.frombuffer(p, np.uint8) for p in self.planes]
        ptrs = (ctypes.c_void_p * max(1, len(planes)))(*[native.ptr(p) for p in planes])
        args = (len(planes), native.ptr(self.starts), native.ptr(self.counts), native.ptr(self.widths), ptrs)
        return args, [planes, ptrs, self]

    def indices(self) -> np.ndarray:
        """The mask's flat indices (int64), decoded from the planes (compiled kernels required)."""
        idx = np.empty(int(self.counts.sum()), np.int64)
        args, _alive = self.kernel_args()
        native.kernels("codec").lv_gaps_indices(*args, native.ptr(idx))
        return idx


def payload_dtype(entry: TensorEntry) -> np.dtype:
    """Numpy dtype of a tensor's decoded value payload."""
    return np.dtype("<f4") if entry.values == "f32delta" else BITS[entry.dtype]


def nonfinite_bits(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Boolean array: which bit patterns of ``dtype`` encode Inf or NaN."""
    m = bits.dtype.type(_EXP_MASK[dtype])
    return (bits & m) == m


class TicketFile:
    """An open, validated ticket file. Decoding is per chunk, so memory stays bounded.

    Args:
        path: the ``.safetensors`` ticket file.
        max_tensor_bytes: refuse whole-tensor decodes that would allocate more than this.

    Raises:
        NotFoundError, FormatError subclasses (see :mod:`lotavec.errors`).
    """

    def __init__(self, path: str | os.PathLike, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES):
        self.path = os.fspath(path)
        self.max_tensor_bytes = max_tensor_bytes
        self._st = SafetensorsFile(self.path)
        meta = self._st.metadata
        if meta.get("format") != FORMAT_NAME or MANIFEST_KEY not in meta:
            raise InvalidHeaderError(
                f"{self.path}: not a lotavec ticket (safetensors __metadata__ has no {MANIFEST_KEY!r}); "
                "to turn a fine-tuned checkpoint into a ticket use `lotavec extract`"
            )
        self.manifest: Manifest = parse_manifest(meta[MANIFEST_KEY], self.path)
        self.entries: dict[str, TensorEntry] = {e.name: e for e in self.manifest.tensors}
        self._records: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._table: tuple[np.ndarray, dict[str, tuple[int, int]]] | None = None
        self._table_addr = 0
        used: set[str] = set()
        for e in self.manifest.tensors:
            if e.data in used:
                raise InvalidHeaderError(f"{self.path}: tensor {e.name!r} shares its data blob {e.data!r} with another tensor")
            used.add(e.data)
            try:
                info = self._st.info(e.data)
            except NotFoundError:
                raise InvalidHeaderError(f"{self.path}: tensor {e.name!r} points to missing data {e.data!r}") from None
            if info.dtype != "U8" or len(info.shape) != 1 or info.nbytes != e.stored_bytes:
                raise InvalidHeaderError(
                    f"{self.path}: data of {e.name!r} must be U8[{e.stored_bytes}], found {info.dtype}{list(info.shape)}"
                )
        extra = set(self._st.tensors) - used
        if extra:
            raise InvalidHeaderError(f"{self.path}: safetensors tensors not described by the manifest: {sorted(extra)[:5]}")

    # --- access ----------------------------------------------------------------------------

    def entry(self, name: str) -> TensorEntry:
        """Manifest entry of a ticket tensor."""
        try:
            return self.entries[name]
        except KeyError:
            raise NotFoundError(f"{self.path}: ticket has no tensor {name!r}") from None

    @property
    def file_size(self) -> int:
        return self._st.size

    def read_chunk(self, entry: TensorEntry, chunk: Chunk, *, idx_out: np.ndarray | None = None,
                   payload_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode one chunk: ``(local int64 indices, payload)``; verifies the crc32 first.

        With ``idx_out``/``payload_out`` (``nnz`` long) the results are written there instead,
        and the indices are global (chunk start added).
        """
        what, blob = self._chunk_blob(entry, chunk)
        offset = 0 if idx_out is None else chunk.start
        idx = decode_mask(chunk.mask_codec, blob[: chunk.mask_bytes], chunk.nnz, chunk.length, what, idx_out, offset)
        return idx, self._chunk_values(entry, chunk, blob, what, payload_out)

    def _chunk_blob(self, entry: TensorEntry, chunk: Chunk) -> tuple[str, memoryview]:
        what = f"{self.path}: tensor {entry.name!r} chunk {chunk.start // self.manifest.chunk_elements}"
        blob = self._st.buffer(entry.data)[chunk.offset : chunk.offset + chunk.mask_bytes + chunk.value_bytes]
        if crc32(blob) != chunk.crc32:
            raise ChecksumError(f"{what}: checksum mismatch (file is corrupt; download it again)")
        return what, blob

    def _chunk_values(self, entry: TensorEntry, chunk: Chunk, blob, what: str,
                      out: np.ndarray | None) -> np.ndarray:
        pl = decode_values(blob[chunk.mask_bytes :], payload_dtype(entry), chunk.nnz, what,
                           zigzag=entry.values == "ulpdiff", out=out)
        if entry.values == "raw" and nonfinite_bits(pl, entry.dtype).any():
            raise CorruptTicketError(f"{what}: non-finite values (the format requires finite values)")
        if entry.values == "f32delta" and not np.isfinite(pl).all():
            raise CorruptTicketError(f"{what}: non-finite deltas (the format requires finite values)")
        return pl

    def read_tensor_gaps(self, name: str) -> GapCoded | None:
        """A tensor's payload and its mask as gap byte planes per chunk, for kernels that read
        the gaps themselves (the merge's ``sum`` and TIES): the same checks as :meth:`read_tensor`, but
        no index array is written. ``None`` when a chunk has no gap coding (``bitmap``) or the
        compiled kernels are not available: use :meth:`read_tensor` then."""
        e = self.entry(name)
        if any(c.mask_codec == "bitmap" for c in e.chunks) or native.kernels("codec") is None:
            return None
        payload = np.empty(e.nnz, dtype=payload_dtype(e))
        widths, planes, pos = [], [], 0
        for c in e.chunks:
            what, blob = self._chunk_blob(e, c)
            got = gap_planes(c.mask_codec, blob[: c.mask_bytes], c.nnz, c.length, what)
            if got is None:
                return None
            widths.append(got[0])
            planes.append(got[1])
            self._chunk_values(e, c, blob, what, payload[pos : pos + c.nnz])
            pos += c.nnz
        self._st.advise_done(e.data)
        return GapCoded(np.array([c.start for c in e.chunks], np.int64), np.array([c.nnz for c in e.chunks], np.int64),
                        np.array(widths, np.int32), planes, payload)

    def chunk_records(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A tensor's chunks as the compiled decoders take them (``lv_decode_slot`` in
        lotavec/_csrc/codec.c): an int64 array of one row per chunk, ``[offset in the data blob,
        mask_bytes, value_bytes, crc32, mask codec (0 none, 1 all, 2/3/4 gaps8/16/32), first
        element, nnz, length]``, and the data blob (uint8, a view of the mapping). ``None`` for
        tensors those decoders leave to the Python codecs: a ``bitmap`` chunk, or ``f32delta``
        values. The rows of all tensors are built once, in one array (the manifest is immutable)."""
        got = self._records.get(name)
        if got is None:
            span = self._record_span(name)
            if span is None:
                return None
            a, k = span
            blob = self._st.buffer(self.entry(name).data)
            got = self._records[name] = (self._record_table()[0][a : a + k],
                                         np.frombuffer(blob, np.uint8) if len(blob) else np.zeros(1, np.uint8))
        return got

    def chunk_rows(self, name: str) -> tuple[int, int, int, int] | None:
        """:meth:`chunk_records` as addresses, for compiled code planned ahead (valid while the file
        is open): ``(address of the first row, rows, address of the data blob, its bytes)``, or
        ``None`` as :meth:`chunk_records`."""
        span = self._record_span(name)
        if span is None:
            return None
        a, k = span
        data = self.entry(name).data
        blob_len = self._st.info(data).nbytes
        return self._table_addr + a * 64, k, self._st.address(data) if blob_len else 0, blob_len

    def _record_span(self, name: str) -> tuple[int, int] | None:
        """``(first row, rows)`` of ``name`` in the record table, or ``None`` (see :meth:`chunk_records`)."""
        got = self._record_table()[1].get(name)
        if got is None:
            self.entry(name)  # NotFoundError for a tensor the ticket does not have
        return got

    def _record_table(self) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
        if self._table is None:
            flat: list[int] = []
            index: dict[str, tuple[int, int]] = {}
            for e in self.manifest.tensors:
                codes = [_RECORD_CODECS.get(c.mask_codec) for c in e.chunks]
                if e.values not in ("ulpdiff", "raw") or None in codes:
                    continue
                index[e.name] = (len(flat) // 8, len(e.chunks))
                for c, k in zip(e.chunks, codes):
                    flat += (c.offset, c.mask_bytes, c.value_bytes, c.crc32, k, c.start, c.nnz, c.length)
            table = np.array(flat or [0] * 8, np.int64).reshape(-1, 8)
            self._table_addr = table.ctypes.data
            self._table = (table, index)
        return self._table

    def done(self, name: str) -> None:
        """Give the pages of a tensor's compressed data back to the kernel (decoded already)."""
        self._st.advise_done(self.entry(name).data)

    def iter_chunks(self, name: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(chunk start, local indices, payload)`` chunk by chunk (bounded memory)."""
        e = self.entry(name)
        for c in e.chunks:
            idx, pl = self.read_chunk(e, c)
            yield c.start, idx, pl

    def read_tensor(self, name: str, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode a whole tensor: ``(global int64 flat indices, payload)``, chunks in parallel.

        Raises:
            LimitExceededError: the result plus the per-thread chunk buffers would exceed
                ``max_tensor_bytes`` (decode chunk by chunk with :meth:`iter_chunks` instead).
        """
        e = self.entry(name)
        n = len(e.chunks)
        workers = min(threads or os.cpu_count() or 1, n)
        # the result, plus each worker's chunk decode buffers (indices, payload, stream bytes)
        per_chunk = max((c.length for c in e.chunks), default=0) * (8 + 2 * payload_dtype(e).itemsize)
        need = e.nnz * (8 + payload_dtype(e).itemsize) + max(workers, 1) * per_chunk
        if need > self.max_tensor_bytes:
            raise LimitExceededError(
                f"{self.path}: tensor {name!r} would decode to {need} bytes, above max_tensor_bytes="
                f"{self.max_tensor_bytes}; raise the limit or stream it with iter_chunks"
            )
        indices = np.empty(e.nnz, dtype=np.int64)
        payload = np.empty(e.nnz, dtype=payload_dtype(e))
        starts = np.cumsum([0] + [c.nnz for c in e.chunks])

        def one(i: int) -> None:
            a, b = starts[i], starts[i + 1]
            self.read_chunk(e, e.chunks[i], idx_out=indices[a:b], payload_out=payload[a:b])

        if workers <= 1:
            for i in range(n):
                one(i)
        else:
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(one, range(n)))
        self._st.advise_done(e.data)  # the compressed pages are no longer needed: keep RSS flat
        return indices, payload

    def verify(self) -> None:
        """Decode every chunk of every tensor, checking checksums and streams."""
        for e in self.manifest.tensors:
            for c in e.chunks:
                self.read_chunk(e, c)

    def close(self) -> None:
        self._records.clear()  # views of the mapping: drop them so that it can be closed
        self._st.close()

    def __enter__(self) -> TicketFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
