"""random_mask (exact size, exclusions, determinism, uniformity) and mask_stats."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from lotavec.errors import SelectionError
from lotavec.mask import mask_stats, random_mask


def test_random_mask_exact_size_sorted_and_disjoint_from_exclusions():
    numels = {"a": 10_000, "b": 0, "c": 3, "d": 50_000}
    ex = {"a": np.arange(0, 10_000, 3), "c": np.array([1])}
    eligible = 60_003 - 3334 - 1
    for k in (0, 1, 12_345, eligible // 2 + 7, eligible):
        m = random_mask(numels, k, seed=4, exclude=ex)
        assert list(m) == list(numels)
        assert sum(v.size for v in m.values()) == k
        for n, v in m.items():
            assert v.dtype == np.int64 and np.all(np.diff(v) > 0)
            assert v.size == 0 or (v[0] >= 0 and v[-1] < numels[n])
            if n in ex:
                assert np.intersect1d(v, ex[n]).size == 0
    full = random_mask(numels, eligible, seed=0, exclude=ex)
    np.testing.assert_array_equal(full["a"], np.setdiff1d(np.arange(10_000), ex["a"]))
    np.testing.assert_array_equal(full["c"], [0, 2])


def test_random_mask_is_deterministic_per_seed():
    numels = {"a": 1000, "b": 2000}
    a = random_mask(numels, 300, seed=11)
    b = random_mask(numels, 300, seed=11)
    c = random_mask(numels, 300, seed=12)
    assert all(np.array_equal(a[n], b[n]) for n in numels)
    assert not all(np.array_equal(a[n], c[n]) for n in numels)


@pytest.mark.parametrize("k", [2, 5])  # 5 > 7/2 goes through the complement
def test_random_mask_is_uniform_over_subsets(k):
    numels = {"a": 4, "b": 4}
    ex = {"a": np.array([2])}
    runs = 7000
    counts = Counter()
    for seed in range(runs):
        m = random_mask(numels, k, seed=seed, exclude=ex)
        counts[tuple(("a", int(i)) for i in m["a"]) + tuple(("b", int(i)) for i in m["b"])] += 1
    subsets = list(itertools.combinations(range(7), k))
    assert len(counts) == len(subsets)  # every subset of the 7 eligible entries occurs
    expected = runs / len(subsets)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    # C(7, 2) = C(7, 5) = 21 subsets: the 99.9th percentile of chi-square(20) is 45.3.
    assert chi2 < 45.3, chi2


def test_random_mask_rejects_bad_k_and_exclusions():
    with pytest.raises(SelectionError, match=r"\[0, 9\]"):
        random_mask({"a": 10}, 10, seed=0, exclude={"a": np.array([4])})
    with pytest.raises(SelectionError, match="k must be"):
        random_mask({"a": 10}, -1, seed=0)
    with pytest.raises(SelectionError, match="strictly increasing"):
        random_mask({"a": 10}, 1, seed=0, exclude={"a": np.array([3, 3])})


def test_mask_stats_counts_and_densities():
    sel = {"a": np.array([0, 5]), "c": np.arange(4)}
    s = mask_stats(sel, {"a": 10, "b": 30, "c": 4, "z": 0})
    assert s["tensors"]["a"] == {"nnz": 2, "numel": 10, "density": 0.2}
    assert s["tensors"]["b"] == {"nnz": 0, "numel": 30, "density": 0.0}
    assert s["tensors"]["z"]["density"] == 0.0
    assert (s["nnz"], s["numel"], s["density"]) == (6, 44, 6 / 44)
    assert (s["tensors_total"], s["tensors_selected"]) == (4, 2)
    assert (s["density_min"], s["density_max"]) == (0.0, 1.0)
    with pytest.raises(SelectionError, match="not candidates"):
        mask_stats({"q": np.array([1])}, {"a": 3})
    with pytest.raises(SelectionError, match="numel is 2"):
        mask_stats({"a": np.arange(3)}, {"a": 2})
