"""Streaming merge of tickets into a base model, written as a normal Hugging Face folder.

Base tensors are memory-mapped and read lazily; tensors no ticket touches are copied straight
through; touched tensors are decoded, merged sparse-natively (:func:`~lotavec.merge.methods.merge_tensor`)
and written into shards planned up front by lotavec's own streaming sharded writer. Each tensor
is handled whole by one worker of a thread pool, and written positionally as soon as it is done;
the compiled kernels write each merged window of the output themselves, while it is still in the
CPU cache. The output folder appears atomically.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import native
from .._version import __version__
from ..errors import (
    CorruptTicketError,
    FingerprintMismatchError,
    MergeConfigError,
    ModelError,
    TensorMismatchError,
)
from ..format.dtypes import BITS, TICKET_DTYPES, from_float32, storage_dtype, to_float32
from ..format.fingerprint import SAMPLE_ELEMENTS, base_digest, base_sample, sample_digest
from ..format.reader import GapCoded, nonfinite_bits
from ..format.safetensors_io import SafetensorsFile
from ..hfwriter import ShardedWriter, atomic_output_dir, copy_model_files
from ..mask import Candidate, select_topk
from ..models import TensorSource, open_model
from ..ticket import Ticket, TicketTensor, load_ticket
from .config import MergeParams
from .methods import SparseDelta, merge_tensor, prepare_parts
from .registry import get_method

Progress = Callable[[str, int, int], None] | None
_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass
class MergeResult:
    """What :func:`merge` did.

    Attributes:
        path: the output folder.
        tensors: tensors written; ``touched``: how many the tickets changed.
        changed_entries: entries whose value differs from the base.
        seconds, bytes_written: wall time and weight bytes written (GB/s = bytes / seconds).
        params: the merge parameters as recorded (DARE seed included).
        warnings: base-identity problems overridden by ``force``.
    """

    path: str
    tensors: int
    touched: int
    changed_entries: int
    seconds: float
    bytes_written: int
    params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


class _Buffers:
    """Arrays recycled between tensors of one merge (thread-safe): outputs, and the scratch and
    trimmed arrays of TIES. Fresh memory costs a page fault and a zeroed page per 4 KiB, so
    reusing a buffer is much cheaper than allocating one.

    ``take`` returns a buffer of at least the asked size (the smallest idle one that fits, else
    a fresh one); ``give`` returns it once its contents are consumed. At most ``keep`` idle
    buffers and ``max_bytes`` idle bytes are held; beyond that the smallest idle buffers are
    dropped first (small ones are cheap to make again), then the largest, to stay under the
    byte bound.
    """

    def __init__(self, keep: int, max_bytes: int = 128 << 20):
        self._free: list[np.ndarray] = []
        self._keep = keep
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        return np.empty(nbytes, np.uint8)

    def give(self, buf: np.ndarray) -> None:
        base = buf
        while base.base is not None and isinstance(base.base, np.ndarray):
            base = base.base
        if base.dtype != np.uint8 or base.ndim != 1 or base.nbytes > self._max_bytes:
            return
        with self._lock:
            self._free.append(base)
            self._free.sort(key=lambda b: b.nbytes)
            if len(self._free) > self._keep:
                del self._free[0]
            while sum(b.nbytes for b in self._free) > self._max_bytes:
                self._free.pop()


def _new_like(flat: np.ndarray, buffers: _Buffers | None) -> np.ndarray:
    if buffers is None:
        return np.empty_like(flat)
    return buffers.take(flat.nbytes)[: flat.nbytes].view(flat.dtype)


@dataclass
class Sink:
    """Where a compiled merge kernel writes a merged tensor itself, window by window (``pwrite``),
    while each window is still in the CPU cache: file descriptor, byte offset of the tensor in
    the file, and a scratch window of :data:`lotavec.native.WINDOW` entries (uint8, 4 bytes per
    entry) owned by the calling thread."""

    fd: int
    offset: int
    window: np.ndarray
    lock: native.Mutex | None = None

    @staticmethod
    def supported() -> bool:
        """Whether kernels can write through a sink here (compiled kernels on a POSIX system)."""
        return os.name == "posix" and native.kernels("codec") is not None

    def args(self) -> tuple[int, int, int | None]:
        return self.fd, self.offset, (self.lock.ptr if self.lock is not None else None)


_NO_SINK = (-1, 0, None)


def check_base_identity(base: TensorSource, tickets: Sequence[Ticket], *, full: bool = False,
                        force: bool = False) -> list[str]:
    """Refuse tickets made for another base (all checks now; a merge runs the same checks, the
    fingerprints tensor by tensor as it merges, see :class:`_BaseChecks`).

    Checks, per ticket tensor: presence, shape and dtype, and the sampled fingerprint (and the
    full digest with ``full``). With ``force`` fingerprint mismatches are returned as warnings
    instead; missing tensors and shape or dtype differences are always refused.

    Raises:
        TensorMismatchError, FingerprintMismatchError: naming the ticket and tensor.
    """
    checks = _BaseChecks(base, tickets, full=full, force=force)
    checks.check_all()
    return checks.warnings()


class _BaseChecks:
    """A base-identity check split in two: the structure of every ticket tensor (presence, shape,
    dtype: no data read) on construction, then each tensor's fingerprints by :meth:`check`,
    whenever its data is at hand (the merge checks each touched tensor just before merging it,
    while its pages are mapped for the merge anyway). Thread-safe.

    Raises (construction): TensorMismatchError naming the ticket and tensor.
    """

    def __init__(self, base: TensorSource, tickets: Sequence[Ticket], *, full: bool, force: bool):
        self.base, self.full, self.force = base, full, force
        self._warnings: list[tuple[int, int, str]] = []
        self._lock = threading.Lock()
        #: per tensor name: (ticket number, position in that ticket, ticket, entry) to compare
        self.wanted: dict[str, list[tuple[int, int, Ticket, Any]]] = {}
        names = set(base.names())
        for k, t in enumerate(tickets):
            label = t.path or "ticket"
            for pos, name in enumerate(t.names):
                info = t.info(name)
                if name not in names:
                    raise TensorMismatchError(f"{label}: tensor {name!r} is not in the base model {base.label}; "
                                              "this ticket was made for another architecture")
                dtype, shape = base.info(name)
                if tuple(shape) != tuple(info["shape"]) or dtype != info["dtype"]:
                    raise TensorMismatchError(
                        f"{label}: tensor {name!r} is {info['dtype']}{info['shape']} in the ticket but "
                        f"{dtype}{list(shape)} in the base {base.label}; use the base the ticket was made from")
                entry = t._file.entry(name) if t._file is not None else t[name]
                if entry.base_sample is not None or (full and entry.base_digest is not None):
                    self.wanted.setdefault(name, []).append((k, pos, t, entry))

    def check(self, name: str, arr: np.ndarray) -> None:
        """Compare tensor ``name`` of the base (its storage array) with every ticket's fingerprints.

        Raises:
            FingerprintMismatchError: naming the ticket and tensor (unless ``force``: then kept
                for :meth:`warnings`).
        """
        wanted = self.wanted.get(name)
        if not wanted:
            return
        self.check_sample(name, base_sample(arr), base_digest(arr) if self.full else None)

    def wants_sample(self, name: str) -> bool:
        """Whether a ticket records the sampled fingerprint of base tensor ``name``."""
        return any(e.base_sample is not None for _, _, _, e in self.wanted.get(name, ()))

    def check_sample(self, name: str, sample: str, digest: str | None = None) -> None:
        """:meth:`check` from the tensor's sampled fingerprint (and full digest), computed by the
        caller (:func:`~lotavec.format.fingerprint.sample_digest` of the gathered entries)."""
        for k, pos, t, entry in self.wanted.get(name, ()):
            label = t.path or "ticket"
            try:
                if entry.base_sample is not None and sample != entry.base_sample:
                    raise FingerprintMismatchError(
                        f"{label}: tensor {name!r} of the base {self.base.label} differs from the base this "
                        f"ticket was made from{_ref(t)}; use that base (or --force to merge anyway)")
                if self.full and entry.base_digest is not None and digest != entry.base_digest:
                    raise FingerprintMismatchError(
                        f"{label}: tensor {name!r}: full digest differs from the ticket's base{_ref(t)}")
            except FingerprintMismatchError as e:  # --force overrides content, never shapes or dtypes
                if not self.force:
                    raise
                with self._lock:
                    self._warnings.append((k, pos, str(e)))

    def check_all(self) -> None:
        """:meth:`check` every wanted tensor now, on a few threads (page faults dominate)."""

        def fingerprint(name: str) -> None:
            try:
                self.check(name, self.base.array(name))
            finally:
                # The 4096 sampled entries touch nearly every page of the tensor: drop them, or
                # the whole touched base stays resident.
                self.base.release(name)

        order = [n for n in self.base.names() if n in self.wanted]  # file order: sequential reads
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as ex:
            list(ex.map(fingerprint, order))

    def warnings(self) -> list[str]:
        """The overridden mismatches, in ticket order."""
        return [w for _, _, w in sorted(self._warnings)]


def _ref(t: Ticket) -> str:
    b = t.base or {}
    if b.get("repo_id"):
        return f" ({b['repo_id']}{'@' + b['revision'] if b.get('revision') else ''})"
    return ""


def _global_trims(tickets: Sequence[Ticket], base: TensorSource, params: MergeParams) -> dict[int, dict[str, np.ndarray]]:
    """Per ticket, the flat indices kept by one top-k over all its tensors (``scope="global"``)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for i, t in enumerate(tickets):
        p = params.density_of(i)
        total = sum(t.info(n)["numel"] for n in t.names)
        k = int(np.floor(p * total))
        cands = []
        for n in t.names:
            def scores(n: str = n, t: Ticket = t) -> np.ndarray:
                tt = t[n]
                return np.abs(tt.delta(np.take(base.array(n).reshape(-1), tt.indices)))
            cands.append(Candidate(n, t.info(n)["nnz"], scores))
        sel = select_topk(cands, k=min(k, sum(c.numel for c in cands)), scope="global")
        out[i] = {n: t.indices(n)[pos] for n, pos in sel.items()}
    return out


def _exact_sum(params: MergeParams, n: int) -> bool:
    return (params.method in ("sum", "disjoint") and params.lambda_ == 1.0
            and all(params.weight_of(i) == 1.0 for i in range(n)))


def merge_tensor_values(name: str, base_arr: np.ndarray, dtype: str, out_dtype: str, parts: list[TicketTensor | None],
                        params: MergeParams, trims: dict[int, dict[str, np.ndarray]] | None,
                        buffers: _Buffers | None = None, sink: Sink | None = None) -> tuple[np.ndarray | None, int]:
    """Merged storage array of one tensor (``out_dtype``) and the number of changed entries.

    ``buffers``: where the compiled paths take their output array from (reused buffers avoid
    faulting fresh memory in for every tensor); default a new array. ``sink``: where the
    compiled paths that can write the result themselves do so (then the array is ``None``).
    """
    flat = base_arr.reshape(-1)
    if _exact_sum(params, len(parts)) and out_dtype == dtype:
        out, changed = _exact_sum_values(name, flat, dtype, parts, params, buffers, sink)
        return (None if out is None else out.reshape(base_arr.shape)), changed
    lib = native.kernels("codec")
    deltas: list[SparseDelta | None] = [None if tt is None else _delta_of(lib, name, flat, dtype, tt) for tt in parts]
    tr = {i: trims[i][name] for i in trims if name in trims[i]} if trims else None
    if (lib is not None and out_dtype == dtype and dtype in ("BF16", "F32") and get_method(params.method).consensus
            and len(parts) <= 64):
        _, prep = prepare_parts(name, deltas, params, trims=tr)  # trim / DARE per ticket
        out, changed = _consensus_native(lib, name, flat, dtype, prep, params, buffers, sink)
        return (None if out is None else out.reshape(base_arr.shape)), changed
    merged = merge_tensor(name, deltas, params, trims=tr)
    if out_dtype == dtype:
        out = flat.copy()
    else:
        out = from_float32(to_float32(flat, dtype), out_dtype)
    changed = _put_sum(out, flat, dtype, out_dtype, merged, name)
    return out.reshape(base_arr.shape), changed


def _delta_of(lib, name: str, flat: np.ndarray, dtype: str, tt: TicketTensor) -> SparseDelta:
    """A ticket tensor's float32 deltas on the base (compiled for lossless BF16/F32 tickets)."""
    if lib is None or tt.values not in ("ulpdiff", "raw") or dtype not in ("BF16", "F32"):
        return SparseDelta(tt.indices, tt.delta(np.take(flat, tt.indices)), flat.size)
    bits = BITS[dtype]
    idx = np.ascontiguousarray(tt.indices, dtype=np.int64)
    pl = np.ascontiguousarray(tt.payload).view(bits)
    base = flat.view(bits)
    out = np.empty(idx.size, np.float32)
    bad = lib.lv_delta(native.ptr(base), native.ptr(idx), native.ptr(pl), idx.size, np.dtype(bits).itemsize,
                       1 if tt.values == "raw" else 0, native.ptr(out))
    if bad >= 0:
        raise CorruptTicketError(
            f"tensor {name!r}: applying the ticket gives a non-finite value at flat index {int(idx[bad])}; "
            "the base is not the one this ticket was made from, or the ticket is corrupt")
    return SparseDelta._trusted(idx, out, flat.size)  # indices come from a validated ticket


def _consensus_native(lib, name: str, flat: np.ndarray, dtype: str, prep: list[tuple[np.ndarray, np.ndarray]],
                      params: MergeParams, buffers: _Buffers | None = None,
                      sink: Sink | None = None) -> tuple[np.ndarray | None, int]:
    """Sign election, disjoint mean, λ and the sum onto the base with the compiled ``lv_consensus``
    (the same float32 arithmetic, in the same order, as :func:`merge_tensor` + :func:`_put_sum`);
    with a ``sink`` the kernel writes the result itself and no array is returned. Indices are
    int64, or int32 for the two-ticket kernel when every ticket's are (:func:`_gapped_trims`)."""
    bits = BITS[dtype]
    out = sink.window if sink is not None else _new_like(flat, buffers)
    t = len(prep)
    idx32 = t == 2 and all(i.dtype == np.int32 for i, _ in prep)
    idx = [np.ascontiguousarray(i, dtype=np.int32 if idx32 else np.int64) for i, _ in prep]
    val = [np.ascontiguousarray(v, dtype=np.float32) for _, v in prep]
    arr = ctypes.c_void_p * t
    idx_p, val_p = arr(*map(native.ptr, idx)), arr(*map(native.ptr, val))
    nnz = np.array([i.size for i in idx], np.int64)
    w = np.array([params.weight_of(k) for k in range(t)], np.float32)
    err = np.zeros(3, np.int64)
    seen = np.zeros(_SUM_BLOCK, np.uint8)
    peft = params.semantics == "peft"
    rule = (int(peft), int(params.sign_method == "total"), int(bool(params.resolved_normalize)) if not peft else 0,
            float(np.float32(params.lambda_)), int(params.lambda_ != 1.0))
    if t == 2:  # the common case: three passes over the entries instead of six
        stash = np.empty(_SUM_BLOCK, np.float32)
        changed = lib.lv_consensus2(
            native.ptr(out.view(bits)), native.ptr(flat.view(bits)), flat.size, np.dtype(bits).itemsize,
            native.ptr(idx[0]), native.ptr(val[0]), idx[0].size, native.ptr(idx[1]), native.ptr(val[1]), idx[1].size,
            float(w[0]), float(w[1]), *rule, native.ptr(err), native.ptr(stash), native.ptr(seen),
            *(sink.args() if sink is not None else _NO_SINK), int(idx32))
        _raise_kernel_error(name, dtype, err, [0, 1])
        return (None if sink is not None else out), int(changed)
    votes, mixed, div = (np.empty(_SUM_BLOCK, np.float32) for _ in range(3))
    changed = lib.lv_consensus(
        native.ptr(out.view(bits)), native.ptr(flat.view(bits)), flat.size, np.dtype(bits).itemsize, t,
        idx_p, val_p, native.ptr(nnz), native.ptr(w), *rule, native.ptr(err), native.ptr(votes), native.ptr(mixed),
        native.ptr(div), native.ptr(seen), *(sink.args() if sink is not None else _NO_SINK))
    _raise_kernel_error(name, dtype, err, list(range(t)))
    return (None if sink is not None else out), int(changed)


def _put_sum(out: np.ndarray, flat: np.ndarray, dtype: str, out_dtype: str, merged: SparseDelta, name: str = "") -> int:
    """``out[i] = base[i] + merged[i]`` on the merged support; changed entries (storage differs)."""
    idx = merged.indices
    base_at = np.take(flat, idx)
    with np.errstate(over="ignore"):  # overflow is detected on the rounded values below
        new = from_float32(to_float32(base_at, dtype) + merged.values, out_dtype)
    if out_dtype in BITS and nonfinite_bits(np.ascontiguousarray(new).view(BITS[out_dtype]), out_dtype).any():
        raise MergeConfigError(
            f"tensor {name!r}: the merged values overflow {out_dtype} (Inf/NaN); lower the weights or --lambda")
    out[idx] = new  # item assignment: ~3x faster than np.put
    return int(np.count_nonzero(new != base_at)) if out_dtype == dtype else int(idx.size)


#: Entries per step of the exact sum: the base and output slices and the coverage counts of a
#: step stay in the CPU cache while the tickets' entries are gathered and scattered.
_SUM_CHUNK = 1 << 17


def _exact_sum_values(name: str, flat: np.ndarray, dtype: str, parts: list[TicketTensor | None],
                      params: MergeParams, buffers: _Buffers | None = None,
                      sink: Sink | None = None) -> tuple[np.ndarray | None, int]:
    """``sum``/``disjoint`` with unit weights, in the base dtype: lossless tickets reproduce the
    fine-tuned bits exactly where they alone touch the tensor (an integer add on the bit
    patterns); entries several tickets share, and ``f32delta`` entries, take the float route of
    :func:`merge_tensor` restricted to them (entries are merged independently, so the values
    are those of the merge over the whole union). Works in cache-sized steps of the tensor.
    """
    live = [(i, tt) for i, tt in enumerate(parts) if tt is not None]
    lib = native.kernels("codec")
    if lib is not None and all(tt.values in ("ulpdiff", "raw") for _, tt in live):
        return _exact_sum_native(lib, name, flat, dtype, parts, live, params, buffers, sink)
    out = np.empty_like(flat)
    bounds = np.minimum(np.arange(0, flat.size + _SUM_CHUNK, _SUM_CHUNK, dtype=np.int64), flat.size)
    cuts = [np.searchsorted(tt.indices, bounds) for _, tt in live]
    count = np.zeros(_SUM_CHUNK, np.uint8 if len(live) < 256 else np.uint32) if len(live) > 1 else None
    bits = BITS[dtype]
    magnitude = np.array(np.iinfo(bits).max >> 1, dtype=bits)  # every bit but the sign
    changed = 0
    shared_parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in live]
    for k in range(bounds.size - 1):
        c0, c1 = int(bounds[k]), int(bounds[k + 1])
        bc, oc = flat[c0:c1], out[c0:c1]
        np.copyto(oc, bc)
        locs = [tt.indices[cut[k]:cut[k + 1]] - c0 for (_, tt), cut in zip(live, cuts)]
        if count is not None:
            for loc in locs:
                count[loc] += 1  # indices are unique within one ticket
        for j, ((_, tt), cut, loc) in enumerate(zip(live, cuts, locs)):
            if tt.values == "f32delta" or not loc.size:
                continue
            a, b = int(cut[k]), int(cut[k + 1])
            base_at = np.take(bc, loc)
            # Checks the entries for non-finite results.
            ft = replace(tt, indices=tt.indices[a:b], payload=tt.payload[a:b]).finetuned(base_at)
            oc[loc] = ft
            fb, bb = ft.view(bits), base_at.view(bits)
            # Changed: bits differ and the float delta is not zero (+0 and -0 do not count).
            diff = (fb != bb) & (((fb | bb) & magnitude) != 0)
            changed += int(np.count_nonzero(diff))
            pos = np.flatnonzero(np.take(count, loc) > 1) if count is not None else None
            if pos is not None and pos.size:  # back to the base; the float route below sets them
                f_sh, b_sh = np.take(ft, pos), np.take(base_at, pos)
                changed -= int(np.count_nonzero(np.take(diff, pos)))
                loc_sh = np.take(loc, pos)
                oc[loc_sh] = b_sh
                shared_parts[j].append((loc_sh + c0, to_float32(f_sh, dtype) - to_float32(b_sh, dtype)))
        if count is not None:
            count[: c1 - c0] = 0
    floats: list[SparseDelta | None] = [None] * len(parts)
    for (i, tt), pieces in zip(live, shared_parts):
        if tt.values == "f32delta":
            floats[i] = SparseDelta(tt.indices, tt.delta(np.take(flat, tt.indices)), flat.size)
        elif pieces:
            floats[i] = SparseDelta(np.concatenate([p[0] for p in pieces]),
                                    np.concatenate([p[1] for p in pieces]), flat.size)
    if any(f is not None and f.indices.size for f in floats):
        merged = merge_tensor(name, floats, params)
        changed += _put_sum(out, flat, dtype, dtype, merged, name)
    return out, changed


#: Block of the compiled sum (LV_BLOCK in lotavec/_csrc/codec.c): the size of its scratch arrays.
_SUM_BLOCK = 1 << 16


def _raise_kernel_error(name: str, dtype: str, err: np.ndarray, tickets: list[int]) -> None:
    """The typed error for a compiled merge kernel's error record ``[kind, ticket, flat index]``
    (nothing when ``kind == 0``; ``[4, -, errno]`` a failed write); ``tickets``: each kernel
    ticket's position in the merge."""
    if err[0] == 4:
        raise OSError(int(err[2]), f"tensor {name!r}: writing the merged tensor failed: {os.strerror(int(err[2]))}")
    if err[0] == 1:
        raise CorruptTicketError(
            f"tensor {name!r}: applying ticket {tickets[int(err[1])] + 1} gives a non-finite value at flat index "
            f"{int(err[2])}; the base is not the one this ticket was made from, or the ticket is corrupt")
    if err[0] == 2:
        raise MergeConfigError(
            f"tensor {name!r}: the merged values overflow {dtype} (Inf/NaN) at flat index {int(err[2])}; "
            "lower the weights or --lambda")
    if err[0]:
        raise MergeConfigError(f"tensor {name!r}: too many tickets for the compiled merge ({len(tickets)})")


def _exact_sum_native(lib, name: str, flat: np.ndarray, dtype: str, parts: list[TicketTensor | None],
                      live: list[tuple[int, TicketTensor]], params: MergeParams,
                      buffers: _Buffers | None = None, sink: Sink | None = None) -> tuple[np.ndarray | None, int]:
    """:func:`_exact_sum_values` with the compiled kernel ``lv_sum``: copy, count and apply fused
    in cache-sized blocks, one pass over the tensor.

    Entries one ticket touches get the fine-tuned bits; entries two tickets share are summed in
    float32 by the kernel (BF16/F32; the same arithmetic as the float route). Entries of three or
    more tickets (or shared F16 entries) are left at the base by the kernel and merged here by the
    float route of :func:`merge_tensor`. One ticket, or two BF16/F32 tickets (the common cases),
    take ``lv_sum2``, which can also write the result itself through a ``sink``.
    """
    t = len(live)
    idx = [np.ascontiguousarray(tt.indices, dtype=np.int64) for _, tt in live]
    pls = [np.ascontiguousarray(tt.payload).view(BITS[dtype]) for _, tt in live]
    if t == 1 or (t == 2 and dtype in ("BF16", "F32")):  # no counting pass
        out = sink.window if sink is not None else _new_like(flat, buffers)
        err = np.zeros(3, np.int64)
        mark = np.zeros(_SUM_BLOCK, np.uint8)
        modes = [1 if tt.values == "raw" else 0 for _, tt in live]
        j = t - 1  # one ticket: the second is empty
        changed = lib.lv_sum2(native.ptr(out), native.ptr(flat), flat.size, np.dtype(BITS[dtype]).itemsize,
                              int(dtype == "BF16"), native.ptr(idx[0]), native.ptr(pls[0]), idx[0].size, modes[0],
                              native.ptr(idx[j]), native.ptr(pls[j]), idx[j].size if t == 2 else 0, modes[j],
                              native.ptr(err), native.ptr(mark), *(sink.args() if sink is not None else _NO_SINK))
        _raise_kernel_error(name, dtype, err, [i for i, _ in live])
        return (None if sink is not None else out), int(changed)
    out = _new_like(flat, buffers)
    shared = [np.empty(i.size if t > 1 else 0, np.int64) for i in idx]
    arr = ctypes.c_void_p * t
    nshared = np.zeros(t, np.int64)
    err = np.zeros(3, np.int64)
    # Every buffer handed to the kernel is bound to a name here, so it outlives the call.
    nnz = np.array([i.size for i in idx], np.int64)
    modes = np.array([1 if tt.values == "raw" else 0 for _, tt in live], np.int32)
    idx_p, pl_p, sh_p = arr(*map(native.ptr, idx)), arr(*map(native.ptr, pls)), arr(*map(native.ptr, shared))
    cnt, acc = np.empty(_SUM_BLOCK, np.uint8), np.empty(_SUM_BLOCK, np.float32)  # the kernel's scratch
    changed = lib.lv_sum(
        native.ptr(out), native.ptr(flat), flat.size, np.dtype(BITS[dtype]).itemsize, int(dtype == "BF16"),
        int(dtype in ("BF16", "F32")), t,
        idx_p, pl_p, native.ptr(nnz), native.ptr(modes), sh_p, native.ptr(nshared), native.ptr(err),
        native.ptr(cnt), native.ptr(acc))
    _raise_kernel_error(name, dtype, err, [i for i, _ in live])
    floats: list[SparseDelta | None] = [None] * len(parts)
    for k, (i, tt) in enumerate(live):
        if nshared[k]:
            pos = shared[k][: nshared[k]]
            sub = replace(tt, indices=np.take(idx[k], pos), payload=np.take(tt.payload, pos))
            floats[i] = SparseDelta(sub.indices, sub.delta(np.take(flat, sub.indices)), flat.size)
    if any(f is not None for f in floats):
        merged = merge_tensor(name, floats, params)
        changed += _put_sum(out, flat, dtype, dtype, merged, name)
    return out, int(changed)


def _live_gap_coded(name: str, tks: list[Ticket]) -> list[tuple[int, Ticket, GapCoded]] | None:
    """The tickets touching ``name`` (with their positions), each decoded with its mask left
    gap-coded, when all are lossless (``ulpdiff``/``raw``) and gap-coded; else ``None``."""
    live = [(i, t) for i, t in enumerate(tks) if name in t]
    if not live or any(t.info(name)["values"] not in ("ulpdiff", "raw") for _, t in live):
        return None
    coded = [t.gap_coded(name) for _, t in live]
    if any(g is None for g in coded):
        return None
    return [(i, t, g) for (i, t), g in zip(live, coded)]


def _gap_parts(name: str, dtype: str, tks: list[Ticket], params: MergeParams
               ) -> list[tuple[int, Ticket, GapCoded]] | None:
    """:func:`_live_gap_coded` when the exact ``sum`` can take :func:`_gapped_sum` (one or two
    lossless tickets; two: BF16/F32), else ``None``."""
    live = sum(name in t for t in tks)
    if not 1 <= live <= 2 or (live == 2 and dtype not in ("BF16", "F32")) or not _exact_sum(params, len(tks)):
        return None
    return _live_gap_coded(name, tks)


def _sum_dtype_ok(dtype: str, live: list) -> bool:
    """Whether the exact ``sum`` kernels merge ``live`` tickets into a ``dtype`` tensor (one or two
    tickets; two: BF16/F32)."""
    return 1 <= len(live) <= 2 and (len(live) == 1 or dtype in ("BF16", "F32"))


def _coded_plan(name: str, dtype: str, tks: list[Ticket], params: MergeParams
                ) -> list[tuple[int, Ticket, tuple[np.ndarray, np.ndarray]]] | None:
    """The tickets touching ``name`` with their chunk records (:meth:`TicketFile.chunk_records`)
    when the exact ``sum`` can take :func:`_coded_sum` (the cases of :func:`_gap_parts`, from
    ticket files whose chunks the compiled decoders read), else ``None``. Nothing is decoded."""
    live = [(i, t) for i, t in enumerate(tks) if name in t]
    if not _sum_dtype_ok(dtype, live) or not _exact_sum(params, len(tks)):
        return None
    return _with_records(name, live)


def _with_records(name: str, live: list[tuple[int, Ticket]]
                  ) -> list[tuple[int, Ticket, tuple[np.ndarray, np.ndarray]]] | None:
    """``live`` tickets (index, ticket) with their chunk records for ``name``, or ``None`` when one
    of them has none (an in-memory ticket, a bitmap chunk, f32delta values) or there are none."""
    recs = [t._file.chunk_records(name) if t._file is not None else None for _, t in live]
    if not live or any(r is None for r in recs):
        return None
    return [(i, t, r) for (i, t), r in zip(live, recs)]


def _coded_sum(lib, ctx: int, name: str, flat: np.ndarray, dtype: str,
               plan: list[tuple[int, Ticket, tuple[np.ndarray, np.ndarray]]], sink: Sink) -> int | None:
    """The exact ``sum`` of :func:`_coded_plan`'s tickets straight from their compressed chunks,
    written through ``sink`` by ``lv_sum_coded`` (checksums, zstd, mask checks and values
    decoded in the same call, without the GIL; ``ctx`` from ``lv_ctx_new``): the result of
    :func:`_gapped_sum`. ``None`` when a chunk was left to the Python codecs (nothing written):
    decode with them then; they raise the typed error for a corrupt chunk."""
    bits = BITS[dtype]
    args: list = []
    for _, t, (rec, blob) in plan:
        args += [native.ptr(blob), native.ptr(rec), rec.shape[0], t.info(name)["nnz"], _raw_flag(t, name)]
    if len(plan) == 1:
        args += [0, 0, 0, 0, 0]
    err = np.zeros(3, np.int64)
    changed = lib.lv_sum_coded(ctx, native.ptr(flat.view(bits)), flat.size, np.dtype(bits).itemsize,
                               int(dtype == "BF16"), len(plan), *args, native.ptr(err), sink.fd, sink.offset,
                               sink.lock.ptr if sink.lock is not None else None)
    if err[0] in (5, 6):
        return None
    _raise_kernel_error(name, dtype, err, [i for i, _, _ in plan])
    for _, t, _ in plan:
        t._file.done(name)
    return int(changed)


def _raw_flag(t: Ticket, name: str) -> int:
    """The kernels' payload mode: 1 when the ticket stores the fine-tuned bits (``raw``), 0 for
    bit-pattern differences (``ulpdiff``)."""
    return 1 if t.info(name)["values"] == "raw" else 0


def _gapped_sum(lib, name: str, flat: np.ndarray, dtype: str, parts: list[tuple[int, Ticket, GapCoded]],
                sink: Sink) -> int:
    """The exact ``sum`` of :func:`_gap_parts`' tickets written through ``sink`` by ``lv_sum2g``,
    which reads each ticket's gap-coded mask chunk by chunk instead of an index array: the same
    result as :func:`_exact_sum_native`, with 16 bytes less memory traffic per entry. Returns the
    changed entries."""
    bits = BITS[dtype]
    args: list = []
    keep: list = []  # every buffer handed to the kernel stays alive until it returns
    for _, t, g in parts:
        chunks, alive = g.kernel_args()
        pl = np.ascontiguousarray(g.payload).view(bits)
        keep += [alive, pl]
        args += [*chunks, native.ptr(pl), _raw_flag(t, name)]
    if len(parts) == 1:  # the second ticket: no chunks (its pointers are never read)
        args += [0, *args[1:]]
    err = np.zeros(3, np.int64)
    mark = np.zeros(_SUM_BLOCK, np.uint8)
    changed = lib.lv_sum2g(native.ptr(sink.window), native.ptr(flat.view(bits)), flat.size, np.dtype(bits).itemsize,
                           int(dtype == "BF16"), *args, native.ptr(err), native.ptr(mark), *sink.args())
    _raise_kernel_error(name, dtype, err, [i for i, _, _ in parts])
    return int(changed)


def _trims_method(tks: list[Ticket], params: MergeParams) -> bool:
    """Whether the method is TIES-style with compiled trims (per-tensor magnitude trim, then the
    compiled consensus, at most 64 tickets), whatever the tensor."""
    spec = get_method(params.method)
    return spec.consensus and spec.sparsify == "magnitude" and params.scope == "tensor" and len(tks) <= 64


def _trims_from_gaps(dtype: str, tks: list[Ticket], params: MergeParams) -> bool:
    """Whether TIES-style methods take :func:`_gapped_trims` for a tensor of ``dtype`` (BF16/F32)."""
    return _trims_method(tks, params) and dtype in ("BF16", "F32")


def _trim_gap_parts(name: str, dtype: str, tks: list[Ticket], params: MergeParams
                    ) -> list[tuple[int, Ticket, GapCoded]] | None:
    """:func:`_live_gap_coded` when :func:`_trims_from_gaps`, else ``None``."""
    return _live_gap_coded(name, tks) if _trims_from_gaps(dtype, tks, params) else None


class _SlotDecoded:
    """One ticket's tensor decoded by ``lv_ctx_decode`` into a worker's context: what
    :func:`_gapped_trims` reads of a :class:`GapCoded`, valid until the context decodes again."""

    def __init__(self, addrs: np.ndarray, nchunks: int, nnz: int, dtype: str):
        self._args = (nchunks, *(int(a) for a in addrs[:4]))
        bits = np.dtype(BITS[dtype])
        self._nnz = nnz
        self.payload = (np.frombuffer((ctypes.c_char * (nnz * bits.itemsize)).from_address(int(addrs[4])), bits)
                        if nnz else np.empty(0, bits))

    def kernel_args(self) -> tuple[tuple, Any]:
        return self._args, self

    def indices(self) -> np.ndarray:
        out = np.empty(self._nnz, np.int64)
        native.kernels("codec").lv_gaps_indices(*self._args, native.ptr(out))
        return out


def _coded_trim_parts(lib, ctx: int, name: str, dtype: str, tks: list[Ticket], params: MergeParams
                      ) -> list[tuple[int, Ticket, Callable[[], Any]]] | None:
    """The tickets touching ``name``, each with a function that decodes it in the worker's
    context ``ctx`` (``lv_ctx_decode``: checksums, zstd, mask and value checks in C, one ticket
    at a time), when :func:`_trims_from_gaps` and every such ticket's chunks are ones the compiled
    decoders read; else ``None``. A chunk they do not accept is decoded by the Python codecs,
    which raise the typed error."""
    if not _trims_from_gaps(dtype, tks, params):
        return None
    plan = _with_records(name, [(i, t) for i, t in enumerate(tks) if name in t])
    if plan is None:
        return None

    def decode(t: Ticket, rec: np.ndarray, blob: np.ndarray) -> Any:
        nnz = t.info(name)["nnz"]
        addrs = np.zeros(5, np.int64)
        if lib.lv_ctx_decode(ctx, native.ptr(blob), native.ptr(rec), rec.shape[0], nnz, np.dtype(BITS[dtype]).itemsize,
                             int(dtype == "BF16"), _raw_flag(t, name), native.ptr(addrs)) == 0:
            t._file.done(name)
            return _SlotDecoded(addrs, rec.shape[0], nnz, dtype)
        g = t.gap_coded(name)  # the Python codecs raise the typed error for a corrupt chunk
        if g is None:  # pragma: no cover - chunk_records admits only gap-coded chunks
            raise CorruptTicketError(f"{t.path}: tensor {name!r} could not be decoded")
        return g

    return [(i, t, (lambda t=t, r=r: decode(t, *r))) for i, t, r in plan]


def _gapped_trims(lib, name: str, flat: np.ndarray, dtype: str, parts: list[tuple[int, Ticket, Any]],
                  n_tickets: int, params: MergeParams, buffers: _Buffers, used: list[np.ndarray]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each ticket's trimmed deltas (Tᵢ: flat indices, float32 values), as
    :func:`~lotavec.merge.methods.prepare_parts` gives them, from gap-coded masks: ``lv_delta_hist_g``
    computes the deltas and the first magnitude histogram in one pass, and ``lv_topk_g`` selects
    reading the kept entries' indices from the mask, so no index array of all entries is made.
    Scratch and result arrays come from ``buffers`` and are listed in ``used`` (give them back once
    the result is consumed). The kept indices are int32 when the tensor has fewer than 2³¹
    entries (less memory traffic in the selection and the consensus), else int64."""
    bits = BITS[dtype]
    idx_t = np.int32 if flat.size < 1 << 31 else np.int64

    def take(count: int, dt) -> np.ndarray:
        buf = buffers.take(count * np.dtype(dt).itemsize)
        used.append(buf)
        return buf[: count * np.dtype(dt).itemsize].view(dt)

    prep: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, idx_t), np.empty(0, np.float32))] * n_tickets
    hist = np.empty(1 << 16, np.uint32)
    for i, t, g in parts:
        if callable(g):  # decoded now, one ticket at a time (see _coded_trim_parts)
            g = g()
        chunks, _alive = g.kernel_args()  # held until this ticket's kernels have returned
        pl = np.ascontiguousarray(g.payload).view(bits)
        n = pl.size
        d = take(n, np.float32)
        bad = lib.lv_delta_hist_g(native.ptr(flat.view(bits)), *chunks, native.ptr(pl), pl.itemsize,
                                  _raw_flag(t, name), native.ptr(d), native.ptr(hist))
        if bad >= 0:  # the error record of the other kernels: [1, this ticket, flat index]
            _raise_kernel_error(name, dtype, np.array([1, 0, bad], np.int64), [i])
        k = int(params.density_of(i) * flat.size)
        if k >= n:  # keeps everything
            prep[i] = (g.indices().astype(idx_t, copy=False), d)
        elif k > 0:
            out_idx, out_val = take(k, idx_t), take(k, np.float32)
            m = lib.lv_topk_g(native.ptr(d), n, k, native.ptr(hist), *chunks, native.ptr(out_idx), native.ptr(out_val),
                              int(idx_t == np.int32))
            prep[i] = (out_idx[:m], out_val[:m])
    return prep


def merge(base: Any, tickets: Sequence[Any], out_dir: str | os.PathLike, *, params: MergeParams | None = None,
          dtype: str | None = None, max_shard_size: int | str = "5GB", overwrite: bool = False,
          force: bool = False, verify_base: bool = False, threads: int | None = None,
          base_ref: dict[str, Any] | None = None, ticket_refs: Sequence[dict[str, Any]] | None = None,
          notes: Sequence[str] = (), fsync: bool = True, progress: Progress = None) -> MergeResult:
    """Merge tickets into a base model and write a Hugging Face model folder.

    Args:
        base: base model folder (single or sharded safetensors) — or anything
            :func:`lotavec.models.open_model` accepts.
        tickets: :class:`~lotavec.ticket.Ticket` objects or ticket paths/Hub ids.
        out_dir: output folder (created atomically; see ``overwrite``).
        params: :class:`~lotavec.merge.config.MergeParams` (default: ``sum`` with weight 1 each).
        dtype: output dtype (``bfloat16``/``float16``/``float32``); default the base's.
        max_shard_size: shard size of the output (``"5GB"`` style or bytes).
        overwrite: replace an existing ``out_dir``.
        force: merge even if base identity checks fail (reported in ``warnings``).
        verify_base: also compare full base digests (reads every touched tensor once more).
        threads: worker threads for decoding, merging and writing (default: one per core, plus
            one where the compiled kernels write their own output).
        base_ref, ticket_refs: Hub identities recorded in the model card and merge record.
        notes: remarks recorded in the merge record (e.g. ignored mergekit keys).
        fsync: flush the output to disk before it is renamed into place (default), so that a
            power loss cannot leave a complete-looking folder with missing data; write-back
            starts while the merge runs. ``False`` leaves that to the OS, like most tools
            (a killed process still never leaves a partial folder).
        progress: ``progress(stage, done, total)``.

    Returns:
        :class:`MergeResult`.

    Raises:
        OutputExistsError, BaseMismatchError, MergeConfigError, DisjointnessError, ModelError.
    """
    t0 = time.perf_counter()
    params = params or MergeParams()
    tks = [t if isinstance(t, Ticket) else load_ticket(t) for t in tickets]
    if not tks:
        raise MergeConfigError("give at least one ticket to merge")
    params.check_tickets(len(tks))
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise MergeConfigError(f"--dtype must be one of {', '.join(_DTYPE_NAMES)}, got {dtype!r}")
    src = open_model(base, role="base")
    try:
        # Base identity: presence, shapes and dtypes of every ticket tensor now (no data read); the
        # fingerprints of each touched tensor by the worker that merges it, right before it does,
        # while its pages are mapped for the merge anyway. A mismatch stops the merge and the
        # temporary output is removed, so a wrong base still leaves no output.
        checks = _BaseChecks(src, tks, full=verify_base, force=force)
        spec = get_method(params.method)
        global_trims = params.scope == "global" and spec.sparsify == "magnitude"
        stream_checks: _BaseChecks | None = checks
        if spec.name == "disjoint" or global_trims:
            checks.check_all()  # these read the tickets against the base: a wrong base is reported first
            stream_checks = None
        if spec.name == "disjoint":
            from .compare import check_disjoint_tickets

            check_disjoint_tickets(tks)
        trims = _global_trims(tks, src, params) if global_trims else None
        names = src.names()
        touched = {n for t in tks for n in t.names}
        out_dt = {n: (_DTYPE_NAMES[dtype] if dtype and src.info(n)[0] in TICKET_DTYPES else src.info(n)[0]) for n in names}
        plan = [(n, out_dt[n], src.info(n)[1]) for n in names]
        with atomic_output_dir(out_dir, overwrite=overwrite, fsync=fsync) as tmp:
            # One lock for every write, shared with the kernels that write their output themselves.
            io_lock = native.Mutex() if Sink.supported() else None
            writer = ShardedWriter(tmp, plan, max_shard_size=max_shard_size, flush_behind=fsync, io_lock=io_lock)
            changed = _stream(src, tks, names, touched, out_dt, params, trims, writer, threads, progress,
                              checks=stream_checks)
            warnings = checks.warnings()
            writer.close()
            record = _record(src, tks, params, dtype, base_ref, ticket_refs, notes, warnings, changed, names, touched)
            if src.path is not None:
                copy_model_files(src.path, tmp, exclude=("README.md",))
                if dtype is not None:
                    _set_config_dtype(Path(tmp) / "config.json", dtype)
            (Path(tmp) / "README.md").write_text(_card_text(record))
            (Path(tmp) / "lotavec_merge.json").write_text(json.dumps(record, indent=2, default=str))
            written = writer.total_size
        return MergeResult(os.fspath(out_dir), len(names), len(touched), changed, time.perf_counter() - t0,
                           written, record["params"], warnings)
    finally:
        src.close()


class _MergeJobs:
    """A whole merge as a job table for the compiled ``lv_run_jobs`` (see lotavec/_csrc/codec.c):
    one row per output tensor in file order, untouched tensors copied from the base mapping,
    touched ones merged from their tickets' compressed chunks (the exact ``sum``, or TIES of two
    tickets), on C threads.
    Results are checked here in file order, as the thread pool of :func:`_stream` would raise
    them: base fingerprints (sampled by the C threads before merging), kernel errors, and the
    tensors left to Python (a chunk the compiled decoders do not accept), which ``run_pool``
    merges with the Python codecs (typed errors)."""

    # columns of a row (LV_J_* in codec.c)
    KIND, BASE, N, WIDTH, BF16, FD, FOFF, T = range(8)
    TICKET0, TICKET1 = 8, 14  # blob, records, record count, nnz, raw flag, blob length
    NSAMPLE, SAMPLE, CHANGED, ERR, STATE, DONE_AT = 20, 21, 22, 23, 26, 27
    K, TIX, COLS = 28, 30, 32  # TIES: entries kept per ticket slot, the slot's ticket index

    def __init__(self, names, dtypes, rows, tickets, samples, checks, rule):
        self.names, self.dtypes, self.tickets = names, dtypes, tickets
        self.samples, self.checks = samples, checks  # samples: views of one buffer the C threads fill
        self.rule = np.array(rule, np.float64)
        self.table = np.array(rows, np.int64).reshape(len(rows), self.COLS)

    @classmethod
    def plan(cls, src: TensorSource, tks: list[Ticket], names: list[str], touched: set[str], out_dt: dict[str, str],
             params: MergeParams, trims, writer: ShardedWriter, checks: _BaseChecks | None) -> _MergeJobs | None:
        """The job table, or ``None`` when some tensor needs the Python paths (another method or
        output dtype, a source that is not memory-mapped, chunks the compiled decoders do not read,
        full base digests, or no libzstd.so.1)."""
        lib = native.kernels("codec")
        exact = _exact_sum(params, len(tks))
        ties = not exact and len(tks) == 2 and _trims_method(tks, params)  # each tensor's dtype: below
        if (lib is None or trims is not None or not (exact or ties) or not names
                or (checks is not None and checks.full)):
            return None
        rule = [0.0] * 7
        if ties:  # as _consensus_native passes them
            peft = params.semantics == "peft"
            w = np.array([params.weight_of(k) for k in range(2)], np.float32)
            rule = [float(w[0]), float(w[1]), int(peft), int(params.sign_method == "total"),
                    int(bool(params.resolved_normalize)) if not peft else 0, float(np.float32(params.lambda_)),
                    int(params.lambda_ != 1.0)]
        if not native.zstd_in_c():
            return None
        rows, tickets, samples = [], [], []
        want = {n for n in names if checks is not None and checks.wants_sample(n)}
        sample_buf = np.empty(sum(min(src.numel(n), SAMPLE_ELEMENTS) * storage_dtype(src.info(n)[0]).itemsize
                                  for n in want), np.uint8)
        sample_addr = native.ptr(sample_buf)
        at, dtypes = 0, []
        for n in names:
            dtype, _ = src.info(n)
            addr = src.address(n)
            if addr is None or out_dt[n] != dtype:
                return None
            width, numel = storage_dtype(dtype).itemsize, src.numel(n)
            dtypes.append(dtype)
            fd, off = writer.target(n)
            row = [0, addr, numel, width, int(dtype == "BF16"), fd, off, 0] + [0] * (cls.COLS - 8)
            live = None
            if n in touched:
                live = [(i, t) for i, t in enumerate(tks) if n in t]
                if (not exact and not _trims_from_gaps(dtype, tks, params)) or (exact and not _sum_dtype_ok(dtype, live)):
                    return None
                row[cls.KIND], row[cls.T] = (1 if exact else 2), len(live)
                for slot, (i, t) in enumerate(live):
                    got = t._file.chunk_rows(n) if t._file is not None else None
                    if got is None:
                        return None
                    rec_addr, nrec, blob_addr, blob_len = got
                    e = t._file.entry(n)
                    row[cls.TICKET0 + 6 * slot: cls.TICKET0 + 6 * slot + 6] = [
                        blob_addr, rec_addr, nrec, e.nnz, int(e.values == "raw"), blob_len]
                    row[cls.K + slot], row[cls.TIX + slot] = int(params.density_of(i) * numel), i
            sample = None
            if n in want:
                s = min(numel, SAMPLE_ELEMENTS)
                sample = sample_buf[at: at + s * width]
                row[cls.NSAMPLE], row[cls.SAMPLE] = s, sample_addr + at
                at += s * width
            rows.append(row)
            # the tickets kernel errors name: by slot (sum), by ticket index (TIES)
            tickets.append(([i for i, _ in live] if exact else [0, 1]) if live else [])
            samples.append(sample)
        return cls(names, dtypes, rows, tickets, samples, checks, rule)

    def run(self, threads: int | None, writer: ShardedWriter, progress: Progress, run_pool) -> int:
        """Run the table on ``threads`` C threads (default: see below); returns the changed
        entries. Raises as :func:`_stream`."""
        lib, table, names = native.kernels("codec"), self.table, self.names
        finished = np.zeros(len(names), bool)

        # By default one C thread per core and one more compute; a separate thread does every
        # write (no two threads contend for the file's lock in the kernel: waiters asleep on a
        # mutex leave a core idle, waiters spinning on the kernel's lock burn it).
        threads = min(64, max(1, threads or (os.cpu_count() or 1) + 1))

        def call() -> int:
            return lib.lv_run_jobs(native.ptr(table), len(names), threads, SafetensorsFile.RELEASE_BATCH,
                                   native.ptr(self.rule))

        def account() -> int:  # tensors done so far: the writer counts them (write-back starts)
            new = np.flatnonzero((table[:, self.STATE] == 1) & ~finished)
            for k in new[np.argsort(table[new, self.DONE_AT])]:
                writer.finish(names[k])
            finished[new] = True
            return int(finished.sum())

        if progress is None and not writer.flushes_behind:
            call()
        else:  # follow the C threads from here: progress, and the writer's write-back as it goes
            with ThreadPoolExecutor(1) as ex:
                fut = ex.submit(call)
                while True:
                    try:
                        fut.result(timeout=0.02)
                        break
                    except TimeoutError:
                        done = account()
                        if progress:
                            progress("merge", done, len(names))
        account()
        state = table[:, self.STATE]
        changed = int(table[state == 1, self.CHANGED].sum())
        first_bad, mismatch = None, None
        for k, n in enumerate(names):
            if state[k] and self.samples[k] is not None:  # sampled before merging: as the pool checks
                try:
                    self.checks.check_sample(n, sample_digest(self.samples[k]))
                except FingerprintMismatchError as e:
                    first_bad, mismatch = k, e
                    break
            if state[k] == 3:
                first_bad = k
                break
        stop = len(names) if first_bad is None else first_bad
        todo = [(names[k], bool(state[k] == 2)) for k in range(stop) if state[k] in (0, 2)]
        if todo:
            changed += run_pool(todo, int(finished.sum()))  # raises the first error among them
        if mismatch is not None:
            raise mismatch
        if first_bad is not None:
            err = table[first_bad, self.ERR: self.ERR + 3]
            _raise_kernel_error(names[first_bad], self.dtypes[first_bad], err, self.tickets[first_bad])
        if progress:
            progress("merge", len(names), len(names))
        return changed


def _stream(src: TensorSource, tks: list[Ticket], names: list[str], touched: set[str], out_dt: dict[str, str],
            params: MergeParams, trims, writer: ShardedWriter, threads: int | None, progress: Progress,
            checks: _BaseChecks | None = None) -> int:
    """Write every tensor, on a pool of worker threads, each tensor whole on one worker.

    Untouched tensors are written straight from the base's mapped pages; touched ones are
    decoded and merged, and the compiled kernels write each merged window of the output as soon
    as it is done, while it is in the CPU cache (:class:`Sink`); other paths write the merged
    array. Workers write positionally into the shards (:meth:`ShardedWriter.write_at`), so
    tensors finish in any order; base pages are released as soon as a tensor is written.
    ``checks.check(name, base_array)`` is called for every touched tensor before it is merged
    (the base-identity fingerprints; it raises on a mismatch).

    When every tensor is one the compiled kernels copy or merge whole (the exact ``sum``, or TIES
    of two tickets, from chunks they decode: :class:`_MergeJobs`), the whole merge runs on C
    threads instead, with no Python (and no GIL) per tensor.
    """
    check = checks.check if checks is not None else None
    sinks = Sink.supported()
    # Writers wait for each other asleep on the shared lock: one worker more than cores keeps
    # every core busy while one of them waits.
    workers = max(1, threads or (os.cpu_count() or 1) + int(sinks))
    buffers = _Buffers(keep=4 * workers + 2)  # output arrays; TIES: 3 scratch arrays per ticket
    local = threading.local()
    lock = writer.io_lock if isinstance(writer.io_lock, native.Mutex) else None  # shared with the kernels
    ctxs: list[int] = []  # the workers' decoding contexts (lv_ctx_new), freed when the pool is done
    ctx_lock = threading.Lock()

    def worker_ctx() -> int | None:
        """This worker's context for the compiled decoders, or ``None`` (no libzstd.so.1)."""
        c = getattr(local, "ctx", False)
        if c is False:
            c = local.ctx = native.kernels("codec").lv_ctx_new() or None
            if c is not None:
                with ctx_lock:
                    ctxs.append(c)
        return c

    def job(n: str, checked: bool = False) -> int:
        dtype = src.info(n)[0]
        try:
            if n not in touched:
                src.populate(n)  # outside the write lock: faulting pages in inside pwrite holds it longer
                arr = src.array(n)
                if out_dt[n] != dtype:
                    arr = from_float32(to_float32(arr, dtype), out_dt[n])
                writer.write_at(n, arr)
                return 0
            # the kernels that read gap-coded masks write the output themselves, in the base dtype
            gapped = sinks and out_dt[n] == dtype
            ctx = worker_ctx() if gapped else None
            plan = _coded_plan(n, dtype, tks, params) if ctx else None
            coded = _gap_parts(n, dtype, tks, params) if gapped and plan is None else None
            tcoded = None
            if gapped and plan is None and coded is None:
                tcoded = (_coded_trim_parts(native.kernels("codec"), ctx, n, dtype, tks, params) if ctx else None) \
                    or _trim_gap_parts(n, dtype, tks, params)
            parts = None
            if plan is None and coded is None and tcoded is None:
                # one decoding thread per tensor: the pool already works on several tensors at once
                parts = [t.tensor(n, threads=1) if n in t else None for t in tks]
            base_arr = src.array(n)
            src.populate(n)
            if check is not None and not checked:
                check(n, base_arr)
            sink = None
            if sinks:
                if not hasattr(local, "window"):
                    local.window = np.empty(native.WINDOW * 4, np.uint8)
                sink = Sink(*writer.target(n), local.window, lock)
            if plan is not None:
                c = _coded_sum(native.kernels("codec"), ctx, n, base_arr.reshape(-1), dtype, plan, sink)
                if c is not None:
                    writer.finish(n)
                    return c
                coded = _gap_parts(n, dtype, tks, params)  # decoded by the Python codecs (typed errors)
            if coded is not None:
                c = _gapped_sum(native.kernels("codec"), n, base_arr.reshape(-1), dtype, coded, sink)
                writer.finish(n)
                return c
            if tcoded is not None:
                lib, flat, used = native.kernels("codec"), base_arr.reshape(-1), []
                try:
                    prep = _gapped_trims(lib, n, flat, dtype, tcoded, len(tks), params, buffers, used)
                    _, c = _consensus_native(lib, n, flat, dtype, prep, params, buffers, sink)
                finally:
                    for b in used:
                        buffers.give(b)
                writer.finish(n)
                return c
            arr, c = merge_tensor_values(n, base_arr, dtype, out_dt[n], parts, params, trims, buffers, sink)
            if arr is None:
                writer.finish(n)
            else:
                writer.write_at(n, arr)
                buffers.give(arr)
            return c
        finally:
            src.release(n)

    def run_pool(todo: list[tuple[str, bool]], done: int = 0) -> int:
        """``job`` for every ``(name, checked)`` on the thread pool; errors in ``todo``'s order."""
        changed = 0
        with ThreadPoolExecutor(workers) as ex:
            futures = [ex.submit(job, n, c) for n, c in todo]  # file order: the base is read front to back
            try:
                for fut in futures:
                    changed += fut.result()
                    done += 1
                    if progress:
                        progress("merge", done, len(names))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return changed

    try:
        jobs = _MergeJobs.plan(src, tks, names, touched, out_dt, params, trims, writer, checks) if sinks else None
        if jobs is not None:
            return jobs.run(threads, writer, progress, run_pool)
        return run_pool([(n, False) for n in names])
    finally:
        lib = native.kernels("codec")
        for c in ctxs:
            lib.lv_ctx_free(c)


def _set_config_dtype(path: Path, dtype: str) -> None:
    """Record the output dtype in config.json so transformers loads it as written."""
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    for key in ("torch_dtype", "dtype"):
        if key in cfg or key == "dtype":
            cfg[key] = dtype
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _record(src, tks, params, dtype, base_ref, ticket_refs, notes, warnings, changed, names, touched) -> dict:
    refs = list(ticket_refs or [{} for _ in tks])
    return {
        "lotavec_version": __version__,
        "base": {"path": str(src.path) if src.path else None, **(base_ref or {})},
        "tickets": [{"path": t.path, "nnz": t.nnz, "base": t.base, **{k: v for k, v in r.items() if v is not None}}
                    for t, r in zip(tks, refs)],
        "params": params.to_json(),
        "dtype": dtype,
        "notes": list(notes),
        "warnings": list(warnings),
        "tensors": len(names),
        "touched_tensors": len(touched),
        "changed_entries": changed,
    }


def _card_text(record: dict) -> str:
    """The merged folder's README.md (model card) for a merge record."""
    from ..card import merged_card

    base = {k: v for k, v in record["base"].items() if v is not None}
    tickets = [{k: v for k, v in t.items() if k in ("repo_id", "revision_sha", "path") and v is not None}
               for t in record["tickets"]]
    weights = record["params"].get("weights")
    for i, t in enumerate(tickets):
        if weights:
            t["weight"] = weights[i]
    try:
        return merged_card(base, tickets, record["params"]["method"], record["params"])
    except (TypeError, KeyError, ValueError) as e:  # keep merges working if the card API changes
        raise ModelError(f"could not build the model card: {e}") from e
