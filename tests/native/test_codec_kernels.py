"""The compiled codec and merge kernels (lotavec/_csrc/codec.c) against the numpy reference paths.

Every kernel has a numpy twin selected with ``LOTAVEC_NATIVE=0``; these tests run both on the same
inputs and require bit-identical results, including the error paths.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from lotavec import native
from lotavec.errors import CorruptTicketError
from lotavec.format import codecs
from lotavec.merge import MergeParams
from lotavec.merge.engine import merge_tensor_values
from lotavec.ticket import TicketTensor

pytestmark = pytest.mark.skipif(native.kernels("codec") is None,
                                reason="compiled kernels not built, or disabled with LOTAVEC_NATIVE=0")


def both(monkeypatch, fn):
    """``fn()`` with the kernels, then with the numpy paths."""
    monkeypatch.setenv(native.ENV, "1")
    a = fn()
    monkeypatch.setenv(native.ENV, "0")
    b = fn()
    monkeypatch.delenv(native.ENV)
    return a, b


def test_kernels_are_built_where_required():
    # ./dev test sets LOTAVEC_REQUIRE_NATIVE=1: CI must exercise the compiled paths, not fall back.
    if os.environ.get("LOTAVEC_REQUIRE_NATIVE") == "1":
        assert native.kernels("codec") is not None
        assert native.kernels("select") is not None


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(native.ENV, "0")
    assert native.kernels("codec") is None


@pytest.mark.parametrize("length,density", [(1, 1.0), (9, 0.5), (5000, 0.001), (5000, 0.1), (70000, 0.02),
                                            (1 << 16, 0.3), (300000, 0.0001), (4099, 0.6)])
def test_mask_decoders_agree(monkeypatch, length, density):
    rng = np.random.default_rng(length)
    nnz = max(1, int(length * density))
    local = np.sort(rng.choice(length, nnz, replace=False)).astype(np.int64)
    streams = [codecs.encode_gaps(local), ("bitmap", codecs.encode_bitmap(local, length))]
    for codec, data in streams:
        for offset, out in ((0, None), (12345, np.empty(nnz, np.int64))):
            a, b = both(monkeypatch, lambda codec=codec, data=data, offset=offset, out=out: codecs.decode_mask(
                codec, data, nnz, length, "t", None if out is None else out.copy(), offset).copy())
            assert a.dtype == b.dtype == np.int64
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, local + offset)


@pytest.mark.parametrize("codec", ["gaps8", "gaps16", "gaps32", "bitmap"])
def test_mask_decoders_reject_the_same_corruption(monkeypatch, codec):
    length = 1000
    local = np.arange(0, 1000, 7, dtype=np.int64)
    if codec == "bitmap":
        data = codecs.encode_bitmap(local, length)
        bad = [(local.size + 1, length, "set bits")]  # popcount differs from nnz
    else:
        width = {"gaps8": 1, "gaps16": 2, "gaps32": 4}[codec]
        gaps = np.full(local.size, 6, dtype=f"<u{width}")
        gaps[-1] = 200  # walks past the chunk end
        data = codecs.zstd_compress(codecs.shuffle(gaps))
        bad = [(local.size, length, "out of range")]
    for nnz, ln, msg in bad:
        for env in ("1", "0"):
            monkeypatch.setenv(native.ENV, env)
            with pytest.raises(CorruptTicketError, match=msg):
                codecs.decode_mask(codec, data, nnz, ln, "t")


@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<f4"])
@pytest.mark.parametrize("zigzag", [False, True])
def test_unshuffle_agrees(monkeypatch, dtype, zigzag):
    if zigzag and dtype == "<f4":
        pytest.skip("zigzag applies to unsigned patterns")
    rng = np.random.default_rng(1)
    v = rng.integers(0, 1 << 16, 10001).astype(dtype) if dtype != "<f4" else rng.standard_normal(10001).astype(dtype)
    raw = codecs.shuffle(v)
    a, b = both(monkeypatch, lambda: codecs.unshuffle(raw, np.dtype(dtype), v.size, zigzag=zigzag).copy())
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    want = codecs.unzigzag(v, 8 * v.dtype.itemsize) if zigzag else v
    np.testing.assert_array_equal(a.view(np.uint8), want.view(np.uint8))


def _tensor(rng, name, base, density, values, dtype):
    idx = np.sort(rng.choice(base.size, int(base.size * density), replace=False)).astype(np.int64)
    bits = base.view(np.uint32 if base.dtype == np.float32 else np.uint16)
    ft = (bits.reshape(-1)[idx] + rng.integers(1, 40, idx.size).astype(bits.dtype)).view(base.dtype)
    return TicketTensor.from_finetuned(name, base, ft, idx, dtype, values=values)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("values", ["ulpdiff", "raw"])
@pytest.mark.parametrize("n_tickets", [1, 2, 3])
def test_exact_sum_agrees(monkeypatch, dtype, values, n_tickets):
    rng = np.random.default_rng(n_tickets)
    storage = np.uint16 if dtype != "F32" else np.uint32
    f = rng.standard_normal(3000).astype(np.float32) * 0.05
    if dtype == "BF16":
        base = (f.view(np.uint32) >> 16).astype(np.uint16)
    elif dtype == "F16":
        base = f.astype(np.float16)
    else:
        base = f
    base = base.reshape(60, 50)
    parts = [_tensor(rng, "w", base, 0.3, values, dtype) for _ in range(n_tickets)]
    params = MergeParams(method="sum", weights=(1.0,) * n_tickets)
    a, b = both(monkeypatch, lambda: merge_tensor_values("w", base, dtype, dtype, parts, params, None))
    np.testing.assert_array_equal(a[0].view(np.uint8), b[0].view(np.uint8))
    assert a[1] == b[1]
    if n_tickets == 1:  # the fine-tuned bits exactly
        out = a[0].reshape(-1).view(storage)
        np.testing.assert_array_equal(out[parts[0].indices], parts[0].finetuned(base.reshape(-1)[parts[0].indices]).view(storage))


def test_exact_sum_refuses_non_finite_results_on_both_paths(monkeypatch):
    base = np.full(100, 0x7F7F, np.uint16)  # bf16 just below +inf
    idx = np.array([3, 50], np.int64)
    tt = TicketTensor("w", (100,), "BF16", idx, "ulpdiff", np.array([1, 0], np.uint16))
    params = MergeParams(method="sum", weights=(1.0,))
    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        with pytest.raises(CorruptTicketError, match="non-finite"):
            merge_tensor_values("w", base, "BF16", "BF16", [tt], params, None)


def test_two_ticket_overflow_refused_on_both_paths(monkeypatch):
    from lotavec.errors import MergeConfigError

    base = np.full(64, 0x7F00, np.uint16)  # bf16 ≈ 1.7e38; each ticket alone stays finite
    idx = np.arange(0, 64, 2, dtype=np.int64)
    t1 = TicketTensor("w", (64,), "BF16", idx, "ulpdiff", np.full(idx.size, 0x70, np.uint16))
    t2 = TicketTensor("w", (64,), "BF16", idx, "ulpdiff", np.full(idx.size, 0x70, np.uint16))
    params = MergeParams(method="sum", weights=(1.0, 1.0))
    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        with pytest.raises(MergeConfigError, match="overflow"):
            merge_tensor_values("w", base, "BF16", "BF16", [t1, t2], params, None)


@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<f4"])
@pytest.mark.parametrize("zz", [False, True])
def test_shuffle_agrees(monkeypatch, dtype, zz):
    if zz and dtype == "<f4":
        pytest.skip("zigzag applies to integer patterns")
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype) if dtype != "<f4" else None
    v = (rng.integers(0, int(info.max) + 1, 7777, dtype=np.uint64).astype(dtype) if info
         else rng.standard_normal(7777).astype(dtype))
    if info:
        v[:4] = (0, 1, info.max, info.max >> 1)  # zigzag edge cases
    a, b = both(monkeypatch, lambda: codecs.shuffle(v, zigzag=zz).copy())
    np.testing.assert_array_equal(a, b)
    # and it inverts
    back = codecs.unshuffle(a, np.dtype(dtype), v.size, zigzag=zz)
    np.testing.assert_array_equal(back.view(np.uint8), v.view(np.uint8))


@pytest.mark.parametrize("gap", [3, 300, 70000])
def test_gap_encoder_agrees(monkeypatch, gap):
    rng = np.random.default_rng(gap)
    start = 1 << 20
    idx = start + np.cumsum(rng.integers(1, gap + 2, 5000)).astype(np.int64) - 1
    a, b = both(monkeypatch, lambda: codecs.encode_gaps(idx, start))
    assert a[0] == b[0] and a[0] == ("gaps8" if gap < 255 else "gaps16" if gap < 65535 else "gaps32")
    dec = [codecs.decode_mask(c, d, idx.size, int(idx[-1] - start + 1), "t", None, start) for c, d in (a, b)]
    np.testing.assert_array_equal(dec[0], idx)
    np.testing.assert_array_equal(dec[1], idx)


def test_index_validation_on_both_paths(monkeypatch):
    from lotavec.errors import FormatError
    from lotavec.format.writer import check_indices

    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        check_indices("w", np.array([0, 5, 9], np.int64), 10)
        for bad, msg in (([0, 5, 5], "increasing"), ([3, 2], "increasing"), ([0, 10], "range"), ([-1, 2], "range")):
            with pytest.raises(FormatError, match=msg):
                check_indices("w", np.array(bad, np.int64), 10)


def _consensus_case(dtype, n_tickets, seed=0, numel=4000):
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal(numel) * 0.05).astype(np.float32)
    base = (f.view(np.uint32) >> 16).astype(np.uint16) if dtype == "BF16" else f
    base = base.reshape(40, numel // 40)
    parts = []
    for t in range(n_tickets):
        idx = np.sort(rng.choice(numel, int(numel * 0.3), replace=False)).astype(np.int64)
        bits = base.reshape(-1).view(np.uint16 if dtype == "BF16" else np.uint32)
        step = rng.integers(-60, 60, idx.size)
        ft = (bits[idx].astype(np.int64) + step).astype(bits.dtype)
        if t == 1:
            ft[: idx.size // 10] = bits[idx[: idx.size // 10]]  # some zero deltas
        parts.append(TicketTensor.from_finetuned("w", base, ft.view(base.dtype), idx, dtype,
                                                 values="raw" if t == 2 else "ulpdiff"))
    return base, parts


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
@pytest.mark.parametrize("n_tickets", [1, 2, 3])
@pytest.mark.parametrize("kw", [
    dict(method="ties", density=0.1),
    dict(method="ties", density=0.1, semantics="mergekit"),
    dict(method="ties", density=0.2, semantics="mergekit", normalize=False, lambda_=0.7),
    dict(method="ties", density=0.1, majority_sign_method="frequency", weights="w"),
    dict(method="ties", density=0.1, semantics="mergekit", weights="w", lambda_=1.5),
    dict(method="dare_ties", density=0.5, seed=3),
    dict(method="dare_ties", density=0.5, seed=3, semantics="mergekit", weights="w"),
])
def test_consensus_agrees(monkeypatch, dtype, n_tickets, kw):
    base, parts = _consensus_case(dtype, n_tickets, seed=n_tickets)
    kw = dict(kw)
    if kw.get("weights") == "w":
        kw["weights"] = tuple([0.6, -0.3, 1.2][:n_tickets])
    params = MergeParams(**kw)
    a, b = both(monkeypatch, lambda: merge_tensor_values("w", base, dtype, dtype, parts, params, None))
    np.testing.assert_array_equal(a[0].view(np.uint8), b[0].view(np.uint8))
    assert a[1] == b[1] and a[1] > 0


def test_consensus_with_global_trims_agrees(monkeypatch, tmp_path):
    # scope=global passes the engine's per-ticket kept indices to the trim: same result both ways
    from lotavec.merge.engine import _global_trims

    class Src:
        def __init__(self, arr):
            self.arr = arr

        def array(self, n):
            return self.arr

    base, parts = _consensus_case("BF16", 2, seed=5)
    from lotavec.ticket import Ticket

    tks = [Ticket([p]) for p in parts]
    params = MergeParams(method="ties", density=0.1, scope="global", semantics="mergekit")
    trims = _global_trims(tks, Src(base), params)
    a, b = both(monkeypatch, lambda: merge_tensor_values("w", base, "BF16", "BF16", parts, params, trims))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_consensus_overflow_refused_on_both_paths(monkeypatch):
    from lotavec.errors import MergeConfigError

    base = np.full(64, 0x7F70, np.uint16)
    idx = np.arange(0, 64, 2, dtype=np.int64)
    t1 = TicketTensor("w", (64,), "BF16", idx, "ulpdiff", np.full(idx.size, 0x05, np.uint16))
    params = MergeParams(method="ties", density=1.0, lambda_=20.0)
    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        with pytest.raises(MergeConfigError, match="overflow"):
            merge_tensor_values("w", base, "BF16", "BF16", [t1], params, None)


@pytest.mark.parametrize("n,k", [(10, 3), (1000, 1), (1000, 999), (70000, 3500), (5000, 2500)])
def test_trim_keep_agrees_with_ties(monkeypatch, n, k):
    from lotavec.merge.methods import trim_keep

    rng = np.random.default_rng(n + k)
    v = (rng.integers(-20, 21, n) * 0.125).astype(np.float32)  # many equal magnitudes, both signs, zeros
    v[::7] = -0.0
    a, b = both(monkeypatch, lambda: trim_keep(v, k))
    np.testing.assert_array_equal(a, b)
    assert a.size == k and np.all(np.diff(a) > 0)
    w = rng.standard_normal(n).astype(np.float32)
    a, b = both(monkeypatch, lambda: trim_keep(w, k))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, 1])
def test_two_ticket_non_finite_refused_on_both_paths(monkeypatch, bad):
    base = np.full(100, 0x7F7F, np.uint16)
    idx = np.array([3, 50, 70], np.int64)
    pls = [np.zeros(3, np.uint16), np.zeros(3, np.uint16)]
    pls[bad][1] = 1  # that ticket's fine-tuned value at 50 is +inf
    tks = [TicketTensor("w", (100,), "BF16", idx if k == 0 else idx + 1, "ulpdiff", pls[k]) for k in (0, 1)]
    params = MergeParams(method="sum", weights=(1.0, 1.0))
    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        with pytest.raises(CorruptTicketError, match="non-finite"):
            merge_tensor_values("w", base, "BF16", "BF16", tks, params, None)


@pytest.mark.parametrize("dtype", ["BF16", "F32", "F16"])
@pytest.mark.parametrize("values", ["ulpdiff", "raw"])
def test_apply_to_agrees(monkeypatch, dtype, values):
    base, parts = _consensus_case(dtype if dtype != "F16" else "F32", 1, seed=7)
    if dtype == "F16":
        b16 = base.astype(np.float16)
        idx = parts[0].indices
        ft = (b16.reshape(-1)[idx].view(np.uint16) + np.uint16(3)).view(np.float16)
        tt, base = TicketTensor.from_finetuned("w", b16, ft, idx, "F16", values=values), b16
    else:
        tt = parts[0] if values == parts[0].values else TicketTensor.from_finetuned(
            "w", base, parts[0].finetuned(base.reshape(-1)[parts[0].indices]), parts[0].indices, dtype, values=values)

    def run():
        flat = base.reshape(-1).copy()
        tt.apply_to(flat)
        return flat

    a, b = both(monkeypatch, run)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_apply_to_refuses_non_finite_without_writing(monkeypatch):
    base = np.full(100, 0x3F80, np.uint16)
    base[50] = 0x7F7F
    idx = np.array([3, 50, 70], np.int64)
    tt = TicketTensor("w", (100,), "BF16", idx, "ulpdiff", np.array([1, 1, 1], np.uint16))
    for env in ("1", "0"):
        monkeypatch.setenv(native.ENV, env)
        flat = base.copy()
        with pytest.raises(CorruptTicketError, match="non-finite"):
            tt.apply_to(flat)
        np.testing.assert_array_equal(flat, base)  # nothing written, not even entry 3


def _through_sink(tmp_path, base, dtype, parts, params, offset=123):
    """merge_tensor_values writing through a Sink into a file at ``offset``: (file bytes, changed)."""
    from lotavec.merge.engine import Sink

    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        sink = Sink(fd, offset, np.empty(native.WINDOW * 4, np.uint8), native.Mutex())
        arr, changed = merge_tensor_values("w", base, dtype, dtype, parts, params, None, sink=sink)
    finally:
        os.close(fd)
    assert arr is None  # the kernel wrote it
    data = path.read_bytes()
    assert len(data) == offset + base.nbytes
    return data[offset:], changed


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("n_tickets", [1, 2])
def test_exact_sum_through_a_sink_writes_what_it_would_return(tmp_path, dtype, n_tickets):
    # 2.3 windows: full windows, a partial last one, blocks that no ticket touches
    rng = np.random.default_rng(5)
    numel = native.WINDOW * 2 + 70_001
    f = (rng.standard_normal(numel) * 0.05).astype(np.float32)
    base = {"BF16": (f.view(np.uint32) >> 16).astype(np.uint16), "F16": f.astype(np.float16), "F32": f}[dtype]
    if dtype == "F16" and n_tickets == 2:
        pytest.skip("two F16 tickets take the counting kernel, which returns an array")
    parts = [_tensor(rng, "w", base, 0.05, "ulpdiff" if t == 0 else "raw", dtype) for t in range(n_tickets)]
    params = MergeParams(method="sum", weights=(1.0,) * n_tickets)
    want, changed = merge_tensor_values("w", base, dtype, dtype, parts, params, None)
    got, changed_sink = _through_sink(tmp_path, base, dtype, parts, params)
    assert got == np.ascontiguousarray(want).tobytes()
    assert changed_sink == changed > 0


@pytest.mark.parametrize("kw", [dict(method="ties", density=0.1, semantics="mergekit"),
                                dict(method="dare_ties", density=0.5, seed=3)])
def test_consensus_through_a_sink_writes_what_it_would_return(tmp_path, kw):
    base, parts = _consensus_case("BF16", 2, seed=4, numel=40 * 14_000)  # 2.1 windows
    params = MergeParams(**kw)
    want, changed = merge_tensor_values("w", base, "BF16", "BF16", parts, params, None)
    got, changed_sink = _through_sink(tmp_path, base, "BF16", parts, params, offset=7)
    assert got == np.ascontiguousarray(want).tobytes()
    assert changed_sink == changed > 0


def test_a_failed_kernel_write_raises_os_error(tmp_path):
    from lotavec.merge.engine import Sink

    rng = np.random.default_rng(0)
    base = (rng.standard_normal(1000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    parts = [_tensor(rng, "w", base, 0.1, "ulpdiff", "BF16")]
    (tmp_path / "ro.bin").write_bytes(b"")
    fd = os.open(tmp_path / "ro.bin", os.O_RDONLY)  # pwrite fails with EBADF
    try:
        sink = Sink(fd, 0, np.empty(native.WINDOW * 4, np.uint8), None)
        with pytest.raises(OSError, match="tensor 'w': writing the merged tensor failed"):
            merge_tensor_values("w", base, "BF16", "BF16", parts, MergeParams(), None, sink=sink)
    finally:
        os.close(fd)


def test_mutex_is_shared_by_python_and_kernels():
    import threading

    m = native.Mutex()
    order = []

    def other():
        with m:
            order.append("other")

    with m:
        t = threading.Thread(target=other)
        t.start()
        t.join(0.2)
        assert t.is_alive()  # waits for the lock held here
        order.append("main")
    t.join(5)
    assert order == ["main", "other"]


@pytest.mark.parametrize("clmul", [1, 0])
def test_crc32_is_zlibs(clmul):
    import zlib

    lib = native.kernels("codec")
    rng = np.random.default_rng(1)
    for n in [*range(0, 200), 1000, 4097, 65536 + 7, 1 << 20]:
        b = rng.integers(0, 256, n, dtype=np.uint8)
        for init in (0, 12345, 0xFFFFFFFF):
            assert lib.lv_crc32(native.ptr(b) if n else None, n, init, clmul) == zlib.crc32(b.tobytes(), init), (n, init)


def test_crc32_helper_agrees_on_both_paths(monkeypatch):
    import zlib

    data = np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    a, b = both(monkeypatch, lambda: (codecs.crc32(data), codecs.crc32(memoryview(data)[7:4000], 99),
                                      codecs.crc32(b"")))
    assert a == b == (zlib.crc32(data), zlib.crc32(data[7:4000], 99), 0)


def _gap_case(tmp_path, dtypes, n_tickets, seed, bitmap):
    """A base folder and tickets whose chunks use the mask codecs none, all, gaps8/16/32 (and
    bitmap, for the last chunk, with ``bitmap``)."""
    import torch
    from safetensors.torch import save_file

    from lotavec.ticket import Ticket

    rng = np.random.default_rng(seed)
    numel = 6 * (1 << 17) + 12_345  # three windows and more; chunks of 2**17 elements
    base = {}
    for k, dt in enumerate(dtypes):
        f = (rng.standard_normal(numel) * 0.05).astype(np.float32)
        base[f"w{k}"] = (f.view(np.uint32) >> 16).astype(np.uint16) if dt == "BF16" else f
    folder = tmp_path / "base"
    folder.mkdir()
    save_file({n: (torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == np.uint16 else
                   torch.from_numpy(a)) for n, a in base.items()}, folder / "model.safetensors")
    ce = 1 << 17
    paths = []
    for t in range(n_tickets):
        parts = []
        for k, (n, a) in enumerate(base.items()):
            pieces = [np.empty(0, np.int64),                                              # chunk 0: none
                      ce + np.arange(ce, dtype=np.int64),                                 # chunk 1: all
                      2 * ce + np.sort(rng.choice(ce, ce // 10, replace=False)),          # gaps8
                      3 * ce + np.sort(rng.choice(ce, 40, replace=False)),                # gaps16
                      4 * ce + np.array([3, 100_000], np.int64),                          # gaps32
                      5 * ce + np.sort(rng.choice(numel - 5 * ce, (numel - 5 * ce) // (2 if bitmap else 20),
                                                  replace=False))]
            if t == 1:
                pieces[2] = 2 * ce + np.sort(rng.choice(ce, ce // 10, replace=False))  # overlaps ticket 0 in part
            idx = np.concatenate(pieces).astype(np.int64)
            bits = a.view(np.uint16 if a.dtype == np.uint16 else np.uint32)
            ft = (bits[idx] + rng.integers(1, 30, idx.size).astype(bits.dtype)).view(a.dtype)
            dt = dtypes[k]
            parts.append(TicketTensor.from_finetuned(n, a, ft, idx, dt, values="raw" if (t + k) % 2 else "ulpdiff"))
        p = tmp_path / f"t{t}.lotavec.safetensors"
        Ticket(parts).save(p, chunk_elements=ce)
        paths.append(p)
    return folder, paths


def _choose_decoder(monkeypatch, gate: str, coded: str) -> None:
    """``_MergeJobs``: the whole merge on C threads (the job table); ``gate == coded``: one tensor
    at a time, its chunks decoded in C; else the Python codecs decode and ``gate`` decides. The
    first two are skipped without libzstd.so.1."""
    import lotavec.merge.engine as eng

    if gate in ("_MergeJobs", coded) and not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available")
    if gate != "_MergeJobs":
        monkeypatch.setattr(eng._MergeJobs, "plan", classmethod(lambda cls, *a, **k: None))
    if gate not in ("_MergeJobs", coded):
        monkeypatch.setattr(eng, coded, lambda *a, **k: None)


def _merge_fast_and_numpy(monkeypatch, tmp_path, folder, paths, gate: str, params=None, jobs=None):
    """Merge with the compiled kernels (recording, per touched tensor, whether the engine's
    ``gate`` function chose the gap-reading path, or for ``_MergeJobs`` whether the C threads
    merged it: ``jobs`` is the ``merge_jobs`` record), then with the numpy paths. Returns
    ``(fast result, numpy result, gate choices)``."""
    import lotavec.merge.engine as eng
    from lotavec.merge import merge

    used = []
    if gate != "_MergeJobs":
        real = getattr(eng, gate)

        def spy(*a, **k):
            r = real(*a, **k)
            used.append(r is not None)
            return r

        monkeypatch.setattr(eng, gate, spy)
    fast = merge(folder, paths, tmp_path / "fast", params=params, fsync=False)
    if gate == "_MergeJobs":
        t = jobs[-1]
        used = [False] if t is None else [bool(st == 1) for kind, st in zip(t.table[:, t.KIND], t.table[:, t.STATE])
                                          if kind]
    monkeypatch.setenv(native.ENV, "0")
    slow = merge(folder, paths, tmp_path / "slow", params=params, fsync=False)
    monkeypatch.delenv(native.ENV)
    return fast, slow, used


@pytest.mark.parametrize("gate", ["_MergeJobs", "_coded_plan", "_gap_parts"])
@pytest.mark.parametrize("n_tickets,bitmap", [(1, False), (2, False), (2, True)])
def test_merge_reading_gap_coded_masks_matches_the_numpy_merge(monkeypatch, tmp_path, n_tickets, bitmap, gate,
                                                               merge_jobs):
    """``_MergeJobs``: the whole merge on C threads (lv_run_jobs); ``_coded_plan``: one tensor at a
    time, chunks decoded in C (lv_sum_coded); ``_gap_parts``: decoded by the Python codecs, masks
    left gap-coded (lv_sum2g). Either way the numpy merge's bytes."""
    _choose_decoder(monkeypatch, gate, "_coded_plan")
    folder, paths = _gap_case(tmp_path, ("BF16", "F32"), n_tickets, seed=n_tickets, bitmap=bitmap)
    fast, slow, used = _merge_fast_and_numpy(monkeypatch, tmp_path, folder, paths, gate, jobs=merge_jobs)
    # every tensor took the gate's kernel; with a bitmap chunk, none did (decoded indices)
    assert used and all(u != bitmap for u in used)
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == (tmp_path / "slow" / "model.safetensors").read_bytes()
    assert fast.changed_entries == slow.changed_entries > 0
    from lotavec.ticket import load_ticket

    codecs_seen = {c for p in paths for n in load_ticket(p).names for c in load_ticket(p).info(n)["mask_codecs"]}
    assert {"none", "all", "gaps8", "gaps16", "gaps32"} <= codecs_seen
    assert ("bitmap" in codecs_seen) == bitmap


def test_gap_planes_check_the_range_like_decode_mask():
    from lotavec.errors import CorruptTicketError as Corrupt

    codec, stream = codecs.encode_gaps(np.array([0, 5, 300], np.int64))
    assert codec == "gaps16"
    width, planes = codecs.gap_planes(codec, stream, 3, 301, "t")
    assert width == 2 and len(planes) == 6
    for fn in (lambda: codecs.gap_planes(codec, stream, 3, 300, "t"),
               lambda: codecs.decode_mask(codec, stream, 3, 300, "t")):
        with pytest.raises(Corrupt, match="mask index 300 is out of range"):
            fn()
    assert codecs.gap_planes("all", b"", 4, 4, "t") == (1, bytes(4))
    assert codecs.gap_planes("bitmap", b"", 0, 4, "t") is None


@pytest.mark.parametrize("density,semantics,bitmap,extra", [
    (0.05, "mergekit", False, {}), (0.05, "peft", False, {}), (0.5, "mergekit", False, {}),
    (0.05, "mergekit", True, {}), (0.05, "mergekit", False, {"lambda_": 0.7, "majority_sign_method": "frequency"}),
    (0.05, "mergekit", False, {"normalize": False})])
@pytest.mark.parametrize("gate", ["_MergeJobs", "_coded_trim_parts", "_trim_gap_parts"])
def test_ties_reading_gap_coded_masks_matches_the_numpy_merge(monkeypatch, tmp_path, density, semantics, bitmap,
                                                              extra, gate, merge_jobs):
    """TIES from gap-coded masks (lv_delta_hist_g + lv_topk_g, then the consensus kernel): the same
    bytes as the numpy merge, for a trim (k < stored entries) and for density 0.5 (k ≥ stored
    entries: every entry kept); with a bitmap chunk the decoded-index path is taken. The whole
    merge runs on C threads (``_MergeJobs``), or one tensor at a time with its chunks decoded in C
    (``_coded_trim_parts``) or by the Python codecs (``_trim_gap_parts``)."""
    _choose_decoder(monkeypatch, gate, "_coded_trim_parts")
    folder, paths = _gap_case(tmp_path, ("BF16", "F32"), 2, seed=7, bitmap=bitmap)
    params = MergeParams(method="ties", density=density, semantics=semantics, weights=(1.0, 0.7), **extra)
    fast, slow, used = _merge_fast_and_numpy(monkeypatch, tmp_path, folder, paths, gate, params, jobs=merge_jobs)
    assert used and all(u != bitmap for u in used)
    assert (tmp_path / "fast" / "model.safetensors").read_bytes() == (tmp_path / "slow" / "model.safetensors").read_bytes()
    assert fast.changed_entries == slow.changed_entries > 0


@pytest.mark.parametrize("width", [2, 4])
def test_delta_hist_and_topk_from_gaps_equal_delta_and_topk_abs(width):
    """lv_delta_hist_g + lv_topk_g on gap-coded chunks = lv_delta + lv_topk_abs on the decoded
    indices (deltas, selection with ties at the threshold, kept indices); a non-finite fine-tuned
    value is reported by its flat index."""
    import ctypes

    lib = native.kernels("codec")
    rng = np.random.default_rng(width)
    numel, ce = 300_000, 1 << 16
    bits_t = np.uint16 if width == 2 else np.uint32
    base = (rng.standard_normal(numel).astype(np.float32) * 0.05)
    base = (base.view(np.uint32) >> 16).astype(np.uint16) if width == 2 else base.view(np.uint32)
    idx = np.sort(rng.choice(numel, 40_000, replace=False)).astype(np.int64)
    pay = rng.integers(0, 4, idx.size).astype(bits_t)  # small ulp steps: many equal |delta| (ties)
    starts, counts, widths, planes = [], [], [], []
    for c0 in range(0, numel, ce):
        sel = idx[(idx >= c0) & (idx < c0 + ce)] - c0
        codec, stream = codecs.encode_gaps(sel) if sel.size else ("none", b"")
        if sel.size:
            w, pl = codecs.gap_planes(codec, stream, sel.size, min(ce, numel - c0), "t")
        else:
            w, pl = 1, b""
        starts.append(c0), counts.append(sel.size), widths.append(w), planes.append(np.frombuffer(pl, np.uint8))
    starts, counts, widths = (np.array(starts, np.int64), np.array(counts, np.int64), np.array(widths, np.int32))
    ptrs = (ctypes.c_void_p * len(planes))(*[native.ptr(p) if p.size else None for p in planes])
    chunks = (len(planes), native.ptr(starts), native.ptr(counts), native.ptr(widths), ptrs)
    for mode in (0, 1):
        ref, d, hist = np.empty(idx.size, np.float32), np.empty(idx.size, np.float32), np.empty(1 << 16, np.uint32)
        assert lib.lv_delta(native.ptr(base), native.ptr(idx), native.ptr(pay), idx.size, width, mode, native.ptr(ref)) == -1
        assert lib.lv_delta_hist_g(native.ptr(base), *chunks, native.ptr(pay), width, mode, native.ptr(d),
                                   native.ptr(hist)) == -1
        assert np.array_equal(d.view(np.uint32), ref.view(np.uint32))
        for k in (1, 777, 20_000, idx.size - 1):
            want_pos, want_idx, want_val = np.empty(k, np.int64), np.empty(k, np.int64), np.empty(k, np.float32)
            h2 = np.empty(1 << 16, np.uint32)
            assert lib.lv_topk_abs(native.ptr(ref), idx.size, k, native.ptr(want_pos), native.ptr(h2), native.ptr(idx),
                                   native.ptr(want_idx), native.ptr(want_val)) == k
            for idx_t in (np.int64, np.int32):
                lib.lv_delta_hist_g(native.ptr(base), *chunks, native.ptr(pay), width, mode, native.ptr(d),
                                    native.ptr(hist))
                got_idx, got_val = np.empty(k, idx_t), np.empty(k, np.float32)
                assert lib.lv_topk_g(native.ptr(d), idx.size, k, native.ptr(hist), *chunks, native.ptr(got_idx),
                                     native.ptr(got_val), int(idx_t == np.int32)) == k
                assert np.array_equal(got_idx, want_idx)
                assert np.array_equal(got_val.view(np.uint32), want_val.view(np.uint32))
    bad = pay.copy()
    inf = 0x7F80 if width == 2 else 0x7F800000
    bad[12_345] = inf  # raw mode: this entry's fine-tuned value is +Inf
    d, hist = np.empty(idx.size, np.float32), np.empty(1 << 16, np.uint32)
    assert lib.lv_delta_hist_g(native.ptr(base), *chunks, native.ptr(bad), width, 1, native.ptr(d),
                               native.ptr(hist)) == idx[12_345]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float64])
@pytest.mark.parametrize("numel", [0, 1, 4095, 4096, 4097, 100_003])
def test_sampled_fingerprint_gather_matches_numpy(monkeypatch, dtype, numel):
    from lotavec.format.fingerprint import base_sample

    a = np.random.default_rng(numel).integers(0, 250, numel).astype(dtype)
    fast, slow = both(monkeypatch, lambda: base_sample(a))
    assert fast == slow
