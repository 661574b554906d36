"""Exact, streaming, deterministic top-k mask selection.

A *candidate* is a tensor whose entries may enter a ticket; its *scores* are the float32
magnitudes ``|fine-tuned - base|`` in flat C order, recomputed by a callable each time they are
needed — whole (``scores()``) or by flat range (``score_range(start, stop)``, preferred: then
not even one tensor's scores are held at once).

Definitions (the spec repeats them):

* **Eligible entries** are all entries of all candidates minus the ``exclude`` indices (the
  entries of earlier tickets: LoTTO, ``--disjoint-from``). Excluded entries are never selected.
* **Density and k.** ``density`` is relative to *all* candidate parameters, excluded ones
  included, as LoTA defines it: ``k = floor(density x total + 1/2)`` (round half up), where the
  density is taken as the decimal number Python prints for it (``0.1`` is exactly 1/10), so
  ``--density 0.1`` and ``--sparsity 0.9`` give the same k. k is then clamped to the number of
  eligible entries: asking for more than are eligible selects all eligible entries.
* **Global scope** (default, as LoTA): exactly k entries with the largest scores across all
  candidates, i.e. one threshold for every tensor, so densities differ between tensors.
* **Tensor scope**: each tensor independently keeps ``k_t = floor(density x numel_t + 1/2)``
  entries (clamped to its eligible count); the total may differ from the global k by rounding.
  Tensor scope takes a density (or sparsity), not k: a k has no unambiguous split.
* **Tie rule**: entries whose score equals the threshold score are taken in
  (candidate order, flat index) order until exactly k are selected. Entries scoring above the
  threshold are all selected. The result is therefore exact and reproducible.
* Scores must be finite and non-negative (``-0.0`` counts as ``0``); NaN or inf raises
  :class:`~lotavec.errors.SelectionError` naming the tensor. Zero scores are eligible: when k
  exceeds the number of changed entries, unchanged entries fill the rest by the tie rule.
* Density 0 selects nothing (every candidate maps to an empty array); density 1 selects every
  eligible entry. Scores are still computed once to validate them.

Passes and memory: a radix select on the float32 bit patterns (``_radix``). ``select_topk``
computes the scores once when the entries above the running threshold fit ``max_retained_bytes``
(default ``8 x (k + largest numel) + 32 MiB``: about the size of the result), else twice, or three
times when the boundary histogram bin is itself too full. Peak memory beyond the inputs and the
returned selection (8 bytes per selected entry) is one tensor's scores as ``scores()`` returns
them (nothing with ``score_range``), the retained entries in excess of the result, and chunk
temporaries (~16 MB): within
``3 x largest candidate in float32 + 64 MiB``. ``iter_topk`` yields tensor by tensor and retains
nothing, so for a consumer that drops each tensor's indices the bound holds with the result
included, at the price of two or three passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

import numpy as np

from ..errors import SelectionError
from . import _engine, _native, _radix
from ._radix import Progress

_SCOPES = ("global", "tensor")


@dataclass(frozen=True, eq=False)
class Candidate:
    """One tensor eligible for selection.

    Args:
        name: tensor name (unique among the candidates).
        numel: number of entries.
        scores: returns the float32 scores ``|delta|`` (non-negative, length ``numel``, C order).
            It may be called several times and must return the same values each time.
        exclude: sorted, unique int64 flat indices that may not be selected, or ``None``.
        score_range: optional ``score_range(start, stop)`` returning the scores of flat entries
            ``[start, stop)`` only. When given it is used instead of ``scores`` (which may then be
            ``None``): scores are computed chunk by chunk (~0.5 M entries), so a tensor's scores
            are never all in memory and stay in cache while selected — faster and leaner.
        pair: optional ``pair()`` returning ``(base, fine-tuned, dtype)``: the two flat storage
            arrays (BF16/F16 as ``uint16`` bits, F32 as ``float32``/``uint32``) whose scores are
            ``|f32(fine-tuned) - f32(base)|``, and the dtype name (``"BF16"``, ``"F16"``,
            ``"F32"``). When every candidate has one and the compiled kernels are built, selection
            runs on them (two threads, no score arrays); the result is identical. ``scores`` or
            ``score_range`` must still be given, and return exactly these scores (they are the
            fallback, and they produce the errors).
        release: optional callable run after each pass has read ``pair()``'s arrays (e.g. to drop
            their memory pages).

    Raises:
        SelectionError: negative numel, no score callable, or ``exclude`` not
            sorted/unique/in range.
    """

    name: str
    numel: int
    scores: Callable[[], np.ndarray] | None = None
    exclude: np.ndarray | None = None
    score_range: Callable[[int, int], np.ndarray] | None = None
    pair: Callable[[], tuple[np.ndarray, np.ndarray, str]] | None = None
    release: Callable[[], None] | None = None

    def __post_init__(self):
        if (
            isinstance(self.numel, bool)
            or not isinstance(self.numel, (int, np.integer))
            or self.numel < 0
        ):
            raise SelectionError(
                f"tensor {self.name!r}: numel must be an integer >= 0, got {self.numel!r}"
            )
        object.__setattr__(self, "numel", int(self.numel))
        if not callable(self.scores) and not callable(self.score_range):
            raise SelectionError(f"tensor {self.name!r}: give a scores or score_range callable")
        if self.exclude is not None:
            ex = np.asarray(self.exclude)
            if ex.ndim != 1 or (ex.size and ex.dtype.kind not in "iu"):
                raise SelectionError(f"tensor {self.name!r}: exclude must be a 1-D integer array")
            ex = ex.astype(np.int64, copy=False)
            if ex.size and (ex[0] < 0 or ex[-1] >= self.numel or np.any(ex[1:] <= ex[:-1])):
                raise SelectionError(
                    f"tensor {self.name!r}: exclude must hold strictly increasing flat indices "
                    f"in [0, {self.numel}); sort and deduplicate them (np.unique)"
                )
            object.__setattr__(self, "exclude", ex if ex.size else None)

    @property
    def eligible(self) -> int:
        """Entries that may be selected (numel minus excluded)."""
        return self.numel - (0 if self.exclude is None else self.exclude.size)


def _exact(x: float, flag: str) -> Fraction:
    """The decimal value ``x`` prints as, checked to lie in [0, 1]."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        raise SelectionError(f"{flag} must be a number in [0, 1], got {x!r}")
    if not np.isfinite(x) or not 0 <= x <= 1:
        raise SelectionError(f"{flag} must be in [0, 1], got {x!r}")
    return Fraction(Decimal(repr(float(x))))


def _half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


def resolve_density(density: float | None = None, sparsity: float | None = None) -> Fraction:
    """Exact density from exactly one of ``density`` / ``sparsity`` (= 1 - density).

    Raises:
        SelectionError: both or neither given, or a value outside [0, 1].
    """
    if (density is None) == (sparsity is None):
        raise SelectionError("give exactly one of --density and --sparsity")
    if density is not None:
        return _exact(density, "--density")
    return 1 - _exact(sparsity, "--sparsity")


def resolve_k(
    total: int,
    *,
    k: int | None = None,
    density: float | None = None,
    sparsity: float | None = None,
    eligible: int | None = None,
) -> int:
    """Number of entries to select.

    Args:
        total: all candidate parameters (excluded entries included).
        k: an explicit count; or ``density`` (fraction of ``total``); or ``sparsity``
            (1 - density). Exactly one of the three.
        eligible: entries that may be selected (default ``total``); k is clamped to it.

    Returns:
        ``min(k, eligible)`` with ``k = floor(density x total + 1/2)`` for a density, computed
        exactly from the decimal value of the density (see the module docstring).

    Raises:
        SelectionError: not exactly one of k/density/sparsity, a density or sparsity outside
            [0, 1], a negative or non-integer k.
    """
    given = sum(v is not None for v in (k, density, sparsity))
    if given != 1:
        raise SelectionError("give exactly one of k, --density and --sparsity")
    eligible = total if eligible is None else eligible
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise SelectionError(f"k must be an integer >= 0, got {k!r}")
        return int(min(k, eligible))
    return min(_half_up(resolve_density(density, sparsity) * total), eligible)


def _check_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    cands = list(candidates)
    if not cands:
        raise SelectionError(
            "no candidate tensors to select from; check the --include/--exclude patterns"
        )
    seen = set()
    for c in cands:
        if not isinstance(c, Candidate):
            raise SelectionError(f"expected Candidate objects, found {type(c).__name__}")
        if c.name in seen:
            raise SelectionError(f"tensor {c.name!r} is listed twice among the candidates")
        seen.add(c.name)
    return cands


def _default_budget(cands: Sequence[Candidate], k: int) -> int:
    return 8 * k + 8 * max(c.numel for c in cands) + (32 << 20)


def select_topk(
    candidates: Sequence[Candidate],
    *,
    k: int | None = None,
    density: float | None = None,
    sparsity: float | None = None,
    scope: Literal["global", "tensor"] = "global",
    progress: Progress = None,
    max_retained_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Select the entries with the largest scores (exact, streaming, deterministic).

    Args:
        candidates: the tensors to select from, in tie-rule order.
        k: number of entries (global scope only); or ``density`` / ``sparsity``.
        scope: ``"global"`` (one threshold across all candidates) or ``"tensor"``.
        progress: optional ``progress(stage, done, total)`` called after each tensor of a pass;
            stages are ``"select pass 1"`` .. ``"select pass 3"``, ``"validate scores"`` (k = 0 or
            all eligible) and ``"select (per tensor)"`` (tensor scope); ``total`` = candidates.
        max_retained_bytes: memory allowed for keeping entries between passes (default: about
            the size of the result, see the module docstring); 0 never retains.

    Returns:
        ``{name: sorted int64 flat indices}`` for every candidate, in candidate order.

    Raises:
        SelectionError: invalid k/density/sparsity/scope, no or duplicate candidates, bad or
            non-finite scores, scores that change between calls.
    """
    cands, dens, kk = _parse_request(candidates, k, density, sparsity, scope)
    if _native.usable(cands):
        sel = _native_iter(cands, dens, kk, scope, progress, None)
        return {c.name: idx for c, (idx, _) in zip(cands, sel)}
    if scope == "tensor":
        return dict(_per_tensor(cands, dens, progress, max_retained_bytes))
    budget = _default_budget(cands, kk) if max_retained_bytes is None else max_retained_bytes
    out = _engine.select_global(cands, kk, budget, progress, retain=budget > 0)
    return {c.name: o for c, o in zip(cands, out)}


def iter_topk(
    candidates: Sequence[Candidate],
    *,
    k: int | None = None,
    density: float | None = None,
    sparsity: float | None = None,
    scope: Literal["global", "tensor"] = "global",
    progress: Progress = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """The selection of :func:`select_topk`, yielded one tensor at a time, in candidate order.

    For writers that consume a tensor's indices and drop them: memory no longer includes the
    whole result (8 bytes per selected entry), so peak memory beyond the inputs and the tensor
    being yielded stays within ``3 x largest candidate in float32 + 64 MiB`` for any k (plus
    whatever the score callables allocate internally). The price under global scope is
    two or three score passes instead of (usually) one; the first tensor arrives after the
    passes that fix the threshold. Tensor scope computes each tensor's scores once.

    Args:
        candidates, k, density, sparsity, scope, progress: as for :func:`select_topk`.

    Returns:
        An iterator of ``(name, sorted int64 flat indices)``. Arguments are validated at the call;
        score errors surface while iterating.

    Raises:
        SelectionError: as :func:`select_topk`.
    """
    cands, dens, kk = _parse_request(candidates, k, density, sparsity, scope)
    if _native.usable(cands):
        sel = _native_iter(cands, dens, kk, scope, progress, None)
        return ((c.name, idx) for c, (idx, _) in zip(cands, sel))
    if scope == "tensor":
        return _per_tensor(cands, dens, progress, None)
    return zip((c.name for c in cands), _engine.iter_global(cands, kk, progress))


def _parse_request(candidates, k, density, sparsity, scope):
    """Validate a request; returns (candidates, density or None, k or None)."""
    cands = _check_candidates(candidates)
    if scope not in _SCOPES:
        raise SelectionError(f"--scope must be one of {', '.join(_SCOPES)}; got {scope!r}")
    if scope == "tensor":
        if k is not None:
            raise SelectionError(
                "--scope tensor takes --density or --sparsity, not k (a count has no unique "
                "split across tensors); pass density=k/total instead"
            )
        return cands, resolve_density(density, sparsity), None
    total = sum(c.numel for c in cands)
    eligible = sum(c.eligible for c in cands)
    return cands, None, resolve_k(total, k=k, density=density, sparsity=sparsity, eligible=eligible)


def _per_tensor(cands, dens: Fraction, progress: Progress, budget: int | None):
    """Yield ``(name, selection)`` per tensor; each tensor's scores are computed once."""
    for i, c in enumerate(cands):
        kt = min(_half_up(dens * c.numel), c.eligible)
        keys = _radix.checked_keys(c)  # later passes of the engine reuse these
        cached = Candidate(c.name, c.numel, lambda keys=keys: keys.view(np.float32), c.exclude)
        b = _default_budget([c], kt) if budget is None else budget
        sel = _engine.select_global([cached], kt, b, None, retain=b > 0)[0]
        del keys, cached
        _radix._tick(progress, "select (per tensor)", i + 1, len(cands))
        yield c.name, sel


def select_changed(
    candidates: Sequence[Candidate], *, progress: Progress = None
) -> dict[str, np.ndarray]:
    """Every eligible entry with a score > 0 (``--all-changed``: a lossless conversion).

    Args:
        candidates: the tensors; excluded entries are never selected.
        progress: optional ``progress(stage, done, total)`` called after each tensor.

    Returns:
        ``{name: sorted int64 flat indices}`` for every candidate.

    Raises:
        SelectionError: no or duplicate candidates, bad or non-finite scores.
    """
    cands = _check_candidates(candidates)
    if _native.usable(cands):
        return {c.name: idx for c, (idx, _) in zip(cands, _native.iter_changed(cands, progress))}
    out = {}
    for i, c in enumerate(cands):
        parts = []
        for c0, kc, ex in _radix.key_chunks(c):
            m = kc != 0
            if ex is not None:
                m[ex] = False
            parts.append(np.flatnonzero(m) + c0)
        out[c.name] = _radix._concat(parts)
        _radix._tick(progress, "select changed", i + 1, len(cands))
    return out


def _native_iter(cands, dens, kk, scope, progress, values):
    if scope == "tensor":
        return _native.iter_tensor(cands, dens, progress, values)
    return _native.iter_global(cands, kk, progress, values)


def iter_values(
    candidates: Sequence[Candidate],
    *,
    values: Literal["raw", "ulpdiff"],
    k: int | None = None,
    density: float | None = None,
    sparsity: float | None = None,
    scope: Literal["global", "tensor"] = "global",
    all_changed: bool = False,
    progress: Progress = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The selection of :func:`iter_topk` (or :func:`select_changed`) with the selected values.

    Every candidate must have ``pair``. The values are read in the same pass as the selection
    when the compiled kernels are available (else gathered after it).

    Args:
        values: ``"raw"`` (fine-tuned bit patterns) or ``"ulpdiff"`` (wrap-around difference of
            bit patterns, fine-tuned − base), unsigned of the storage width.
        all_changed: select every eligible entry with a non-zero score (then no k/density).
        candidates, k, density, sparsity, scope, progress: as for :func:`iter_topk`.

    Returns:
        An iterator of ``(name, sorted int64 flat indices, values at them)``.

    Raises:
        SelectionError: as :func:`iter_topk`; a candidate without ``pair``.
    """
    if values not in ("raw", "ulpdiff"):
        raise SelectionError(f"values must be 'raw' or 'ulpdiff', got {values!r}")
    cands = _check_candidates(candidates)
    for c in cands:
        if c.pair is None:
            raise SelectionError(f"tensor {c.name!r}: iter_values needs a pair callable")
    if all_changed:
        if _native.usable(cands):
            sel = _native.iter_changed(cands, progress, values)
            return ((c.name, idx, v) for c, (idx, v) in zip(cands, sel))
        gen = select_changed(cands, progress=progress).items()
    else:
        cands, dens, kk = _parse_request(cands, k, density, sparsity, scope)
        if _native.usable(cands):
            sel = _native_iter(cands, dens, kk, scope, progress, values)
            return ((c.name, idx, v) for c, (idx, v) in zip(cands, sel))
        gen = iter_topk(cands, k=k, density=density, sparsity=sparsity, scope=scope, progress=progress)
    by_name = {c.name: c for c in cands}
    return ((n, idx, _gather(by_name[n], idx, values)) for n, idx in gen)


def _gather(c: Candidate, idx: np.ndarray, values: str) -> np.ndarray:
    """The values at ``idx`` read from ``c.pair()`` (numpy path of :func:`iter_values`)."""
    b, f, dtype = c.pair()
    width = np.dtype(np.uint32 if dtype == "F32" else np.uint16)
    fb = np.ascontiguousarray(f).reshape(-1).view(width)[idx]
    if values == "raw":
        return fb
    return fb - np.ascontiguousarray(b).reshape(-1).view(width)[idx]  # unsigned wrap-around
