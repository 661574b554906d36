"""In-memory tickets: :class:`TicketTensor`, :class:`Ticket`, :func:`load_ticket`, :class:`TicketWriter`.

A ticket is a sparse task vector: for some tensors of a base model, the strictly increasing flat
indices a fine-tune changed and their values. Values are held in the codec they are stored with:

* ``ulpdiff`` (default, lossless): wrap-around difference of bit patterns, fine-tuned − base.
  Reproduces the fine-tuned value bit-exactly given the exact base value.
* ``raw`` (lossless, base-free): the fine-tuned bit patterns.
* ``f32delta``: float32 deltas, added to the base in float32 then rounded to the tensor dtype.

Everything here is numpy (storage arrays; BF16 as uint16 bit patterns); see
:mod:`lotavec.torchio` for torch tensors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._version import __version__
from .errors import (
    CorruptTicketError,
    FingerprintMismatchError,
    FormatError,
    NotFoundError,
    TensorMismatchError,
)
from .format.dtypes import BITS, TICKET_DTYPES, from_float32, to_float32
from .format.fingerprint import base_digest, base_sample
from .format.manifest import DEFAULT_CHUNK_ELEMENTS, TensorEntry
from .format.reader import GapCoded, TicketFile, nonfinite_bits
from .format.writer import TicketFileWriter, check_indices

VALUE_CODECS = ("ulpdiff", "raw", "f32delta")


def _bits(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(a).view(BITS[dtype])


@dataclass(frozen=True, eq=False)
class TicketTensor:
    """One tensor of a ticket: which entries, and their values in codec ``values``.

    Attributes:
        name: tensor name in the model.
        shape: full shape of the model tensor.
        dtype: ``"BF16"``, ``"F16"`` or ``"F32"``.
        indices: strictly increasing int64 flat (C order) indices.
        values: value codec, ``"ulpdiff"``, ``"raw"`` or ``"f32delta"``.
        payload: one value per index (unsigned bit patterns, or float32 for ``f32delta``).
        base_sample, base_digest: fingerprints of the base tensor (hex), when known.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    indices: np.ndarray
    values: str
    payload: np.ndarray
    base_sample: str | None = None
    base_digest: str | None = None

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_finetuned(cls, name: str, base: np.ndarray, finetuned: np.ndarray, indices: np.ndarray, dtype: str,
                       *, values: str = "ulpdiff", fingerprint: bool = True, digest: bool = True,
                       trusted_indices: bool = False) -> TicketTensor:
        """Build from the full base tensor and the fine-tuned tensor (full, or values at ``indices``).

        Args:
            base: storage array of the whole base tensor.
            finetuned: storage array, either the whole fine-tuned tensor or one value per index.
            indices: flat indices to keep.
            dtype: spec dtype of both tensors.
            values: ``"ulpdiff"`` or ``"raw"`` (lossless) or ``"f32delta"``.
            fingerprint: record the base fingerprints (the sample, and the full digest if ``digest``).
            digest: with ``fingerprint``, also hash every byte of the base (``base_digest``; one
                more read of the tensor). Without it only the sampled fingerprint is recorded.
            trusted_indices: ``indices`` are known to be strictly increasing int64 in range (e.g.
                a selection just computed); skips their validation (the ticket writer checks
                them again).
        """
        if dtype not in TICKET_DTYPES:
            raise FormatError(f"tensor {name!r}: dtype {dtype} cannot be stored in a ticket (BF16, F16, F32 only)")
        want = _storage_of(dtype)
        if base.dtype != want or finetuned.dtype != want:
            raise TensorMismatchError(
                f"tensor {name!r}: {dtype} needs storage {want}, got base {base.dtype} / fine-tuned {finetuned.dtype}"
            )
        shape = tuple(base.shape)
        idx = indices if trusted_indices else check_indices(name, indices, math.prod(shape))
        bflat = base.reshape(-1)
        fvals = finetuned.reshape(-1)
        if fvals.size == bflat.size and fvals.size != idx.size:
            fvals = fvals[idx]
        elif fvals.size != idx.size:
            raise TensorMismatchError(f"tensor {name!r}: fine-tuned data has {fvals.size} values, need {idx.size} or {bflat.size}")
        b = bflat[idx]
        if values == "ulpdiff":
            payload = _bits(fvals, dtype) - _bits(b, dtype)  # unsigned wrap-around
        elif values == "raw":
            payload = _bits(fvals, dtype).copy()
        elif values == "f32delta":
            payload = to_float32(fvals, dtype) - to_float32(b, dtype)
        else:
            raise FormatError(f"unknown value codec {values!r}; use one of {VALUE_CODECS}")
        fp = (base_sample(base), base_digest(base) if digest else None) if fingerprint else (None, None)
        return cls(name, shape, dtype, idx, values, payload, *fp)

    @classmethod
    def from_delta(cls, name: str, base: np.ndarray, indices: np.ndarray, delta: np.ndarray, dtype: str,
                   *, fingerprint: bool = True) -> TicketTensor:
        """Build an ``f32delta`` tensor from float deltas that do not come from a checkpoint."""
        if base.dtype != _storage_of(dtype):
            raise TensorMismatchError(f"tensor {name!r}: {dtype} needs storage {_storage_of(dtype)}, got base {base.dtype}")
        idx = check_indices(name, indices, base.size)
        d = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
        if d.size != idx.size:
            raise TensorMismatchError(f"tensor {name!r}: {d.size} deltas for {idx.size} indices")
        fp = (base_sample(base), base_digest(base)) if fingerprint else (None, None)
        return cls(name, tuple(base.shape), dtype, idx, "f32delta", d, *fp)

    # --- use -------------------------------------------------------------------------------

    def finetuned(self, base_at: np.ndarray | None = None) -> np.ndarray:
        """Fine-tuned storage values at :attr:`indices`.

        Args:
            base_at: base storage values at :attr:`indices` (needed except for ``raw``).
        """
        if self.values == "raw":
            return self.payload.view(_storage_of(self.dtype))
        if base_at is None:
            raise FormatError(f"tensor {self.name!r}: codec {self.values} needs the base values")
        if self.values == "ulpdiff":
            out = _bits(base_at, self.dtype) + self.payload
            if nonfinite_bits(out, self.dtype).any():
                raise CorruptTicketError(
                    f"tensor {self.name!r}: applying the ticket gives non-finite values; "
                    "the base is not the one this ticket was made from, or the ticket is corrupt"
                )
            return out.view(_storage_of(self.dtype))
        out = from_float32(to_float32(base_at, self.dtype) + self.payload, self.dtype)
        if nonfinite_bits(np.ascontiguousarray(out).view(BITS[self.dtype]), self.dtype).any():
            raise CorruptTicketError(f"tensor {self.name!r}: base + delta overflows {self.dtype} (non-finite result)")
        return out

    def delta(self, base_at: np.ndarray | None = None) -> np.ndarray:
        """Float32 delta (fine-tuned − base) at :attr:`indices`."""
        if self.values == "f32delta":
            return self.payload
        if base_at is None:
            raise FormatError(f"tensor {self.name!r}: codec {self.values} needs the base values")
        return to_float32(self.finetuned(base_at), self.dtype) - to_float32(base_at, self.dtype)

    def check_base(self, base: np.ndarray, dtype: str, *, full: bool = False, where: str = "base") -> None:
        """Refuse a base tensor of another shape, dtype or content.

        Raises:
            TensorMismatchError: shape or dtype differ.
            FingerprintMismatchError: the sampled (or, with ``full``, the complete) fingerprint differs.
        """
        if tuple(base.shape) != self.shape or dtype != self.dtype:
            raise TensorMismatchError(
                f"tensor {self.name!r}: ticket expects {self.dtype}{list(self.shape)}, {where} has {dtype}{list(base.shape)}"
            )
        if self.base_sample is not None and base_sample(base) != self.base_sample:
            raise FingerprintMismatchError(
                f"tensor {self.name!r}: {where} differs from the base this ticket was made from "
                "(sampled fingerprint mismatch); use the ticket's base model, or --force to apply anyway"
            )
        if full and self.base_digest is not None and base_digest(base) != self.base_digest:
            raise FingerprintMismatchError(
                f"tensor {self.name!r}: {where} differs from the base this ticket was made from (full digest mismatch)"
            )

    def apply_to(self, flat: np.ndarray, weight: float = 1.0) -> None:
        """Apply in place to a writable flat storage array of the base tensor.

        ``weight == 1`` with a lossless codec writes the fine-tuned values bit-exactly;
        otherwise ``base + weight·delta`` is computed in float32 and rounded.
        """
        if weight == 1.0 and _apply_native(self, flat):
            return
        b = np.take(flat, self.indices)
        if weight == 1.0:
            np.put(flat, self.indices, self.finetuned(b))
        else:
            x = from_float32(to_float32(b, self.dtype) + np.float32(weight) * self.delta(b), self.dtype)
            if nonfinite_bits(np.ascontiguousarray(x).view(BITS[self.dtype]), self.dtype).any():
                raise CorruptTicketError(
                    f"tensor {self.name!r}: base + {weight:g}·delta overflows {self.dtype} (non-finite result)")
            np.put(flat, self.indices, x)


def _apply_native(tt: TicketTensor, flat: np.ndarray) -> bool:
    """``apply_to(flat, 1.0)`` with the compiled kernel (lossless BF16/F32 tickets on a contiguous
    writable array); every result is checked before anything is written. Returns False when it
    does not apply (the caller takes the numpy path)."""
    from . import native

    lib = native.kernels("codec")
    if (lib is None or tt.values not in ("ulpdiff", "raw") or tt.dtype not in ("BF16", "F32")
            or not flat.flags.c_contiguous or not flat.flags.writeable or flat.dtype != _storage_of(tt.dtype)):
        return False
    idx = np.ascontiguousarray(tt.indices, dtype=np.int64)
    if idx.size and (idx[0] < 0 or idx[-1] >= flat.size):
        return False  # let the numpy path raise its error
    bits = BITS[tt.dtype]
    pl = np.ascontiguousarray(tt.payload).view(bits)
    bad = lib.lv_apply(native.ptr(flat.view(bits)), native.ptr(idx), native.ptr(pl), idx.size,
                       np.dtype(bits).itemsize, 1 if tt.values == "raw" else 0)
    if bad >= 0:
        raise CorruptTicketError(
            f"tensor {tt.name!r}: applying the ticket gives non-finite values; "
            "the base is not the one this ticket was made from, or the ticket is corrupt")
    return True


def _storage_of(dtype: str) -> np.dtype:
    return np.dtype("<f4") if dtype == "F32" else (np.dtype("<f2") if dtype == "F16" else np.dtype("<u2"))


class Ticket:
    """A sparse task vector: named :class:`TicketTensor` s plus base identity and provenance.

    Built in memory (``Ticket(tensors, base=..., provenance=...)``) or opened lazily from a file
    with :func:`load_ticket`, in which case tensors are decoded on access.

    Example:
        >>> t = lotavec.load_ticket("math.lotavec.safetensors")  # doctest: +SKIP
        >>> t.names[:2], t.nnz, t.density
    """

    def __init__(self, tensors: Iterable[TicketTensor] = (), *, base: Mapping[str, Any] | None = None,
                 provenance: Mapping[str, Any] | None = None, _file: TicketFile | None = None):
        self._file = _file
        self._mem: dict[str, TicketTensor] = {}
        for t in tensors:
            if t.name in self._mem:
                raise FormatError(f"tensor {t.name!r} appears twice in the ticket")
            self._mem[t.name] = t
        if _file is not None:
            self.base = dict(_file.manifest.base)
            self.provenance = dict(_file.manifest.provenance)
            self._entries = {e.name: e for e in _file.manifest.tensors}
        else:
            self.base = dict(base or {})
            self.provenance = dict(provenance or {})
            self._entries = {}

    # --- structure -------------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """File the ticket was loaded from, if any."""
        return self._file.path if self._file else None

    @property
    def names(self) -> list[str]:
        """Tensor names, in stored order."""
        return list(self._entries) if self._file else list(self._mem)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in (self._entries if self._file else self._mem)

    def __iter__(self) -> Iterator[TicketTensor]:
        for n in self.names:
            yield self[n]

    def __getitem__(self, name: str) -> TicketTensor:
        return self.tensor(name)

    def tensor(self, name: str, *, threads: int | None = None) -> TicketTensor:
        """One decoded tensor (``ticket[name]``); a file's chunks are decoded on ``threads``
        threads (default: all cores; 1 when the caller already works on several tensors at once)."""
        if self._file is None:
            try:
                return self._mem[name]
            except KeyError:
                raise NotFoundError(f"ticket has no tensor {name!r}") from None
        e = self._file.entry(name)
        idx, pl = self._file.read_tensor(name, threads=threads)
        return TicketTensor(e.name, e.shape, e.dtype, idx, e.values, pl, e.base_sample, e.base_digest)

    def gap_coded(self, name: str) -> GapCoded | None:
        """One tensor with its mask left gap-coded (:meth:`TicketFile.read_tensor_gaps`), for
        kernels that read the gaps themselves; ``None`` for in-memory tickets, bitmap-coded
        masks, or without the compiled kernels (use :meth:`tensor` then)."""
        if self._file is None:
            return None
        return self._file.read_tensor_gaps(name)

    def info(self, name: str) -> dict[str, Any]:
        """Shape, dtype, nnz, codecs and stored bytes of a tensor, without decoding it."""
        if self._file is not None:
            e: TensorEntry = self._file.entry(name)
            codecs = sorted({c.mask_codec for c in e.chunks})
            return {"name": name, "shape": list(e.shape), "dtype": e.dtype, "nnz": e.nnz, "numel": e.numel,
                    "values": e.values, "mask_codecs": codecs, "bytes": e.stored_bytes, "chunks": len(e.chunks)}
        t = self[name]
        return {"name": name, "shape": list(t.shape), "dtype": t.dtype, "nnz": t.nnz, "numel": t.numel,
                "values": t.values, "mask_codecs": [], "bytes": None, "chunks": None}

    @property
    def nnz(self) -> int:
        """Stored entries over all tensors."""
        return sum(self.info(n)["nnz"] for n in self.names)

    @property
    def numel(self) -> int:
        """Elements of the tensors the ticket touches."""
        return sum(self.info(n)["numel"] for n in self.names)

    @property
    def density(self) -> float:
        """nnz ÷ elements of the touched tensors (see ``provenance['selection']`` for the selection density)."""
        n = self.numel
        return self.nnz / n if n else 0.0

    def indices(self, name: str) -> np.ndarray:
        """Flat indices of one tensor (decodes only what is needed)."""
        if self._file is None:
            return self[name].indices
        e = self._file.entry(name)
        out = [idx + start for start, idx, _ in self._file.iter_chunks(e.name)]
        return np.concatenate(out) if out else np.empty(0, np.int64)

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
             threads: int | None = None) -> str:
        """Write the ticket atomically to ``path`` (a safetensors file). Returns the path."""
        prov = {"lotavec_version": __version__, **self.provenance}
        with TicketFileWriter(path, base=self.base, provenance=prov, chunk_elements=chunk_elements, threads=threads) as w:
            for t in self:
                w.add(t.name, t.shape, t.dtype, t.indices, t.values, t.payload,
                      base_sample=t.base_sample, base_digest=t.base_digest)
        return os.fspath(path)

    def push_to_hub(self, repo_id: str, *, private: bool = False, revision: str | None = None,
                    create_pr: bool = False, message: str | None = None):
        """Publish the ticket (and a generated model card) to the Hub in one commit.

        Args:
            repo_id: ``org/name``; created when missing.
            private, revision, create_pr, message: as for ``lotavec push``.

        Returns:
            :class:`lotavec.hub.PushResult` (``noop`` when the Hub already has this ticket).

        Raises:
            HubError, NotFoundError.
        """
        import tempfile

        from . import hub

        if self.path is not None:
            return hub.push_ticket(self.path, repo_id, private=private, revision=revision,
                                   create_pr=create_pr, message=message)
        with tempfile.TemporaryDirectory() as d:
            path = self.save(os.path.join(d, hub.TICKET_FILENAME))
            return hub.push_ticket(path, repo_id, private=private, revision=revision,
                                   create_pr=create_pr, message=message)

    def verify(self) -> None:
        """Check every chunk's checksum and stream (file-backed tickets)."""
        if self._file is not None:
            self._file.verify()

    def close(self) -> None:
        """Release the file mapping."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        src = f" from {self.path!r}" if self.path else ""
        return f"<Ticket{src}: {len(self)} tensors, nnz={self.nnz}>"


def load_ticket(source: str | os.PathLike, *, max_tensor_bytes: int | None = None) -> Ticket:
    """Open a ticket file lazily (tensors decode on access).

    Args:
        source: a local ticket file, or a Hub id ``org/name[@revision]`` (an existing local path wins).
        max_tensor_bytes: cap on one whole-tensor decode (default 8 GiB).

    Raises:
        NotFoundError, FormatError subclasses, HubError.
    """
    path = os.fspath(source)
    if not os.path.exists(path):
        from . import hub

        if hub.parse_ref(path) is not None:
            path = hub.resolve_ticket(path).path
    kw = {} if max_tensor_bytes is None else {"max_tensor_bytes": max_tensor_bytes}
    return Ticket(_file=TicketFile(path, **kw))


def apply_to_arrays(ticket: Ticket, arrays: Mapping[str, np.ndarray], *, weight: float = 1.0,
                    threads: int | None = None) -> None:
    """Apply every tensor of ``ticket`` in place to writable storage arrays, several at a time.

    Args:
        ticket: the ticket.
        arrays: ``{tensor name: writable storage array of the base tensor}`` (any shape, C order).
        weight: as in :meth:`TicketTensor.apply_to`.
        threads: decode/apply threads (default: all cores); each tensor is decoded and applied by one.

    Raises:
        NotFoundError: an array is missing for a ticket tensor; FormatError subclasses.
    """
    from concurrent.futures import ThreadPoolExecutor

    missing = [n for n in ticket.names if n not in arrays]
    if missing:
        raise NotFoundError(f"no array for ticket tensor {missing[0]!r} ({len(missing)} missing)")

    def one(name: str) -> None:  # one decoding thread per tensor: tensors already run in parallel
        ticket.tensor(name, threads=1).apply_to(arrays[name].reshape(-1), weight)

    workers = max(1, threads or os.cpu_count() or 1)
    if workers == 1:
        for n in ticket.names:
            one(n)
        return
    with ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(one, n) for n in ticket.names]:
            f.result()


class TicketWriter:
    """Write a ticket tensor by tensor without holding it in memory (atomic on close).

    Example:
        >>> with TicketWriter("t.safetensors", base={"repo_id": "org/base"}) as w:  # doctest: +SKIP
        ...     w.add(TicketTensor.from_finetuned("w", base, ft, idx, "BF16"))
    """

    def __init__(self, path: str | os.PathLike, *, base: Mapping[str, Any] | None = None,
                 provenance: Mapping[str, Any] | None = None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                 threads: int | None = None):
        prov = {"lotavec_version": __version__, **(provenance or {})}
        self._w = TicketFileWriter(path, base=dict(base or {}), provenance=prov, chunk_elements=chunk_elements, threads=threads)
        self.path = os.fspath(path)

    @property
    def provenance(self) -> dict[str, Any]:
        """Provenance dict; may be updated until :meth:`close`."""
        return self._w.provenance

    def add(self, t: TicketTensor) -> None:
        """Queue one tensor: it is encoded on the writer's threads and written in order."""
        self._w.add(t.name, t.shape, t.dtype, t.indices, t.values, t.payload,
                           base_sample=t.base_sample, base_digest=t.base_digest)

    def close(self) -> str:
        """Finish the file and move it into place."""
        return self._w.close()

    def abort(self) -> None:
        """Discard the partial ticket."""
        self._w.abort()

    def __enter__(self) -> TicketWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
