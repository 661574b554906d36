"""Extraction with the compiled selection equals extraction with the numpy engine, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import lotavec
from lotavec import native

pytestmark = pytest.mark.skipif(
    native._load("select") is None, reason="compiled select kernels not built (tools/build_native.py select)"
)


def _content(t):
    return {n: (t[n].indices, t[n].payload, t[n].values, t[n].base_sample, t[n].base_digest) for n in t.names}


@pytest.mark.parametrize("kw", [{"density": 0.05}, {"density": 0.3}, {"density": 0.05, "scope": "tensor"},
                                {"all_changed": True}, {"density": 0.05, "values": "raw"}, {"density": 1.0},
                                {"density": 0.0}])
def test_native_and_numpy_tickets_identical(monkeypatch, tmp_path, tiny_pair, kw):
    base, ft = tiny_pair
    prior = tmp_path / "prior.lota"
    lotavec.extract(base, ft, prior, density=0.02)
    got = []
    for env in ("0", "1"):
        monkeypatch.setenv(native.ENV, env)
        r = lotavec.extract(base, ft, tmp_path / f"{env}.lota", disjoint_from=[prior], **kw)
        got.append((r.per_tensor, _content(r.ticket)))
    assert got[0][0] == got[1][0]
    a, b = got[0][1], got[1][1]
    assert list(a) == list(b)
    for n in a:
        for x, y in zip(a[n][:2], b[n][:2]):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y, err_msg=n)
        assert a[n][2:] == b[n][2:]
        assert a[n][4] is None  # no full digest unless asked


@pytest.mark.parametrize("env", ["0", "1"])
def test_full_digest_is_opt_in(monkeypatch, tmp_path, tiny_pair, env):
    from lotavec.format.fingerprint import base_digest
    from lotavec.models import open_model

    monkeypatch.setenv(native.ENV, env)
    base, ft = tiny_pair
    r = lotavec.extract(base, ft, tmp_path / "t.lota", density=0.05, full_digest=True)
    with open_model(base) as src:
        for n in r.ticket.names:
            assert r.ticket[n].base_digest == base_digest(src.array(n))
    r = lotavec.extract(base, ft, None, density=0.05)
    assert r.ticket.names and all(r.ticket[n].base_digest is None for n in r.ticket.names)
    assert all(r.ticket[n].base_sample for n in r.ticket.names)
