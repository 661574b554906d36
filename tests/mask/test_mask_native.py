"""The compiled selection (lotavec/_csrc/select.c) against the numpy engine, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from mask_helpers import brute_tie_rule

from lotavec import native
from lotavec.errors import SelectionError
from lotavec.extraction import _abs_delta
from lotavec.mask import Candidate, _native, iter_topk, iter_values, select_changed, select_topk

pytestmark = pytest.mark.skipif(
    native._load("select") is None, reason="compiled select kernels not built (tools/build_native.py select)"
)

DTYPES = ("BF16", "F16", "F32")


def _storage(dtype, n, rng, frac, step):
    """Base and fine-tuned storage arrays; ``frac`` of the entries moved by a few ulps or ``step``."""
    if dtype == "F32":
        b = rng.standard_normal(n).astype(np.float32)
        f = b.copy()
        m = rng.random(n) < frac
        f[m] += np.float32(step) * rng.integers(1, 4, m.sum()).astype(np.float32)
        return b, f
    if dtype == "BF16":
        b = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:  # every finite half bit pattern, subnormals included
        b = rng.integers(0, 0x7C00, n).astype(np.uint16) | (rng.integers(0, 2, n).astype(np.uint16) << 15)
    f = b.copy()
    m = rng.random(n) < frac
    f[m] += rng.integers(-2, 3, m.sum()).astype(np.uint16)  # small ulp moves: many equal deltas
    f[m & (f & 0x7C00 == 0x7C00)] = b[m & (f & 0x7C00 == 0x7C00)]  # stay finite (F16)
    return b, f.astype(np.uint16)


def make(dtype, sizes, seed=0, frac=0.3, step=0.25, excl=0):
    """Candidates with scores (numpy path) and pair (compiled path) over the same arrays."""
    rng = np.random.default_rng(seed)
    out, arrays, excludes = [], [], []
    for i, n in enumerate(sizes):
        b, f = _storage(dtype, n, rng, frac, step)
        if dtype == "F16":
            b, f = b.view(np.float16), f.view(np.float16)
        ex = np.unique(rng.integers(0, n, excl)) if excl and n else None
        s = _abs_delta(b, f, dtype)
        arrays.append(s)
        excludes.append(ex)
        out.append(Candidate(f"t{i}", n, lambda s=s: s.copy(), ex, pair=lambda b=b, f=f: (b, f, dtype)))
    return out, arrays, excludes


def both(monkeypatch, fn):
    """``fn()`` with the numpy engine, then with the compiled one."""
    monkeypatch.setenv(native.ENV, "0")
    ref = fn()
    monkeypatch.setenv(native.ENV, "1")
    return ref, fn()


def same(a, b):
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype == np.int64
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


def test_native_switch(monkeypatch):
    cands, _, _ = make("BF16", [10])
    monkeypatch.setenv(native.ENV, "0")
    assert not _native.usable(cands)
    monkeypatch.setenv(native.ENV, "1")
    assert _native.usable(cands)
    assert not _native.usable([Candidate("x", 3, lambda: np.zeros(3, np.float32))])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("excl", [0, 300])
@pytest.mark.parametrize("density", [0, 1e-4, 0.01, 0.1, 0.29, 0.5, 0.9, 1])
def test_global_and_tensor_scope_identical(monkeypatch, dtype, excl, density):
    cands, arrays, excludes = make(dtype, [5000, 0, 17, 12000, 3], seed=1, excl=excl)
    for scope in ("global", "tensor"):
        ref, got = both(monkeypatch, lambda scope=scope: select_topk(cands, density=density, scope=scope))
        same(ref, got)
        ref, got = both(monkeypatch, lambda scope=scope: dict(iter_topk(cands, density=density, scope=scope)))
        same(ref, got)
    got = select_topk(cands, density=density)
    want = brute_tie_rule(arrays, sum(g.size for g in got.values()), excludes)
    for w, g in zip(want, got.values()):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tie_split_across_candidates(monkeypatch, dtype):
    """Equal scores everywhere: the first ties in (candidate, flat index) order win."""
    cands, arrays, excludes = make(dtype, [3000, 2000, 4000], seed=2, frac=1.0, excl=100)
    passes = []
    orig = _native._scan_pass
    monkeypatch.setattr(_native, "_scan_pass", lambda c, mode, *a: passes.append(mode) or orig(c, mode, *a))
    for k in (1, 7, 1500, 2999, 3000, 3001, 5500, 8000):
        ref, got = both(monkeypatch, lambda k=k: select_topk(cands, k=k))
        same(ref, got)
        for w, g in zip(brute_tie_rule(arrays, k, excludes), got.values()):
            np.testing.assert_array_equal(g, w)
    assert 2 in passes  # the tie-counting pass ran (ties split between candidates)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold_zero_fills_with_first_zeros(monkeypatch, dtype):
    cands, arrays, excludes = make(dtype, [4000, 4000], seed=3, frac=0.05, excl=50)
    changed = sum(int(np.count_nonzero(a)) for a in arrays)
    for k in (changed - 1, changed, changed + 1, changed + 3000):
        ref, got = both(monkeypatch, lambda k=k: select_topk(cands, k=k))
        same(ref, got)
        for w, g in zip(brute_tie_rule(arrays, k, excludes), got.values()):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_changed_and_values_identical(monkeypatch, dtype):
    cands, _, _ = make(dtype, [3000, 1, 5000], seed=4, excl=200)
    ref, got = both(monkeypatch, lambda: select_changed(cands))
    same(ref, got)
    for values in ("raw", "ulpdiff"):
        for kw in ({"density": 0.05}, {"density": 0.05, "scope": "tensor"}, {"all_changed": True}):
            ref, got = both(monkeypatch, lambda values=values, kw=kw: list(iter_values(cands, values=values, **kw)))
            for (n1, i1, v1), (n2, i2, v2), c in zip(ref, got, cands):
                assert n1 == n2 == c.name
                np.testing.assert_array_equal(i1, i2)
                assert v1.dtype == v2.dtype and v1.dtype.itemsize == (4 if dtype == "F32" else 2)
                np.testing.assert_array_equal(v1, v2)
                b, f, _ = c.pair()
                fb = f.view(v1.dtype)[i1]
                want = fb if values == "raw" else fb - b.view(v1.dtype)[i1]
                np.testing.assert_array_equal(v2, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("where", ["first", "excluded"])
def test_nonfinite_raises_the_same_error(monkeypatch, dtype, bad, where):
    cands, _, _ = make(dtype, [2000, 3000], seed=5)
    b, f, _ = cands[1].pair()
    f = f.copy()
    pos = 1234
    if dtype == "F32":
        f[pos] = np.float32(bad)
    elif dtype == "F16":
        f[pos] = np.float16(bad)
    else:
        f[pos] = 0x7FC0 if bad == "nan" else 0x7F80
    ex = np.array([pos]) if where == "excluded" else None
    c = Candidate("t1", 3000, lambda: _abs_delta(b, f, dtype), ex, pair=lambda: (b, f, dtype))
    cands = [cands[0], c]
    for call in (lambda: select_topk(cands, density=0.1), lambda: select_topk(cands, density=0),
                 lambda: select_topk(cands, density=1), lambda: select_changed(cands),
                 lambda: select_topk(cands, density=0.1, scope="tensor")):
        msgs = []
        for env in ("0", "1"):
            monkeypatch.setenv(native.ENV, env)
            with pytest.raises(SelectionError, match="t1") as e:
                call()
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1]
        assert "1234" in msgs[1]
