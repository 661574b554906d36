"""select_topk / select_changed against brute force, on every engine path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_helpers import (
    all_paths,
    brute_tie_rule,
    brute_torch_topk,
    cands_of,
    distinct_scores,
    small_chunks,
)

from lotavec.errors import SelectionError
from lotavec.mask import Candidate, iter_topk, resolve_k, select_changed, select_topk
from lotavec.mask._engine import select_global as _select_global

shapes = st.lists(st.integers(0, 400), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(sizes=shapes, frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_global_equals_torch_topk_on_distinct_scores(sizes, frac, seed):
    arrays = distinct_scores(sizes, np.random.default_rng(seed))
    k = int(round(frac * sum(sizes)))
    want = brute_torch_topk(arrays, k)
    with small_chunks():
        for ranged in (False, True):
            for path, got in all_paths(cands_of(arrays, ranged=ranged), k).items():
                assert sum(g.size for g in got) == k, path
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w, err_msg=f"{path} ranged={ranged}")
                    assert g.dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(
    sizes=shapes,
    levels=st.integers(1, 5),
    frac=st.floats(0, 1),
    exclude_frac=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tie_rule_and_exclusions_match_brute_force(sizes, levels, frac, exclude_frac, seed):
    """Few distinct values (massive ties, zeros included) and excluded entries."""
    rng = np.random.default_rng(seed)
    arrays = [(rng.integers(0, levels, n) * 0.25).astype(np.float32) for n in sizes]
    excludes = [np.flatnonzero(rng.random(n) < exclude_frac) for n in sizes]
    eligible = sum(n - e.size for n, e in zip(sizes, excludes))
    k = int(round(frac * eligible))
    want = brute_tie_rule(arrays, k, excludes)
    with small_chunks():
        for ranged in (False, True):
            for path, got in all_paths(cands_of(arrays, excludes, ranged=ranged), k).items():
                for g, w, ex in zip(got, want, excludes):
                    np.testing.assert_array_equal(g, w, err_msg=f"{path} ranged={ranged}")
                    assert np.intersect1d(g, ex).size == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_tie_rule_across_tensors_prefers_candidate_order(chunked):
    # The threshold value 1.0 appears in every tensor; only the first 5 of them (in candidate
    # order, then flat index) are taken.
    arrays = [
        np.array([1, 2, 1, 1], np.float32),
        np.array([1, 1, 3], np.float32),
        np.ones(3, np.float32),
    ]
    ctx = small_chunks(chunk=2, prune_min=1) if chunked else small_chunks(1 << 20, 1 << 22)
    with ctx:
        for path, got in all_paths(cands_of(arrays), 7).items():
            assert [g.tolist() for g in got] == [[0, 1, 2, 3], [0, 1, 2], []], path
    # Reversing the candidate order moves the ties to the other tensors.
    got = select_topk(cands_of(arrays[::-1]), k=7)
    assert [v.tolist() for v in got.values()] == [[0, 1, 2], [0, 1, 2], [1]]


def test_denormal_and_zero_scores():
    """Bin 0 of the high-bit histogram holds zeros and denormals: both sides of the threshold."""
    rng = np.random.default_rng(3)
    tiny = np.array([0, 1, 2, 700, 65535], np.uint32).view(np.float32)  # 0 and denormals
    arrays = [rng.choice(tiny, 300).astype(np.float32) for _ in range(3)]
    for k in (0, 1, 17, 150, 500, 899, 900):
        want = brute_tie_rule(arrays, k)
        with small_chunks():
            for path, got in all_paths(cands_of(arrays), k).items():
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w, err_msg=f"{path} k={k}")


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5])
def test_tensor_scope_equals_per_tensor_topk(density):
    arrays = distinct_scores([1000, 37, 0, 1, 2500], np.random.default_rng(5))
    got = select_topk(cands_of(arrays), density=density, scope="tensor")
    for (name, g), a in zip(got.items(), arrays):
        kt = resolve_k(a.size, density=density)
        want = torch.topk(torch.from_numpy(a), kt).indices.sort().values.numpy() if kt else []
        np.testing.assert_array_equal(g, want, err_msg=name)


def test_tensor_scope_computes_scores_once_and_honours_exclusions():
    arrays = distinct_scores([500, 800], np.random.default_rng(6))
    excludes = [np.arange(0, 500, 2), None]
    calls = [0, 0]
    got = select_topk(
        cands_of(arrays, excludes, calls), density=0.3, scope="tensor", max_retained_bytes=0
    )
    assert calls == [1, 1]
    assert got["t0"].size == 150 and np.all(got["t0"] % 2 == 1)  # 150 of the 250 eligible
    want0 = brute_tie_rule([arrays[0]], 150, [excludes[0]])[0]
    np.testing.assert_array_equal(got["t0"], want0)


def test_global_density_differs_across_tensors():
    rng = np.random.default_rng(8)
    small = np.abs(rng.standard_normal(10_000)).astype(np.float32)
    large = (3 * np.abs(rng.standard_normal(10_000))).astype(np.float32)
    got = select_topk(cands_of([small, large]), density=0.1)
    assert got["t0"].size + got["t1"].size == 2000
    assert got["t0"].size < 500 < 1500 < got["t1"].size
    per = select_topk(cands_of([small, large]), density=0.1, scope="tensor")
    assert per["t0"].size == per["t1"].size == 1000


def test_single_pass_when_retained_entries_fit():
    arrays = distinct_scores([5000] * 4, np.random.default_rng(9))
    for budget, passes in [(None, 1), (0, 3)]:
        calls = [0] * 4
        select_topk(cands_of(arrays, calls=calls), density=0.05, max_retained_bytes=budget)
        assert calls == [passes] * 4
    calls = [0] * 4
    _select_global(cands_of(arrays, calls=calls), 1000, 1 << 30, None, retain=False)
    assert calls == [2] * 4


def test_threshold_at_zero_needs_two_passes_without_retention():
    # Fewer changed entries than k: the threshold is 0 and zeros are taken in order.
    arrays = [np.where(np.arange(1000) % 10 == 0, 1.0, 0.0).astype(np.float32) for _ in range(3)]
    calls = [0] * 3
    got = select_topk(cands_of(arrays, calls=calls), k=400, max_retained_bytes=0)
    assert calls == [2] * 3
    # 300 changed entries, then the first 100 zeros of t0 (candidate order, flat index).
    assert got["t0"].size == 200 and got["t1"].size == 100 and got["t2"].size == 100
    np.testing.assert_array_equal(got["t0"], brute_tie_rule(arrays, 400)[0])
    zeros = got["t0"][arrays[0][got["t0"]] == 0]
    assert zeros.size == 100 and zeros.max() == 111  # the first 100 zeros of t0


def test_density_zero_and_one_and_k_above_eligible():
    arrays = distinct_scores([10, 0, 5], np.random.default_rng(10))
    ex = [np.array([3, 4]), None, None]
    zero = select_topk(cands_of(arrays, ex), density=0.0)
    assert list(zero) == ["t0", "t1", "t2"] and all(
        v.size == 0 and v.dtype == np.int64 for v in zero.values()
    )
    one = select_topk(cands_of(arrays, ex), density=1.0)
    np.testing.assert_array_equal(one["t0"], [0, 1, 2, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(one["t2"], np.arange(5))
    more = select_topk(cands_of(arrays, ex), k=10**9)
    for n in one:
        np.testing.assert_array_equal(more[n], one[n])
    assert resolve_k(15, density=1.0, eligible=13) == 13


def test_empty_and_zero_dim_tensors():
    scalar = Candidate("scalar", 1, lambda: np.array(4.5, np.float32))
    empty = Candidate("empty", 0, lambda: np.zeros((0, 4), np.float32))
    mat = Candidate("mat", 6, lambda: np.arange(6, dtype=np.float32).reshape(2, 3))
    got = select_topk([scalar, empty, mat], k=3)
    assert (
        got["scalar"].tolist() == [0] and got["empty"].size == 0 and got["mat"].tolist() == [4, 5]
    )
    assert select_changed([scalar, empty, mat])["mat"].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_scores_name_the_tensor(bad):
    a = np.ones(10, np.float32)
    a[7] = bad
    ranged = Candidate("model.w", 10, score_range=lambda i, j: a[i:j].copy())
    for w in (Candidate("model.w", 10, lambda: a.copy()), ranged):
        cands = [Candidate("ok", 3, lambda: np.ones(3, np.float32)), w]
        with small_chunks(chunk=4):  # the bad entry is in the second chunk of a score_range
            with pytest.raises(SelectionError, match=r"model\.w.*flat index 7"):
                select_topk(cands, k=2)
            with pytest.raises(SelectionError, match=r"model\.w.*flat index 7"):
                select_changed(cands)


def test_negative_zero_counts_as_zero():
    a = np.array([-0.0, 1.0, -0.0, 0.0], np.float32)
    got = select_topk(cands_of([a]), k=2)
    assert got["t0"].tolist() == [0, 1]  # -0.0 ties with 0.0: first flat index wins
    assert select_changed(cands_of([a]))["t0"].tolist() == [1]


def test_select_changed_drops_exclusions():
    a = np.array([0, 1, 0, 2, 3, 0], np.float32)
    got = select_changed(cands_of([a, a], [np.array([3]), None]))
    assert got["t0"].tolist() == [1, 4] and got["t1"].tolist() == [1, 3, 4]


def test_validation_errors_name_the_flag():
    c = cands_of([np.ones(4, np.float32)])
    with pytest.raises(SelectionError, match="--density"):
        select_topk(c, density=1.5)
    with pytest.raises(SelectionError, match="--sparsity"):
        select_topk(c, sparsity=-0.1)
    with pytest.raises(SelectionError, match="exactly one"):
        select_topk(c, k=1, density=0.5)
    with pytest.raises(SelectionError, match="exactly one"):
        select_topk(c)
    with pytest.raises(SelectionError, match="--scope"):
        select_topk(c, k=1, scope="layer")
    with pytest.raises(SelectionError, match="--scope tensor"):
        select_topk(c, k=1, scope="tensor")
    with pytest.raises(SelectionError, match="no candidate"):
        select_topk([], k=1)
    with pytest.raises(SelectionError, match="twice"):
        select_topk(c + c, k=1)
    with pytest.raises(SelectionError, match="k must be"):
        select_topk(c, k=-1)
    with pytest.raises(SelectionError, match="float32"):
        select_topk([Candidate("w", 4, lambda: np.ones(4))], k=1)
    with pytest.raises(SelectionError, match="expected numel=5"):
        select_topk([Candidate("w", 5, lambda: np.ones(4, np.float32))], k=1)
    short = Candidate("w", 5, score_range=lambda i, j: np.ones(max(j - i - 1, 0), np.float32))
    with pytest.raises(SelectionError, match=r"entries \[0, 5\), expected 5"):
        select_topk([short], k=1)
    with pytest.raises(SelectionError, match="scores or score_range"):
        Candidate("w", 4)
    with pytest.raises(SelectionError, match="strictly increasing"):
        Candidate("w", 4, lambda: None, np.array([2, 1]))
    with pytest.raises(SelectionError, match="strictly increasing"):
        Candidate("w", 4, lambda: None, np.array([4]))
    for numel in (-1, 2.5, None, True):
        with pytest.raises(SelectionError, match="numel must be"):
            Candidate("w", numel, lambda: None)


def test_scores_that_change_between_passes_are_an_error():
    state = {"n": 0}

    def drifting():
        state["n"] += 1
        return np.arange(100, dtype=np.float32) * state["n"]

    with pytest.raises(SelectionError, match="changed between passes"):  # three passes
        select_topk([Candidate("w", 100, drifting)], k=30, max_retained_bytes=0)
    state["n"] = 0
    with pytest.raises(SelectionError, match="changed between passes"):  # two passes
        _select_global([Candidate("w", 100, drifting)], 30, 1 << 30, None, retain=False)


def test_resolve_k_rounds_half_up_on_the_decimal_value():
    assert resolve_k(135, density=0.1) == 14  # 13.5 -> 14
    assert resolve_k(135, sparsity=0.9) == 14  # same k as density 0.1, although 1 - 0.9 != 0.1
    assert resolve_k(25, density=0.1) == 3  # 2.5 -> 3
    assert resolve_k(73728, density=1 / 16384) == 5  # 4.5 -> 5
    assert resolve_k(10, k=20, eligible=7) == 7


def test_progress_is_reported_per_tensor_and_pass():
    seen = []
    arrays = distinct_scores([100, 100], np.random.default_rng(11))
    select_topk(cands_of(arrays), k=20, max_retained_bytes=0, progress=lambda *a: seen.append(a))
    assert seen == [
        ("select pass 1", 1, 2),
        ("select pass 1", 2, 2),
        ("select pass 2", 1, 2),
        ("select pass 2", 2, 2),
        ("select pass 3", 1, 2),
        ("select pass 3", 2, 2),
    ]


def test_iter_topk_yields_the_same_selection_in_order():
    arrays = distinct_scores([300, 0, 1200, 45], np.random.default_rng(12))
    excludes = [np.arange(0, 300, 7), None, None, np.array([3])]
    for kw in (
        dict(density=0.3),
        dict(k=17),
        dict(density=0.25, scope="tensor"),
        dict(density=1.0),
    ):
        want = select_topk(cands_of(arrays, excludes), **kw)
        got = list(iter_topk(cands_of(arrays, excludes), **kw))
        assert [n for n, _ in got] == list(want)
        for n, g in got:
            np.testing.assert_array_equal(g, want[n], err_msg=f"{kw} {n}")
    calls = [0] * 4
    for _ in iter_topk(cands_of(arrays, calls=calls), density=0.3):
        pass
    assert calls == [3] * 4  # histogram, boundary bin, emit
    with pytest.raises(SelectionError, match="--density"):
        iter_topk(cands_of(arrays), density=2.0)  # validated at the call, not when iterated


def test_mask_works_with_torch_blocked():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from lotavec.mask import Candidate, select_topk, random_mask, mask_stats\n"
        "c = [Candidate('a', 3, lambda: np.array([1, 3, 2], np.float32))]\n"
        "assert select_topk(c, k=2)['a'].tolist() == [1, 2]\n"
        "assert random_mask({'a': 3}, 2, seed=0)['a'].size == 2\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
