"""Merge kernels on sparse per-tensor deltas (numpy, sparse-native).

Each ticket contributes, per tensor, a :class:`SparseDelta`: sorted flat indices and the float32
delta τ = θ_ft − θ_base there. Entries outside a ticket's support are zeros of its dense τ: they
count in a trim's k = ⌊p·numel⌋, never vote in a sign election and are never kept by DARE.
:func:`merge_tensor` combines the tickets on the union of their supports only; the cost is
O(N log n) for N stored entries of n tickets, never O(numel). :func:`iter_merge_tensor` yields
the same result in index-range pieces, bounding memory on large tensors.

Methods, formulas and peers are declared in :mod:`lotavec.merge.registry`; the conventions of
each peer are in ``MERGE_SEMANTICS.md``. Deterministic choices of lotavec's own:

* Trim ties: among entries of equal |τ| at the threshold, lower flat indices are kept first
  (PEFT's ``torch.topk`` leaves that order unspecified).
* DARE masks come from :func:`dare_keep_mask`, a pure function of (seed, ticket, tensor name),
  so results do not depend on processing order or threads.
* Exact zeros are dropped from the output: it lists exactly the entries the merge changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import native
from ..errors import CorruptTicketError, DisjointnessError, MergeConfigError, TensorMismatchError
from .config import MergeParams
from .registry import MethodSpec, get_method

#: (ticket_idx, tensor_name, nnz, p) -> boolean keep mask over the ticket's stored entries.
KeepMaskFn = Callable[[int, str, int, float], np.ndarray]


@dataclass(frozen=True)
class SparseDelta:
    """One ticket's delta on one tensor: values at sorted flat indices of a ``numel`` tensor.

    Attributes:
        indices: int64 flat (C-order) indices, strictly increasing, in [0, numel).
        values: float32 deltas at those indices (other dtypes are converted).
        numel: number of entries of the dense tensor.

    Raises:
        CorruptTicketError: indices not 1-D int, unsorted, duplicated or out of range, or
            lengths differ.
    """

    indices: np.ndarray
    values: np.ndarray
    numel: int

    def __post_init__(self) -> None:
        idx, val = np.asarray(self.indices), np.asarray(self.values)
        if idx.ndim != 1 or val.ndim != 1 or idx.shape != val.shape:
            raise CorruptTicketError(f"SparseDelta: indices {idx.shape} and values {val.shape} "
                                     f"must be 1-D of equal length")
        if idx.dtype != np.int64:
            if idx.size and idx.dtype.kind not in "iu":
                raise CorruptTicketError(f"SparseDelta: indices must be integers, got {idx.dtype}")
            idx = idx.astype(np.int64)
        if val.dtype != np.float32:
            val = val.astype(np.float32)
        numel = int(self.numel)
        if idx.size and (idx[0] < 0 or idx[-1] >= numel or np.any(idx[1:] <= idx[:-1])):
            raise CorruptTicketError(
                f"SparseDelta: indices must be strictly increasing in [0, {numel}); found "
                f"first={idx[0]}, last={idx[-1]}")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "values", val)
        object.__setattr__(self, "numel", numel)

    @classmethod
    def _trusted(cls, indices: np.ndarray, values: np.ndarray, numel: int) -> SparseDelta:
        # Kernel outputs are valid by construction: skip the O(nnz) checks.
        out = object.__new__(cls)
        for key, value in (("indices", indices), ("values", values), ("numel", int(numel))):
            object.__setattr__(out, key, value)
        return out

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.indices.size)

    @classmethod
    def empty(cls, numel: int) -> SparseDelta:
        """A delta with no stored entry."""
        return cls(np.empty(0, np.int64), np.empty(0, np.float32), numel)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> SparseDelta:
        """The nonzero entries of a dense array (flattened in C order)."""
        flat = np.ascontiguousarray(dense, dtype=np.float32).reshape(-1)
        idx = np.flatnonzero(flat)
        return cls(idx, flat[idx], flat.size)

    def to_dense(self, shape: Sequence[int] | None = None) -> np.ndarray:
        """The dense float32 delta (zeros off the support), optionally reshaped."""
        out = np.zeros(self.numel, np.float32)
        out[self.indices] = self.values
        return out if shape is None else out.reshape(shape)


# --- deterministic pieces ------------------------------------------------------------------


def dare_keep_mask(seed: int, ticket: int | str, tensor_name: str, nnz: int, p: float
                   ) -> np.ndarray:
    """DARE's Bernoulli(p) keep mask over a ticket's ``nnz`` stored entries (lotavec-dare-v1).

    The key of a Philox-4x64 counter generator is the first 128 bits of BLAKE2b over
    ``"lotavec-dare-v1\\0{seed}\\0{ticket}\\0{tensor_name}"``; entry j (in stored order) is kept
    iff ``(raw_j >> 11) < ⌊p·2⁵³⌋`` where raw_j is the generator's j-th 64-bit output. The mask
    depends on nothing else, so merges are reproducible from the seed whatever the order in
    which tensors or tickets are processed. Dropped zeros of the dense τ stay zero, so only the
    support is drawn.

    Args:
        seed: the merge's DARE seed (recorded in the output).
        ticket: the ticket's position in the merge (or a stable ticket id).
        tensor_name: the tensor's name in the base model.
        nnz: number of stored entries of the ticket in this tensor.
        p: keep probability in (0, 1].

    Returns:
        Boolean array of length ``nnz``.
    """
    if p >= 1.0:
        return np.ones(nnz, bool)
    text = f"lotavec-dare-v1\0{seed}\0{ticket}\0{tensor_name}".encode()
    key = int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "little")
    raw = np.random.Philox(key=key).random_raw(nnz)
    return (raw >> np.uint64(11)) < np.uint64(int(p * 2.0**53))


def trim_keep(values: np.ndarray, k: int) -> np.ndarray:
    """Positions (sorted) of the ``k`` largest |values|; among ties the lower positions first.

    Args:
        values: a ticket's stored values, in flat-index order.
        k: how many to keep (all when k ≥ len(values)).

    Returns:
        int64 positions into ``values``, increasing.
    """
    n = values.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.empty(0, np.int64)
    lib = native.kernels("codec")
    if lib is not None and values.dtype == np.float32:
        v = np.ascontiguousarray(values)
        out = np.empty(k, np.int64)
        hist = np.empty(1 << 16, np.uint32)
        m = lib.lv_topk_abs(native.ptr(v), n, k, native.ptr(out), native.ptr(hist), None, None, None)
        return out[:m]
    mag = np.abs(values)
    threshold = np.partition(mag, n - k)[n - k]
    keep = mag > threshold
    need = k - int(np.count_nonzero(keep))
    if need > 0:
        keep[np.flatnonzero(mag == threshold)[:need]] = True
    return np.flatnonzero(keep)


def _trimmed(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A ticket's entries kept by :func:`trim_keep` (indices and values), gathered by the
    compiled selection itself when available."""
    n = val.size
    lib = native.kernels("codec")
    if lib is not None and 0 < k < n and val.dtype == np.float32:
        v = np.ascontiguousarray(val)
        ix = np.ascontiguousarray(idx, dtype=np.int64)
        pos, out_idx, out_val = np.empty(k, np.int64), np.empty(k, np.int64), np.empty(k, np.float32)
        hist = np.empty(1 << 16, np.uint32)
        m = lib.lv_topk_abs(native.ptr(v), n, k, native.ptr(pos), native.ptr(hist), native.ptr(ix),
                            native.ptr(out_idx), native.ptr(out_val))
        return out_idx[:m], out_val[:m]
    sel = trim_keep(val, k)
    return (idx[sel], val[sel]) if sel.size < idx.size else (idx, val)


def union_positions(index_arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Union of sorted index arrays and where each array's entries sit in it.

    Returns:
        ``(union, positions)``: the sorted union and, per input, positions into it (int32
        when the inputs hold fewer than 2³¹ entries, else int64).
    """
    nonempty = [a for a in index_arrays if a.size]
    if len(nonempty) <= 1:
        union = nonempty[0] if nonempty else np.empty(0, np.int64)
        return union, [np.arange(a.size, dtype=np.int64) if a.size else a.astype(np.int64)
                       for a in index_arrays]
    bits = max(1, (len(index_arrays) - 1).bit_length())
    if max(int(a[-1]) for a in nonempty) >= 1 << (62 - bits):  # keys would overflow
        cat = np.sort(np.concatenate(nonempty), kind="stable")
        fresh = _fresh(cat)
        union = cat[fresh]
        return union, [np.searchsorted(union, a) for a in index_arrays]
    # Key = index << bits | owner keeps every array a sorted run, and stable sort is timsort
    # for int64: one near-linear merge gives the union and, through a running count of new
    # indices, every entry's position in it. Buffers are filled in place to bound memory
    # (about 22 bytes per stored entry at the peak).
    keys = np.empty(sum(a.size for a in index_arrays), np.int64)
    start = 0
    for i, a in enumerate(index_arrays):
        part = keys[start:start + a.size]
        np.left_shift(a, bits, out=part)
        part |= i
        start += a.size
    keys.sort(kind="stable")
    owner = np.empty(keys.size, np.uint8)
    np.bitwise_and(keys, (1 << bits) - 1, out=owner, casting="unsafe")
    keys >>= bits
    fresh = _fresh(keys)
    slot = np.cumsum(fresh, dtype=np.int32 if keys.size < 2**31 else np.int64)
    slot -= 1
    union = keys[fresh]
    del keys, fresh
    return union, [np.compress(owner == i, slot) if a.size else np.empty(0, slot.dtype)
                   for i, a in enumerate(index_arrays)]


def _fresh(sorted_keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value in a sorted array."""
    fresh = np.empty(sorted_keys.size, bool)
    fresh[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=fresh[1:])
    return fresh


def overlap_counts(index_arrays: Sequence[np.ndarray]) -> dict[tuple[int, int], int]:
    """Pairwise intersection sizes of sorted index arrays (only pairs that intersect)."""
    out = {}
    for i, a in enumerate(index_arrays):
        for j in range(i + 1, len(index_arrays)):
            b = index_arrays[j]
            if a.size and b.size:
                n = int(np.count_nonzero(_members(a, b)))
                if n:
                    out[(i, j)] = n
    return out


def _members(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask over ``a``: which entries are also in sorted ``b``."""
    loc = np.searchsorted(b, a)
    loc[loc == b.size] = 0
    return b[loc] == a


# --- per-ticket preprocessing ----------------------------------------------------------------


def _sparsify(name: str, parts: list[SparseDelta], params: MergeParams, spec: MethodSpec,
              trims: Mapping[int, np.ndarray] | None, keep_for: KeepMaskFn
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tᵢ (trim) or Dᵢ (DARE) of every ticket, as (indices, float32 values)."""
    out = []
    for i, part in enumerate(parts):
        idx, val, p = part.indices, part.values, params.density_of(i)
        if spec.sparsify == "magnitude" and params.scope == "global":
            sel = _global_kept(name, i, part, trims)
            idx, val = idx[sel], val[sel]
        elif spec.sparsify == "magnitude" and p < 1.0:
            idx, val = _trimmed(idx, val, int(p * part.numel))
        elif spec.sparsify == "random" and p < 1.0:
            keep = np.asarray(keep_for(i, name, idx.size, p), dtype=bool)
            if keep.shape != idx.shape:
                raise MergeConfigError(f"DARE mask for ticket #{i + 1}, tensor {name!r}: "
                                       f"expected {idx.size} entries, got {keep.shape}")
            idx, val = idx[keep], _rescale(val, keep, p, params.resolved_rescale)
        out.append((idx, val))
    return out


def _global_kept(name: str, i: int, part: SparseDelta,
                 trims: Mapping[int, np.ndarray] | None) -> np.ndarray:
    """Positions of the globally kept indices of ticket ``i`` within its stored entries."""
    if trims is None:
        raise MergeConfigError(
            f"--scope global: no global trims given for tensor {name!r}; the engine must pass "
            f"trims={{ticket: kept flat indices}} (a ticket left out keeps nothing here)")
    kept = np.asarray(trims.get(i, ()), dtype=np.int64)
    if kept.size > 1 and np.any(kept[1:] <= kept[:-1]):
        kept = np.unique(kept)
    if not kept.size:
        return np.empty(0, np.int64)
    hit = _members(kept, part.indices)
    if not hit.all():
        raise CorruptTicketError(
            f"--scope global: {int((~hit).sum())} kept indices of ticket #{i + 1} in tensor "
            f"{name!r} are not stored by the ticket (first: {int(kept[~hit][0])})")
    return np.searchsorted(part.indices, kept)


def _rescale(val: np.ndarray, keep: np.ndarray, p: float, how: str) -> np.ndarray:
    kept = val[keep]
    if how == "inverse_p":  # PEFT, and mergekit before Feb 2025
        return kept / np.float32(p)
    if how == "l1":  # mergekit: match ‖τ‖₁, unless a norm is below 1e-7
        before = float(np.abs(val, dtype=np.float64).sum())
        after = float(np.abs(kept, dtype=np.float64).sum())
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * np.float32(before / after)
    return kept


# --- kernels ---------------------------------------------------------------------------------


def _linear(prep, weights: Sequence[float], divisor: float) -> tuple[np.ndarray, np.ndarray]:
    """Σᵢ wᵢ·xᵢ on the union, divided by a scalar (1 unless mergekit's normalize)."""
    live = [i for i, (idx, _) in enumerate(prep) if idx.size]
    if not live:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if len(live) == 1:  # one contributor: no union to build
        idx, val = prep[live[0]]
        w = weights[live[0]]
        val = val if w == 1.0 else val * np.float32(w)
        return idx, (val if divisor == 1.0 else val / np.float32(divisor))
    if max(int(prep[i][0][-1]) for i in live) < 1 << 32:
        union, acc = _packed_sum([prep[i] for i in live], [weights[i] for i in live])
    else:
        union, pos = union_positions([idx for idx, _ in prep])
        acc = np.zeros(union.size, np.float32)
        for i in live:
            acc[pos[i]] += prep[i][1] * np.float32(weights[i])
    if divisor != 1.0:
        acc /= np.float32(divisor)
    return union, acc


def _packed_sum(terms: list[tuple[np.ndarray, np.ndarray]], weights: list[float]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Σᵢ wᵢ·xᵢ of sparse terms with indices < 2³², by sorting (index << 32 | value bits).

    Each term stays a sorted run, so the stable sort (timsort) is a near-linear merge; the
    weighted values travel inside the keys and are summed per index with ``reduceat`` — no
    positions, no scatter, about 14 bytes per entry at the peak. Terms meeting at an index
    are added in the order of their bit patterns, so the result does not depend on the order
    of the tickets.
    """
    shift = np.uint64(32)
    keys = np.empty(sum(idx.size for idx, _ in terms), np.uint64)
    start = 0
    for (idx, val), w in zip(terms, weights):
        part = keys[start:start + idx.size]
        np.left_shift(idx.view(np.uint64), shift, out=part)
        part |= (val if w == 1.0 else val * np.float32(w)).view(np.uint32)
        start += idx.size
    keys.sort(kind="stable")
    vals = keys.astype(np.uint32).view(np.float32)  # the cast keeps the low 32 bits
    keys >>= shift
    starts = np.flatnonzero(_fresh(keys))
    union = keys[starts].view(np.int64)
    del keys
    return union, np.add.reduceat(vals, starts)


def _mean(prep, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Σᵢ wᵢ·τᵢ / Σ_{i stores the entry} wᵢ per entry (|divisor| < 1e-8 → 1)."""
    union, pos = union_positions([idx for idx, _ in prep])
    acc = np.zeros(union.size, np.float32)
    wsum = np.zeros(union.size, np.float32)
    for i, (_, val) in enumerate(prep):
        acc[pos[i]] += val * np.float32(weights[i])
        wsum[pos[i]] += np.float32(weights[i])
    wsum[np.abs(wsum) < 1e-8] = 1.0
    return union, acc / wsum


def elect(prep, weights: Sequence[float], params: MergeParams
          ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """TIES sign election on the union of the (trimmed / DARE'd) tickets.

    PEFT elects on the unweighted xᵢ, mergekit on wᵢ·xᵢ; ``total`` sums the values,
    ``frequency`` their signs; s = +1 where the sum is ≥ 0, else −1; zeros never match s.

    Args:
        prep: per ticket (indices, values) after trim or DARE.
        weights: wᵢ per ticket.
        params: for ``semantics`` and ``sign_method``.

    Returns:
        ``(union, positions, matches)``: the union of indices, each ticket's positions in it
        and each ticket's boolean mask Mᵢ over its entries.
    """
    union, pos = union_positions([idx for idx, _ in prep])
    mergekit = params.semantics == "mergekit"
    votes = np.zeros(union.size, np.float32)
    signs = []
    for i, (_, val) in enumerate(prep):
        voter = val * np.float32(weights[i]) if mergekit else val
        sign = np.sign(voter)
        signs.append(sign)
        votes[pos[i]] += voter if params.sign_method == "total" else sign
    positive = votes >= 0
    matches = [np.where(positive[pos[i]], sign > 0, sign < 0) for i, sign in enumerate(signs)]
    return union, pos, matches


def _consensus(prep, weights: Sequence[float], params: MergeParams
               ) -> tuple[np.ndarray, np.ndarray]:
    """Elect, then the disjoint mean: PEFT divides by the count, mergekit by Σ wᵢMᵢ."""
    union, pos, matches = elect(prep, weights, params)
    mixed = np.zeros(union.size, np.float32)
    div = np.zeros(union.size, np.float32)
    for i, (_, val) in enumerate(prep):
        m = matches[i]
        at = pos[i][m]
        mixed[at] += val[m] * np.float32(weights[i])
        div[at] += 1.0 if params.semantics == "peft" else np.float32(weights[i])
    if params.semantics == "peft":
        return union, mixed / np.maximum(div, np.float32(1.0))
    if params.resolved_normalize:
        div[div == 0] = 1.0
        mixed /= div
    return union, mixed


def _check_parts(name: str, parts: Sequence[SparseDelta | None]) -> list[SparseDelta]:
    numels = {p.numel for p in parts if p is not None}
    if len(numels) > 1:
        raise TensorMismatchError(
            f"tensor {name!r}: tickets disagree on its number of entries "
            f"({', '.join(str(p.numel if p is not None else '-') for p in parts)}); the tickets "
            f"were made for different base models")
    if not numels:
        raise MergeConfigError(f"tensor {name!r}: no ticket part given (all None); pass an "
                               f"empty SparseDelta to state its size")
    numel = numels.pop()
    return [p if p is not None else SparseDelta.empty(numel) for p in parts]


def _refuse_overlaps(name: str, parts: list[SparseDelta]) -> None:
    found = overlap_counts([p.indices for p in parts])
    if found:
        pairs = "; ".join(f"tickets #{i + 1} and #{j + 1} share {n} entries"
                          for (i, j), n in sorted(found.items()))
        err = DisjointnessError(
            f"--method disjoint: tensor {name!r}: {pairs}. Run `lotavec overlap` for the full "
            f"report, or choose --method sum, mean or ties to combine overlapping tickets.")
        err.overlaps = {name: found}  # type: ignore[attr-defined]
        raise err


def _seeded_masks(seed: int | None) -> KeepMaskFn:
    def keep(ticket: int, tensor_name: str, nnz: int, p: float) -> np.ndarray:
        if seed is None:
            raise MergeConfigError("--seed: DARE needs a seed (MergeParams draws one for DARE "
                                   "methods; pass rng_for to supply masks yourself)")
        return dare_keep_mask(seed, ticket, tensor_name, nnz, p)

    return keep


def prepare_parts(name: str, parts: Sequence[SparseDelta | None], params: MergeParams, *,
                  trims: Mapping[int, np.ndarray] | None = None,
                  rng_for: KeepMaskFn | None = None
                  ) -> tuple[list[SparseDelta], list[tuple[np.ndarray, np.ndarray]]]:
    """Validate one tensor's parts and apply each ticket's trim or DARE (the per-ticket step).

    Args:
        name, parts, params, trims, rng_for: as for :func:`merge_tensor`.

    Returns:
        ``(full, prepared)``: the parts with ``None`` replaced by empty deltas, and per ticket
        (indices, float32 values) after its trim (Tᵢ) or DARE (Dᵢ), or as stored.

    Raises:
        As :func:`merge_tensor`.
    """
    spec = get_method(params.method)
    params.check_tickets(len(parts))
    full = _check_parts(name, parts)
    if spec.name == "disjoint":
        _refuse_overlaps(name, full)
    rng_for = rng_for or _seeded_masks(params.seed)
    return full, _sparsify(name, full, params, spec, trims, rng_for)


def _combine(prep, params: MergeParams, numel: int) -> SparseDelta:
    """The method's cross-ticket step on prepared parts; entries are independent of each other,
    so any index range can be combined on its own."""
    spec = get_method(params.method)
    weights = [params.weight_of(i) for i in range(len(prep))]
    if spec.name == "mean":
        idx, val = _mean(prep, weights)
    elif spec.consensus:
        idx, val = _consensus(prep, weights, params)
    else:
        divisor = 1.0
        if params.resolved_normalize:
            divisor = float(np.float32(sum(weights)))
            divisor = 1.0 if abs(divisor) < 1e-8 else divisor
        idx, val = _linear(prep, weights, divisor)
    if params.lambda_ != 1.0:
        val = val * np.float32(params.lambda_)
    nonzero = val != 0
    if not nonzero.all():
        idx, val = idx[nonzero], val[nonzero]
    return SparseDelta._trusted(idx, val.astype(np.float32, copy=False), numel)


def iter_merge_tensor(name: str, parts: Sequence[SparseDelta | None], params: MergeParams, *,
                      trims: Mapping[int, np.ndarray] | None = None,
                      rng_for: KeepMaskFn | None = None,
                      chunk_entries: int = 1 << 20) -> Iterator[SparseDelta]:
    """:func:`merge_tensor` in pieces, to bound memory on large tensors.

    Trims, DARE masks and rescales are computed over the whole tensor first; the cross-ticket
    step then runs on consecutive flat-index ranges holding about ``chunk_entries`` prepared
    entries each. The pieces (each a SparseDelta with the tensor's ``numel``) cover increasing,
    disjoint index ranges; concatenated they equal :func:`merge_tensor`'s result exactly.

    Args:
        name, parts, params, trims, rng_for: as for :func:`merge_tensor`.
        chunk_entries: target number of prepared entries (all tickets together) per piece.

    Yields:
        SparseDelta pieces in index order (possibly empty ones).

    Raises:
        As :func:`merge_tensor`, before the first piece.
    """
    full, prep = prepare_parts(name, parts, params, trims=trims, rng_for=rng_for)
    numel = full[0].numel
    total = sum(idx.size for idx, _ in prep)
    if total <= chunk_entries:
        yield _combine(prep, params, numel)
        return
    largest = max(prep, key=lambda pv: pv[0].size)[0]
    step = max(1, chunk_entries * largest.size // total)
    bounds = [0, *largest[step::step].tolist(), numel]
    cuts = [np.searchsorted(idx, bounds) for idx, _ in prep]
    for k in range(len(bounds) - 1):
        piece = [(idx[c[k]:c[k + 1]], val[c[k]:c[k + 1]]) for (idx, val), c in zip(prep, cuts)]
        yield _combine(piece, params, numel)


def merge_tensor(name: str, parts: Sequence[SparseDelta | None], params: MergeParams, *,
                 trims: Mapping[int, np.ndarray] | None = None,
                 rng_for: KeepMaskFn | None = None) -> SparseDelta:
    """Merge the tickets' deltas on one tensor with ``params.method``.

    The formula of each method, and the peer it matches under ``params.semantics``, is in
    :data:`lotavec.merge.registry.METHODS`; all methods end with the factor λ. Works on the
    union of the supports only and returns the merged delta without its exact zeros. Memory:
    about 20–30 bytes per stored entry of all tickets, on top of the inputs; use
    :func:`iter_merge_tensor` to bound it on large tensors.

    Args:
        name: the tensor's name (for messages and DARE keys).
        parts: one entry per ticket, in merge order; ``None`` for a ticket that does not touch
            this tensor (at least one entry must be a SparseDelta, to give ``numel``).
        params: the merge parameters.
        trims: for ``scope="global"`` with a trimming method (``ties``, ``magnitude_prune``):
            ticket position → flat indices that ticket keeps in this tensor under its global
            top-k (computed by the engine over all its tensors); a ticket left out keeps
            nothing in this tensor. Required then, ignored otherwise.
        rng_for: source of DARE keep masks, ``(ticket, name, nnz, p) -> bool[nnz]``; default
            :func:`dare_keep_mask` with ``params.seed``.

    Returns:
        The merged delta (float32 values, sorted indices, same ``numel``).

    Raises:
        DisjointnessError: ``method="disjoint"`` and two tickets share entries (the message
            and the ``overlaps`` attribute give the tensor, the pairs and the counts).
        TensorMismatchError: the parts disagree on ``numel``.
        MergeConfigError: wrong number of tickets for the weights/densities, or missing trims.
    """
    full, prep = prepare_parts(name, parts, params, trims=trims, rng_for=rng_for)
    return _combine(prep, params, full[0].numel)
