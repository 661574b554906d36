"""Merge kernels: mergekit conventions against MERGE_SEMANTICS.md's written formulas, the
deterministic pieces (trim ties, DARE masks, global trims), errors, and algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lotavec.errors import (
    CorruptTicketError,
    DisjointnessError,
    MergeConfigError,
    TensorMismatchError,
)
from lotavec.merge.config import MergeParams
from lotavec.merge.methods import (
    SparseDelta,
    dare_keep_mask,
    iter_merge_tensor,
    merge_tensor,
    trim_keep,
    union_positions,
)
from lotavec.merge.overlap import ties_breakdown
from lotavec.merge.registry import METHODS

NAME = "model.layers.0.self_attn.q_proj.weight"


def tickets(seed: int, numel: int, nnzs, disjoint: bool = False) -> list[SparseDelta]:
    """Random tickets with distinct nonzero magnitudes (optionally pairwise disjoint)."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(numel)
    mags = rng.permutation(np.linspace(0.05, 3.0, numel * len(nnzs))).astype(np.float32)
    out, start = [], 0
    for i, nnz in enumerate(nnzs):
        chosen = pool[start:start + nnz] if disjoint else rng.choice(numel, nnz, replace=False)
        start += nnz
        idx = np.sort(chosen).astype(np.int64)
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), nnz)
        out.append(SparseDelta(idx, mags[i * numel:i * numel + nnz] * signs, numel))
    return out


def dense_of(parts, params, **kw) -> np.ndarray:
    return merge_tensor(NAME, parts, params, **kw).to_dense()


# --- mergekit's conventions, written out from MERGE_SEMANTICS.md -----------------------------


def mergekit_reference(taus, weights, densities, method, masks=None, sign="sum",
                       normalize=None, lam=1.0):
    """Dense numpy transcription of mergekit's generalized task arithmetic (float64)."""
    sparsify, consensus, default_norm = {
        "task_arithmetic": (None, None, False), "ties": ("magnitude", sign, True),
        "dare_ties": ("random", sign, False), "dare_linear": ("random", None, False)}[method]
    normalize = default_norm if normalize is None else normalize
    taus = [t.astype(np.float64) for t in taus]
    sparse = []
    for i, tau in enumerate(taus):
        p = densities[i]
        s = tau
        if sparsify == "magnitude" and p < 1:
            k = int(p * tau.size)
            top = np.argsort(-np.abs(tau), kind="stable")[:k]
            s = np.zeros_like(tau)
            s[top] = tau[top]
        elif sparsify == "random" and p < 1:
            s = tau * masks[i]
            before, after = np.abs(tau).sum(), np.abs(s).sum()
            if before >= 1e-7 and after >= 1e-7:
                s = s * (before / after)
        sparse.append(s)
    w = np.array(weights, np.float64)
    W = [w[i] * s for i, s in enumerate(sparse)]
    if consensus:
        votes = sum(W) if consensus == "sum" else sum(np.sign(x) for x in W)
        elected = np.where(votes >= 0, 1.0, -1.0)
        M = [np.sign(x) == elected for x in W]
        mixed = sum(x * m for x, m in zip(W, M))
        divisor = sum(w[i] * m for i, m in enumerate(M))
        divisor = np.where(divisor == 0, 1.0, divisor)
    else:
        mixed = sum(W)
        divisor = w.sum() if abs(w.sum()) >= 1e-8 else 1.0
    if normalize:
        mixed = mixed / divisor
    return mixed * lam


def dare_masks(parts, seed, densities):
    out = []
    for i, p in enumerate(parts):
        full = np.zeros(p.numel)
        full[p.indices] = dare_keep_mask(seed, i, NAME, p.nnz, densities[i])
        out.append(full)
    return out


@pytest.mark.parametrize("method,extra", [
    ("task_arithmetic", {}), ("task_arithmetic", {"normalize": True}),
    ("ties", {}), ("ties", {"normalize": False}), ("ties", {"sign": "count"}),
    ("dare_ties", {}), ("dare_ties", {"normalize": True, "sign": "count"}),
    ("dare_linear", {}), ("dare_linear", {"normalize": True}),
])
@pytest.mark.parametrize("weights,densities,lam", [
    ((0.7, 0.3), (0.3, 0.5), 1.0),
    ((1.0, 2.0, -0.5), (0.2, 0.2, 0.6), 0.8),
])
def test_mergekit_formulas(method, extra, weights, densities, lam):
    numel = 300
    parts = tickets(11, numel, [150, 120, 200][:len(weights)])
    ours_method = "sum" if method == "task_arithmetic" else method
    sign = extra.get("sign", "sum")
    params = MergeParams(
        method=ours_method, weights=weights, lambda_=lam, semantics="mergekit",
        normalize=extra.get("normalize"), seed=5 if "dare" in method else None,
        density=None if method == "task_arithmetic" else densities,
        majority_sign_method=sign if "ties" in method else None)
    masks = dare_masks(parts, 5, densities) if "dare" in method else None
    want = mergekit_reference([p.to_dense() for p in parts], weights, densities, method,
                              masks=masks, sign=sign, normalize=extra.get("normalize"), lam=lam)
    got = dense_of(parts, params)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * np.abs(want).max())
    assert np.array_equal(got != 0, np.abs(want) > 0)


def test_normalized_mergekit_ties_cancels_weights_on_disjoint_tickets():
    parts = tickets(12, 400, [100, 80], disjoint=True)
    weights = (0.3, 2.0)
    taus = [p.to_dense() for p in parts]
    mk = dense_of(parts, MergeParams(method="ties", weights=weights, semantics="mergekit"))
    np.testing.assert_allclose(mk, taus[0] + taus[1], rtol=1e-6)  # wⱼτⱼ / wⱼ = τⱼ
    peft = dense_of(parts, MergeParams(method="ties", weights=weights))
    np.testing.assert_allclose(peft, 0.3 * taus[0] + 2.0 * taus[1], rtol=1e-6)
    ta = dense_of(parts, MergeParams(weights=weights, lambda_=0.5, semantics="mergekit"))
    np.testing.assert_allclose(ta, 0.5 * (0.3 * taus[0] + 2.0 * taus[1]), rtol=1e-6)


def test_mergekit_elects_on_weighted_deltas():
    a = SparseDelta(np.array([0]), np.array([5.0]), 4)
    b = SparseDelta(np.array([0]), np.array([-1.0]), 4)
    params = MergeParams(method="ties", weights=(0.01, 1.0), semantics="mergekit")
    # weighted: 0.05 vs -1 → elected −, ticket b alone: -1·1 / 1
    assert dense_of([a, b], params)[0] == pytest.approx(-1.0)


def test_dare_l1_rescale_matches_norm():
    (t,) = tickets(13, 5000, [3000])
    out = merge_tensor(NAME, [t], MergeParams(method="dare_linear", density=0.3, seed=1,
                                              semantics="mergekit"))
    assert out.nnz < 0.4 * t.nnz
    assert np.abs(out.values).sum() == pytest.approx(np.abs(t.values).sum(), rel=1e-5)


# --- deterministic pieces ----------------------------------------------------------------------


def test_trim_keep_tie_rule_and_k():
    v = np.array([1, -3, 3, 2, 3, -0.5], np.float32)
    assert trim_keep(v, 2).tolist() == [1, 2]  # three |3|: the lower positions first
    assert trim_keep(v, 4).tolist() == [1, 2, 3, 4]
    assert trim_keep(v, 0).tolist() == []
    assert trim_keep(v, 10).tolist() == list(range(6))


def test_trim_counts_k_over_the_full_tensor():
    (t,) = tickets(14, 1000, [100])  # 10 % stored
    keep_all = merge_tensor(NAME, [t], MergeParams(method="magnitude_prune", density=0.1))
    assert keep_all.nnz == 100  # k = 100 ≥ nnz: untouched
    half = merge_tensor(NAME, [t], MergeParams(method="magnitude_prune", density=0.05))
    assert half.nnz == 50
    assert np.abs(half.values).min() >= np.sort(np.abs(t.values))[-50]


def test_global_scope_uses_given_trims():
    a, b = tickets(15, 200, [60, 60])
    trims = {0: a.indices[::2], 1: b.indices[:5]}
    params = MergeParams(method="magnitude_prune", density=0.5, scope="global")
    got = merge_tensor(NAME, [a, b], params, trims=trims)
    want = np.zeros(200, np.float32)
    want[a.indices[::2]] += a.values[::2]
    want[b.indices[:5]] += b.values[:5]
    np.testing.assert_allclose(got.to_dense(), want, rtol=1e-6)
    only_a = merge_tensor(NAME, [a, b], params, trims={0: a.indices})  # b keeps nothing here
    np.testing.assert_array_equal(only_a.to_dense(), a.to_dense())
    with pytest.raises(MergeConfigError, match="--scope global"):
        merge_tensor(NAME, [a, b], params)
    outside = np.setdiff1d(np.arange(200), b.indices)[:1]
    with pytest.raises(CorruptTicketError, match="not stored"):
        merge_tensor(NAME, [a, b], params, trims={0: a.indices, 1: outside})


def test_dare_keep_mask_is_a_pure_function():
    m = dare_keep_mask(7, 0, NAME, 100_000, 0.3)
    assert m.dtype == bool and m.shape == (100_000,)
    assert abs(m.mean() - 0.3) < 0.01
    assert np.array_equal(m, dare_keep_mask(7, 0, NAME, 100_000, 0.3))
    assert not np.array_equal(m, dare_keep_mask(8, 0, NAME, 100_000, 0.3))
    assert not np.array_equal(m, dare_keep_mask(7, 1, NAME, 100_000, 0.3))
    assert not np.array_equal(m, dare_keep_mask(7, 0, NAME + "x", 100_000, 0.3))
    assert dare_keep_mask(7, 0, NAME, 5, 1.0).all()
    # a prefix property: the first entries' fate does not depend on nnz
    assert np.array_equal(dare_keep_mask(7, 0, NAME, 10, 0.3), m[:10])


def test_dare_independent_of_other_tickets_and_tensor_order():
    a, b = tickets(16, 500, [200, 200])
    params = MergeParams(method="dare_linear", density=0.4, seed=3, weights=(1.0, 0.0))
    with_b = merge_tensor(NAME, [a, b], params)
    alone = merge_tensor(NAME, [a, SparseDelta.empty(500)], params)
    assert np.array_equal(with_b.to_dense(), alone.to_dense())
    names = ["x.0", "x.1", "x.2"]
    p1 = MergeParams(method="dare_ties", density=0.5, seed=9)
    fwd = {n: merge_tensor(n, [a, b], p1).to_dense() for n in names}
    rev = {n: merge_tensor(n, [a, b], p1).to_dense() for n in reversed(names)}
    assert all(np.array_equal(fwd[n], rev[n]) for n in names)
    assert not np.array_equal(fwd["x.0"], fwd["x.1"])  # keyed by tensor name


def test_dare_draws_and_records_a_seed():
    p = MergeParams(method="dare_ties", density=0.5)
    assert isinstance(p.seed, int) and p.to_json()["seed"] == p.seed


def test_rng_for_overrides_the_masks():
    (a,) = tickets(17, 100, [40])
    keep_first = lambda i, name, nnz, p: np.arange(nnz) < 10  # noqa: E731
    out = merge_tensor(NAME, [a], MergeParams(method="dare_linear", density=0.5, seed=0),
                       rng_for=keep_first)
    assert out.indices.tolist() == a.indices[:10].tolist()
    np.testing.assert_allclose(out.values, a.values[:10] / 0.5)


# --- methods of lotavec's own, errors -------------------------------------------------------


def test_mean_formula():
    a = SparseDelta(np.array([0, 1]), np.array([2.0, 4.0]), 3)
    b = SparseDelta(np.array([1, 2]), np.array([1.0, -6.0]), 3)
    out = dense_of([a, b], MergeParams(method="mean", weights=(1.0, 3.0), lambda_=2.0))
    np.testing.assert_allclose(out, [2 * 2.0, 2 * (4 + 3) / 4, 2 * -6.0])


def test_disjoint_refuses_overlaps_with_a_report():
    a = SparseDelta(np.array([0, 1, 5]), np.ones(3), 10)
    b = SparseDelta(np.array([1, 5, 7]), np.ones(3), 10)
    c = SparseDelta(np.array([9]), np.ones(1), 10)
    with pytest.raises(DisjointnessError, match=r"tickets #1 and #2 share 2 entries") as e:
        merge_tensor(NAME, [a, b, c], MergeParams(method="disjoint"))
    assert NAME in str(e.value) and e.value.overlaps == {NAME: {(0, 1): 2}}
    out = dense_of([a, c], MergeParams(method="disjoint", weights=(2.0, 1.0)))
    assert out.tolist() == [2, 2, 0, 0, 0, 2, 0, 0, 0, 1]


def test_ties_breakdown_counts():
    a = SparseDelta(np.array([0, 1, 2, 3]), np.array([4.0, 3.0, -2.0, 1.0]), 8)
    b = SparseDelta(np.array([1, 2]), np.array([-5.0, 1.0]), 8)
    trimmed, dropped = ties_breakdown(NAME, [a, b], MergeParams(method="ties", density=0.375))
    # k = 3: a loses its smallest (1.0); b keeps both. Entry 1: 3 − 5 < 0 → a's 3 dropped;
    # entry 2: −2 + 1 < 0 → b's 1 dropped.
    assert trimmed == [1, 0] and dropped == [1, 1]


def test_errors_name_the_problem():
    a = SparseDelta(np.array([0]), np.ones(1), 4)
    with pytest.raises(TensorMismatchError, match="different base"):
        merge_tensor(NAME, [a, SparseDelta(np.array([0]), np.ones(1), 5)], MergeParams())
    with pytest.raises(MergeConfigError, match="--weights"):
        merge_tensor(NAME, [a, a], MergeParams(weights=(1.0, 2.0, 3.0)))
    with pytest.raises(CorruptTicketError):
        SparseDelta(np.array([3, 1]), np.ones(2), 4)
    with pytest.raises(CorruptTicketError):
        SparseDelta(np.array([0, 4]), np.ones(2), 4)
    # None parts stand for tickets that do not touch the tensor
    out = merge_tensor(NAME, [None, a], MergeParams(weights=(5.0, 2.0)))
    assert out.to_dense().tolist() == [2, 0, 0, 0]


def test_every_registered_method_runs():
    parts = tickets(18, 100, [30, 30])
    for spec in METHODS:
        kw = {"density": 0.2} if spec.density_required else {}
        if spec.name == "disjoint":
            parts_ = tickets(18, 100, [30, 30], disjoint=True)
        else:
            parts_ = parts
        out = merge_tensor(NAME, parts_, MergeParams(method=spec.name, **kw))
        assert out.nnz > 0 and np.all(out.values != 0), spec.name


def test_union_positions():
    u, pos = union_positions([np.array([1, 5, 9]), np.array([], np.int64), np.array([2, 5])])
    assert u.tolist() == [1, 2, 5, 9]
    assert [p.tolist() for p in pos] == [[0, 2, 3], [], [1, 2]]


# --- properties ------------------------------------------------------------------------------

sizes = st.integers(1, 300)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def ticket_sets(draw, disjoint=False, max_n=4):
    numel = draw(sizes)
    n = draw(st.integers(1, max_n))
    cap = numel // n if disjoint else numel
    nnzs = [draw(st.integers(0, cap)) for _ in range(n)]
    return tickets(draw(seeds), numel, nnzs, disjoint=disjoint)


weights_st = st.floats(-4, 4, allow_nan=False, width=32).filter(lambda w: abs(w) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(ticket_sets(max_n=1))
def test_single_ticket_weight_one_is_itself(parts):
    out = merge_tensor(NAME, parts, MergeParams())
    assert np.array_equal(out.indices, parts[0].indices)
    assert np.array_equal(out.values.view(np.uint32), parts[0].values.view(np.uint32))


ORDERED = [dict(method="sum"), dict(method="disjoint"), dict(method="mean"),
           dict(method="ties", density=0.5), dict(method="ties", semantics="mergekit"),
           dict(method="magnitude_prune", density=0.3),
           dict(method="dare_ties", density=0.6, seed=4, semantics="mergekit")]


def _keyed(ticket_id):
    return lambda i, name, nnz, p: dare_keep_mask(4, ticket_id(i), name, nnz, p)


@settings(max_examples=40, deadline=None)
@given(ticket_sets(disjoint=True), st.data())
def test_disjoint_tickets_merge_the_same_in_any_order(parts, data):
    n = len(parts)
    weights = tuple(data.draw(weights_st) for _ in range(n))
    perm = data.draw(st.permutations(range(n)))
    for kw in ORDERED:
        base = MergeParams(weights=weights, **kw)
        shuffled = MergeParams(weights=tuple(weights[i] for i in perm), **kw)
        # DARE keyed by a stable ticket id (its original position), so order cannot matter
        a = dense_of(parts, base, rng_for=_keyed(lambda i: i))
        b = dense_of([parts[i] for i in perm], shuffled, rng_for=_keyed(lambda i: perm[i]))
        assert np.array_equal(a, b), kw


@settings(max_examples=40, deadline=None)
@given(ticket_sets(max_n=3), st.data())
def test_sum_is_linear_in_the_weights(parts, data):
    n = len(parts)
    w = [data.draw(weights_st) for _ in range(n)]
    whole = dense_of(parts, MergeParams(weights=tuple(w)))
    pieces = sum(w[i] * dense_of(parts, MergeParams(weights=tuple(float(j == i)
                                                                for j in range(n))))
                 for i in range(n))
    scale = max(1.0, float(np.abs(pieces).max()))
    np.testing.assert_allclose(whole, pieces, atol=1e-5 * scale)
    lam = data.draw(weights_st)
    scaled = dense_of(parts, MergeParams(weights=tuple(w), lambda_=lam))
    np.testing.assert_allclose(scaled, lam * whole, rtol=1e-5, atol=1e-5 * scale * abs(lam))


@settings(max_examples=40, deadline=None)
@given(ticket_sets(max_n=2))
def test_negation_removes_a_ticket(parts):
    t = parts[0]
    assert merge_tensor(NAME, [t, t], MergeParams(weights=(1.0, -1.0))).nnz == 0
    if len(parts) == 2:
        other = parts[1]
        out = dense_of([other, t, t], MergeParams(weights=(1.0, 1.0, -1.0)))
        np.testing.assert_allclose(out, other.to_dense(), atol=1e-5)


def test_huge_indices_take_the_general_paths():
    numel = 2**62
    a = SparseDelta(np.array([3, 2**33, 2**61]), np.array([1.0, 2.0, 3.0]), numel)
    b = SparseDelta(np.array([3, 2**34]), np.array([0.5, -1.0]), numel)
    out = merge_tensor(NAME, [a, b], MergeParams(weights=(2.0, 2.0)))
    assert out.indices.tolist() == [3, 2**33, 2**34, 2**61]
    assert out.values.tolist() == [3.0, 4.0, -2.0, 6.0]
    ties = merge_tensor(NAME, [a, b], MergeParams(method="ties"))
    assert ties.values.tolist() == [0.75, 2.0, -1.0, 3.0]


@pytest.mark.parametrize("kw", [
    dict(method="sum", weights=(0.5, 2.0, -1.0)), dict(method="mean"),
    dict(method="ties", density=0.1, semantics="mergekit"),
    dict(method="ties", density=0.2, majority_sign_method="frequency"),
    dict(method="dare_ties", density=0.5, seed=2), dict(method="dare_linear", density=0.3, seed=2,
                                                         semantics="mergekit", normalize=True),
    dict(method="magnitude_prune", density=0.05, lambda_=0.5),
])
def test_chunked_merge_equals_whole(kw):
    parts = tickets(19, 3000, [900, 700, 1200])
    whole = merge_tensor(NAME, parts, MergeParams(**kw))
    pieces = list(iter_merge_tensor(NAME, parts, MergeParams(**kw), chunk_entries=60))
    assert len(pieces) >= 3
    starts = [p.indices[0] for p in pieces if p.nnz]
    assert starts == sorted(starts)
    assert np.array_equal(np.concatenate([p.indices for p in pieces]), whole.indices)
    assert np.array_equal(np.concatenate([p.values for p in pieces]), whole.values)
