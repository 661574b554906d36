"""Write ticket files (spec §3–§7), streaming tensor by tensor, atomically."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import native
from .._tmp import reap_and_tag
from ..errors import FormatError, InvalidHeaderError
from .codecs import crc32, encode_mask, encode_values
from .dtypes import BITS, TICKET_DTYPES
from .manifest import (
    DEFAULT_CHUNK_ELEMENTS,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    FORMAT_NAME,
    MANIFEST_KEY,
    MAX_CHUNK_ELEMENTS,
    Chunk,
    Manifest,
    TensorEntry,
)
from .reader import nonfinite_bits
from .safetensors_io import build_header

DATA_SUFFIX = ".ticket"


def check_indices(name: str, indices: np.ndarray, numel: int) -> np.ndarray:
    """Validate sorted, unique, in-range int64 flat indices (raises :class:`FormatError`)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise FormatError(f"tensor {name!r}: indices must be a 1-D integer array")
    idx = idx.astype(np.int64, copy=False)
    if idx.size:
        if idx[0] < 0 or idx[-1] >= numel:
            raise FormatError(f"tensor {name!r}: indices out of range [0, {numel})")
        lib = native.kernels("codec")
        if lib is not None:
            idx = np.ascontiguousarray(idx)
            unsorted = lib.lv_first_unsorted(native.ptr(idx), idx.size) >= 0
        else:
            unsorted = idx.size > 1 and not (idx[1:] > idx[:-1]).all()
        if unsorted:
            raise FormatError(f"tensor {name!r}: indices must be strictly increasing")
    return idx


class _Done:
    """An already computed result with the ``Future.result`` interface."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value

    def cancel(self) -> bool:
        return False


def _encode_chunk(idx: np.ndarray, start: int, length: int, payload: np.ndarray,
                  zigzag: bool) -> tuple[str, bytes, bytes, int]:
    """One chunk's ``(mask codec, mask stream, value stream, crc32 of both)`` (runs on the pool)."""
    codec, mask = encode_mask(idx, length, start)
    values = encode_values(payload, zigzag=zigzag)
    return codec, mask, values, crc32(values, crc32(mask))


class TicketFileWriter:
    """Stream tensors into a ticket file; the file appears atomically on :meth:`close`.

    Args:
        path: destination ``.safetensors`` file.
        base: ``{"repo_id": ..., "revision": ...}`` of the base model (values may be None).
        provenance: free-form JSON-serializable dict (lotavec version, selection, training...).
        chunk_elements: elements per chunk (multiple of 8, ≤ 2**24).
        threads: encoder threads (default: all cores).

    Example:
        >>> w = TicketFileWriter("t.safetensors")  # doctest: +SKIP
        >>> w.add("w", (4, 4), "F32", np.array([3, 7]), "raw", np.array([1, 2], "<u4"))
        >>> w.close()
    """

    def __init__(self, path: str | os.PathLike, *, base: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                 threads: int | None = None):
        if chunk_elements % 8 or not 8 <= chunk_elements <= MAX_CHUNK_ELEMENTS:
            raise FormatError(f"chunk_elements must be a multiple of 8 in [8, {MAX_CHUNK_ELEMENTS}], got {chunk_elements}")
        self.path = os.fspath(path)
        self.base = dict(base or {})
        self.provenance = dict(provenance or {})
        self.chunk_elements = chunk_elements
        self.threads = threads or os.cpu_count() or 1
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        self._spool = tempfile.NamedTemporaryFile(dir=d, prefix=reap_and_tag(d, ".lotavec-spool-"), delete=False)
        self._entries: list[TensorEntry] = []
        self._names: set[str] = set()
        self._pending: deque = deque()
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._closed = False

    def add(self, name: str, shape: tuple[int, ...], dtype: str, indices: np.ndarray, values: str,
            payload: np.ndarray, *, base_sample: str | None = None, base_digest: str | None = None) -> None:
        """Validate one tensor and queue it for encoding (on the writer's threads; written in order).

        Args:
            name: tensor name in the model.
            shape, dtype: of the model tensor (dtype one of BF16, F16, F32).
            indices: strictly increasing int64 flat indices.
            values: ``"ulpdiff"`` (payload: wrap-around bit-pattern difference fine-tuned − base,
                unsigned of the dtype's width), ``"raw"`` (payload: fine-tuned bit patterns) or
                ``"f32delta"`` (payload: float32 deltas).
            payload: one value per index.
        """
        if self._closed:
            raise FormatError("writer is closed")
        if name in self._names:
            raise FormatError(f"tensor {name!r} added twice")
        if dtype not in TICKET_DTYPES:
            raise FormatError(f"tensor {name!r}: dtype {dtype!r} is not one of {TICKET_DTYPES}")
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        idx = check_indices(name, indices, numel)
        want = np.dtype("<f4") if values == "f32delta" else BITS[dtype]
        if values not in ("ulpdiff", "raw", "f32delta"):
            raise FormatError(f"tensor {name!r}: unknown value codec {values!r}")
        pl = np.ascontiguousarray(payload)
        if pl.shape != idx.shape:
            raise FormatError(f"tensor {name!r}: {pl.size} values for {idx.size} indices")
        if pl.dtype.itemsize != want.itemsize:
            raise FormatError(f"tensor {name!r}: {values} payload must be {want}, got {pl.dtype}")
        pl = pl.view(want)
        if values == "raw" and nonfinite_bits(pl, dtype).any():
            raise FormatError(f"tensor {name!r}: fine-tuned values contain Inf/NaN; tickets hold finite values only")
        if values == "f32delta" and not np.isfinite(pl).all():
            raise FormatError(f"tensor {name!r}: deltas contain Inf/NaN; tickets hold finite values only")
        zz = values == "ulpdiff"
        ce = self.chunk_elements
        n_chunks = -(-numel // ce)
        bounds = np.searchsorted(idx, np.arange(n_chunks + 1, dtype=np.int64) * ce).tolist()
        jobs = [
            (idx[bounds[i] : bounds[i + 1]], i * ce, min(ce, numel - i * ce), pl[bounds[i] : bounds[i + 1]], zz)
            for i in range(n_chunks)
        ]
        if self._pool is not None:  # encode in the background; write in order, a few tensors behind
            futs = [self._pool.submit(_encode_chunk, *j) for j in jobs]
        else:
            futs = [_Done(_encode_chunk(*j)) for j in jobs]
        meta = (name, shape, dtype, int(idx.size), values, base_sample, base_digest,
                [(j[2], bounds[i + 1] - bounds[i]) for i, j in enumerate(jobs)])
        self._pending.append((meta, futs))
        self._names.add(name)
        self._drain(2 * self.threads)

    def _drain(self, keep: int) -> None:
        """Write encoded tensors, oldest first, until at most ``keep`` are pending."""
        while len(self._pending) > keep:
            (name, shape, dtype, nnz, values, bs, bd, sizes), futs = self._pending.popleft()
            chunks = []
            offset = 0
            ce = self.chunk_elements
            for i, f in enumerate(futs):
                codec, mb, vb, crc = f.result()
                self._spool.write(mb)
                self._spool.write(vb)
                chunks.append(Chunk(i * ce, sizes[i][0], sizes[i][1], codec, len(mb), len(vb), crc, offset))
                offset += len(mb) + len(vb)
            self._entries.append(TensorEntry(name, shape, dtype, nnz, values, name + DATA_SUFFIX, tuple(chunks), bs, bd))

    def close(self) -> str:
        """Write the header and data, fsync, and rename into place. Returns the path."""
        if self._closed:
            return self.path
        try:
            self._drain(0)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._shutdown()
        manifest = Manifest((FORMAT_MAJOR, FORMAT_MINOR), self.chunk_elements, tuple(self._entries), self.base, self.provenance)
        try:
            text = manifest.to_json()
        except (TypeError, ValueError) as e:
            self._cleanup()
            raise InvalidHeaderError(f"ticket metadata is not JSON-serializable: {e}") from None
        header, _ = build_header(
            [(e.data, "U8", (e.stored_bytes,), e.stored_bytes) for e in self._entries],
            {"format": FORMAT_NAME, MANIFEST_KEY: text},
        )
        self._spool.flush()
        d = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=reap_and_tag(d, ".lotavec-ticket-"), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header)
                self._spool.seek(0)
                shutil.copyfileobj(self._spool, out, 1 << 22)
                out.flush()
                os.fsync(out.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a ticket is an ordinary file
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            self._cleanup()
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._closed = True
        for _, futs in self._pending:
            for f in futs:
                f.cancel()
        self._pending.clear()
        self._shutdown()
        self._cleanup()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _cleanup(self) -> None:
        name = self._spool.name
        self._spool.close()
        if os.path.exists(name):
            os.unlink(name)

    def __enter__(self) -> TicketFileWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
