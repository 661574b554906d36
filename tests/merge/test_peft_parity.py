"""Numerical parity of the sparse kernels with ``peft.utils.merge_utils`` on dense tensors.

Tickets are built sparse (random supports that overlap, distinct magnitudes so that PEFT's
``torch.topk`` and lotavec's tie rule pick the same entries), densified for PEFT, and our sparse
output is densified for the comparison. DARE runs with identical Bernoulli masks: PEFT's
``torch.bernoulli`` is replaced by a function returning lotavec's masks on each ticket's support
(and random bits elsewhere, which must not matter since τ is zero there).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lotavec.merge.config import MergeParams
from lotavec.merge.methods import SparseDelta, dare_keep_mask, merge_tensor

merge_utils = pytest.importorskip("peft.utils.merge_utils")

SHAPE = (24, 40)
NAME = "model.layers.3.mlp.up_proj.weight"


def make_tickets(seed: int, n: int, densities=(0.3, 0.45, 0.2, 0.6)) -> list[SparseDelta]:
    """n sparse tickets on SHAPE with overlapping supports and distinct nonzero magnitudes."""
    rng = np.random.default_rng(seed)
    numel = int(np.prod(SHAPE))
    # one global pool of distinct magnitudes, shuffled, so no |value| repeats within a ticket
    mags = rng.permutation(np.linspace(0.01, 2.0, n * numel)).astype(np.float32)
    out = []
    for i in range(n):
        nnz = int(densities[i % len(densities)] * numel)
        idx = np.sort(rng.choice(numel, nnz, replace=False)).astype(np.int64)
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), nnz)
        out.append(SparseDelta(idx, mags[i * numel:i * numel + nnz] * signs, numel))
    return out


def dense(parts: list[SparseDelta]) -> list[torch.Tensor]:
    return [torch.from_numpy(p.to_dense(SHAPE)) for p in parts]


def ours(parts, **kw) -> np.ndarray:
    return merge_tensor(NAME, parts, MergeParams(**kw)).to_dense(SHAPE)


def assert_close(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)
    # the supports agree too (no stray entries, none missing)
    assert np.array_equal(got != 0, want != 0)


WEIGHTS = [(1.0, 1.0), (0.7, 0.3), (1.5, -0.5), (0.2, 0.9, 0.5)]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_task_arithmetic(weights):
    parts = make_tickets(1, len(weights))
    want = merge_utils.task_arithmetic(dense(parts), torch.tensor(weights))
    assert_close(ours(parts, method="sum", weights=weights), want)


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_magnitude_prune(weights, density):
    parts = make_tickets(2, len(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns at density 1
        want = merge_utils.magnitude_prune(dense(parts), torch.tensor(weights), density)
    assert_close(ours(parts, method="magnitude_prune", weights=weights, density=density), want)


@pytest.mark.parametrize("sign", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_ties(weights, density, sign):
    parts = make_tickets(3, len(weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = merge_utils.ties(dense(parts), torch.tensor(weights), density, sign)
    got = ours(parts, method="ties", weights=weights, density=density,
               majority_sign_method=sign)
    assert_close(got, want)


@pytest.mark.filterwarnings("ignore:The density")
def test_ties_sign_election_is_unweighted_in_peft():
    # Ticket 0 is large and positive but weighted tiny; ticket 1 small, negative, weighted 1.
    # Unweighted total elects +: only ticket 0 survives (as 0.01·5 = 0.05).
    a = SparseDelta(np.array([0]), np.array([5.0]), 4)
    b = SparseDelta(np.array([0]), np.array([-1.0]), 4)
    want = merge_utils.ties(dense_4([a, b]), torch.tensor([0.01, 1.0]), 1.0, "total")
    got = merge_tensor("t", [a, b], MergeParams(method="ties", weights=(0.01, 1.0)))
    assert got.to_dense()[0] == pytest.approx(0.05) == float(want[0])


def dense_4(parts):
    return [torch.from_numpy(p.to_dense()) for p in parts]


class BernoulliFromTickets:
    """Stands in for ``torch.bernoulli``: call i returns ticket i's lotavec mask, densified."""

    def __init__(self, parts: list[SparseDelta], seed: int, densities: list[float]):
        self.masks = []
        rng = np.random.default_rng(99)
        for i, p in enumerate(parts):
            full = (rng.random(p.numel) < 0.5).astype(np.float32)  # off-support: irrelevant
            full[p.indices] = dare_keep_mask(seed, i, NAME, p.nnz, densities[i])
            self.masks.append(torch.from_numpy(full.reshape(SHAPE)))
        self.calls = 0

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        mask = self.masks[self.calls]
        self.calls += 1
        assert probs.shape == mask.shape
        return mask


@pytest.mark.parametrize(("method", "sign"), [("dare_linear", None), ("dare_ties", "total"),
                                              ("dare_ties", "frequency")])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_dare(monkeypatch, weights, density, method, sign):
    parts = make_tickets(4, len(weights))
    seed = 1234
    fake = BernoulliFromTickets(parts, seed, [density] * len(parts))
    monkeypatch.setattr(torch, "bernoulli", fake)
    tw = torch.tensor(weights)
    if method == "dare_linear":
        want = merge_utils.dare_linear(dense(parts), tw, density)
        kw = {}
    else:
        want = merge_utils.dare_ties(dense(parts), tw, density, sign)
        kw = {"majority_sign_method": sign}
    assert fake.calls == len(parts)
    got = ours(parts, method=method, weights=weights, density=density, seed=seed, **kw)
    assert_close(got, want)
    # the masks matter: a different seed gives a different merge
    other = ours(parts, method=method, weights=weights, density=density, seed=seed + 1, **kw)
    assert not np.array_equal(other, got)
