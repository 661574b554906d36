"""Overlap report: pair counts, Jaccard, sign agreement, layers, TIES preview, streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lotavec.errors import DisjointnessError
from lotavec.merge.config import MergeParams
from lotavec.merge.methods import SparseDelta
from lotavec.merge.overlap import assert_disjoint, iter_tickets, layer_of, overlap_report


def sd(idx, vals, numel=10):
    return SparseDelta(np.array(idx, np.int64), np.array(vals, np.float32), numel)


Q0 = "model.layers.0.self_attn.q_proj.weight"
Q1 = "model.layers.1.self_attn.q_proj.weight"
HEAD = "lm_head.weight"

A = {Q0: sd([0, 1, 2, 3], [1, -1, 2, 5]), Q1: sd([5, 6], [1, 1]), HEAD: sd([9], [3])}
B = {Q0: sd([2, 3, 4], [-1, 4, 1]), Q1: sd([6, 7], [2, 2])}
C = {HEAD: sd([0], [1])}


def test_layer_of():
    assert layer_of(Q0) == "0" and layer_of("transformer.h.12.attn.c_attn.weight") == "12"
    assert layer_of("encoder.layer.3.output.dense.weight") == "3"
    assert layer_of(HEAD) == "other" and layer_of("model.embed_tokens.weight") == "other"
    assert layer_of("model.layers_norm.weight") == "other"


def test_pairs_tensors_layers():
    r = overlap_report(iter_tickets([A, B, C]), ["a", "b", "c"])
    assert r.nnz == (7, 5, 1) and not r.disjoint
    ab = r.pair(0, 1)
    # Q0 shares {2, 3} (signs disagree at 2, agree at 3); Q1 shares {6} (agree)
    assert (ab.intersection, ab.sign_agree, ab.union) == (3, 2, 9)
    assert ab.jaccard == pytest.approx(3 / 9) and ab.sign_agreement == pytest.approx(2 / 3)
    assert r.pair(2, 0).intersection == 0 and r.pair(0, 2).sign_agreement is None
    q0 = {(p.a, p.b): p for p in r.tensors[Q0]}
    assert (q0[(0, 1)].intersection, q0[(0, 1)].nnz_a, q0[(0, 1)].nnz_b) == (2, 4, 3)
    assert list(r.layers) == ["0", "1", "other"]
    other = {(p.a, p.b): p for p in r.layers["other"]}
    assert other[(0, 2)].nnz_a == 1 and other[(0, 2)].intersection == 0  # 9 vs 0: disjoint


def test_ties_preview():
    ties = MergeParams(method="ties", density=0.2)  # k = 2 of 10 entries
    r = overlap_report(iter_tickets([A, B]), ["a", "b"], ties=ties)
    # Q0: a keeps {2: 2, 3: 5} (trims 2); b's magnitudes are 1, 4, 1: it keeps entry 3 and,
    # of the tied entries 2 and 4, the lower one → {2: −1, 3: 4} (trims 1). Entry 2: 2 − 1 ≥ 0
    # elects +, so b's −1 is dropped. Q1 and the head: nnz ≤ k, nothing trimmed, signs agree.
    assert r.ties.trimmed == (2, 1) and r.ties.dropped == (0, 1)
    assert r.ties.per_tensor == {Q0: ((2, 1), (0, 1))}


def test_to_json_round_trips():
    r = overlap_report(iter_tickets([A, B]), ["a", "b"])
    d = json.loads(json.dumps(r.to_json()))
    assert d["tickets"] == ["a", "b"] and d["pairs"][0]["intersection"] == 3
    assert d["tensors"][Q0][0]["jaccard"] == pytest.approx(2 / 5)
    assert d["ties"]["params"]["method"] == "ties" and d["disjoint"] is False


def test_streams_one_tensor_at_a_time():
    seen, progress = [], []

    def stream():
        for name in (Q0, Q1):
            seen.append(name)
            yield name, [A[name], B[name]]

    r = overlap_report(stream(), ["a", "b"], progress=lambda *a: progress.append(a), total=2)
    assert seen == [Q0, Q1] and progress == [("overlap", 1, 2), ("overlap", 2, 2)]
    assert r.pair(0, 1).intersection == 3


class LazyTicket(dict):
    """A mapping that records which tensors were decoded."""

    def __init__(self, data, log):
        super().__init__(data)
        self.log = log

    def __getitem__(self, key):
        self.log.append(key)
        return super().__getitem__(key)


def test_iter_tickets_is_lazy():
    log = []
    it = iter_tickets([LazyTicket(A, log), LazyTicket(B, log)])
    name, parts = next(it)
    assert name == Q0 and log == [Q0, Q0]
    assert parts[1] is B[Q0]
    rest = dict(it)
    assert rest[HEAD][1] is None


def test_assert_disjoint():
    assert_disjoint(iter_tickets([B, C]), ["b", "c"])
    with pytest.raises(DisjointnessError) as e:
        assert_disjoint(iter_tickets([A, B, C]), ["a", "b", "c"])
    msg = str(e.value)
    assert "3 entries in 2 tensors" in msg and f"{Q0}: a & b: 2" in msg
    assert e.value.overlaps == {Q0: {(0, 1): 2}, Q1: {(0, 1): 1}}
