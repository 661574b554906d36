"""Extraction's selection against brute force: global and per-tensor top-k, exact k, the tie rule,
densities that differ across layers, density 0 and 1, and ``disjoint_from``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from extract_helpers import distinct_pair, half_up_k, scores_of

import lotavec
from lotavec.models import select_candidates
from lotavec.testing import make_tiny_model


@pytest.fixture(scope="module")
def pair():
    return distinct_pair()


@pytest.fixture(scope="module")
def scaled_pair():
    return distinct_pair(layer_scale=True)


def brute_global(scores: list[torch.Tensor], names: list[str], k: int) -> dict[str, np.ndarray]:
    """``torch.topk`` over the concatenated scores, split back per tensor."""
    cat = torch.cat(scores)
    pos = torch.topk(cat, k).indices.sort().values.numpy() if k else np.empty(0, np.int64)
    out, off = {}, 0
    for n, s in zip(names, scores):
        sel = pos[(pos >= off) & (pos < off + s.numel())] - off
        out[n] = sel.astype(np.int64)
        off += s.numel()
    return out


def selected(result, names) -> dict[str, np.ndarray]:
    t = result.ticket
    return {n: (t.indices(n) if n in t else np.empty(0, np.int64)) for n in names}


def test_distinct_magnitudes_precondition(pair):
    cat = torch.cat(scores_of(*pair))
    assert torch.unique(cat).numel() == cat.numel()


@pytest.mark.parametrize("density", [0.003, 0.05, 0.1, 0.37, 0.9])
def test_global_equals_bruteforce_topk(pair, density):
    base, ft, names = pair
    scores = scores_of(base, ft, names)
    total = sum(s.numel() for s in scores)
    k = half_up_k(density, total)
    r = lotavec.extract(base, ft, None, density=density)
    assert r.candidates == names
    assert r.candidate_params == total
    assert r.nnz == k == r.ticket.nnz
    want = brute_global(scores, names, k)
    got = selected(r, names)
    for n in names:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
    assert r.per_tensor == {n: int(want[n].size) for n in names}


def test_sparsity_and_k_agree_with_density(pair):
    base, ft, names = pair
    a = lotavec.extract(base, ft, None, density=0.1)
    b = lotavec.extract(base, ft, None, sparsity=0.9)
    c = lotavec.extract(base, ft, None, k=a.nnz)
    for n in names:
        np.testing.assert_array_equal(a.ticket.indices(n), b.ticket.indices(n))
        np.testing.assert_array_equal(a.ticket.indices(n), c.ticket.indices(n))


def test_k_rounds_half_up(pair):
    base, ft, names = pair
    total = sum(p.numel() for n, p in base.named_parameters() if n in names)
    assert total == 73728  # 2^13 · 9: density 1/16384 gives exactly 4.5 entries
    r = lotavec.extract(base, ft, None, density=1 / 16384)
    assert r.nnz == 5


@pytest.mark.parametrize("density", [0.02, 0.25])
def test_tensor_scope_equals_per_tensor_topk(pair, density):
    base, ft, names = pair
    scores = scores_of(base, ft, names)
    r = lotavec.extract(base, ft, None, density=density, scope="tensor")
    got = selected(r, names)
    for n, s in zip(names, scores):
        kt = half_up_k(density, s.numel())
        want = torch.topk(s, kt).indices.sort().values.numpy()
        np.testing.assert_array_equal(got[n], want, err_msg=n)
    assert r.nnz == sum(half_up_k(density, s.numel()) for s in scores)


def test_global_density_differs_across_layers(scaled_pair):
    base, ft, names = scaled_pair
    scores = scores_of(base, ft, names)
    r = lotavec.extract(base, ft, None, density=0.1)
    got = selected(r, names)
    want = brute_global(scores, names, r.nnz)
    for n in names:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
    dens = {n: got[n].size / s.numel() for n, s in zip(names, scores)}
    layer0 = [d for n, d in dens.items() if ".layers.0." in n]
    layer1 = [d for n, d in dens.items() if ".layers.1." in n]
    # Layer-1 deltas are twice as large: a global threshold takes far more of them.
    assert max(layer0) < 0.1 < min(layer1)
    t = lotavec.extract(base, ft, None, density=0.1, scope="tensor")
    for n, s in zip(names, scores):
        assert t.ticket.indices(n).size == half_up_k(0.1, s.numel())


def test_tie_rule_on_constructed_ties():
    """Equal |delta| at the threshold: earlier (candidate order, flat index) first."""
    base = make_tiny_model("llama", dtype="float32", seed=0)
    names = select_candidates(base)
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for p in base.parameters():  # a grid base: base + delta is exact
            p.copy_(torch.from_numpy(rng.integers(-512, 512, p.shape).astype(np.float32) / 1024))
    ft = copy.deepcopy(base)
    params = dict(ft.named_parameters())
    levels = []
    with torch.no_grad():
        for n in names:
            lv = rng.integers(0, 4, params[n].numel())  # |delta| in {0, 1, 2, 3} · 2^-12
            sign = rng.choice([-1, 1], lv.size)
            params[n].add_(torch.from_numpy((lv * sign / 4096).astype(np.float32)).reshape(params[n].shape))
            levels.append(lv)
    score = np.concatenate(levels)
    order_cand = np.concatenate([np.full(lv.size, i) for i, lv in enumerate(levels)])
    order_idx = np.concatenate([np.arange(lv.size) for lv in levels])
    n3 = int((score == 3).sum())
    k = n3 + int((score == 2).sum()) // 3  # the threshold falls inside the tie class |delta| = 2
    rank = np.lexsort((order_idx, order_cand, -score))[:k]
    r = lotavec.extract(base, ft, None, k=k)
    assert r.nnz == k
    for i, n in enumerate(names):
        want = np.sort(order_idx[rank][order_cand[rank] == i])
        got = r.ticket.indices(n) if n in r.ticket else np.empty(0, np.int64)
        np.testing.assert_array_equal(got, want, err_msg=n)
    # Reproducible: same call, same result.
    again = lotavec.extract(base, ft, None, k=k)
    for n in r.ticket.names:
        np.testing.assert_array_equal(again.ticket.indices(n), r.ticket.indices(n))


def test_density_zero_and_one(pair):
    base, ft, names = pair
    zero = lotavec.extract(base, ft, None, density=0.0)
    assert zero.nnz == 0 and zero.ticket.nnz == 0
    one = lotavec.extract(base, ft, None, density=1.0)
    total = sum(p.numel() for n, p in base.named_parameters() if n in names)
    assert one.nnz == total
    for n in names:
        np.testing.assert_array_equal(one.ticket.indices(n), np.arange(dict(base.named_parameters())[n].numel()))


def test_disjoint_from_takes_the_next_largest(pair):
    base, ft, names = pair
    a = lotavec.extract(base, ft, None, density=0.05)
    b = lotavec.extract(base, ft, None, density=0.05, disjoint_from=[a.ticket])
    both = lotavec.extract(base, ft, None, k=2 * a.nnz)
    assert b.nnz == a.nnz  # k counts all candidates; plenty of eligible entries remain
    assert b.ticket.provenance["selection"]["excluded_entries"] == a.nnz
    for n in names:
        ia, ib = selected(a, [n])[n], selected(b, [n])[n]
        assert np.intersect1d(ia, ib).size == 0, n
        # With distinct magnitudes, A ∪ B is exactly the top 2k.
        np.testing.assert_array_equal(np.union1d(ia, ib), selected(both, [n])[n], err_msg=n)


def test_disjoint_from_a_ticket_file_of_another_finetune(tmp_path, tiny_pair):
    from lotavec.testing import make_finetuned

    base, ft1 = tiny_pair
    ft2 = make_finetuned(base, tmp_path / "ft2", density=0.1, seed=2)
    a = lotavec.extract(base, ft1, tmp_path / "a.lota", density=0.05)
    b = lotavec.extract(base, ft2, tmp_path / "b.lota", density=0.05, disjoint_from=[tmp_path / "a.lota"])
    assert b.disjoint_from == [str(tmp_path / "a.lota")]
    plain = lotavec.extract(base, ft2, None, density=0.05)
    overlap_without = sum(np.intersect1d(a.ticket.indices(n), plain.ticket.indices(n)).size
                          for n in plain.ticket.names if n in a.ticket)
    assert overlap_without > 0  # the test is meaningful: without the flag they would overlap
    for n in b.ticket.names:
        if n in a.ticket:
            assert np.intersect1d(a.ticket.indices(n), b.ticket.indices(n)).size == 0, n
    assert b.nnz == plain.nnz
