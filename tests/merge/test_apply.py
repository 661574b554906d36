"""In-memory ``apply`` / ``unapply`` properties on tiny models (bf16 and fp32; ``nn.Module`` and
state dicts): apply∘unapply restores every bit for any weight and codec, weight 1 gives the
fine-tuned bits, negation cancels (exactly for weight ±1, within one rounding otherwise), the
result is linear in the weight within float tolerance, and double applies are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import lotavec
from lotavec.errors import BaseMismatchError, FingerprintMismatchError, NotFoundError
from lotavec.ticket import Ticket
from lotavec.torchio import to_storage

CODECS = ("ulpdiff", "raw", "f32delta")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


def snapshot(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def assert_same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        assert torch.equal(bits(a[n]), bits(b[n])), n


def as_f32delta(ticket: Ticket, base_sd: dict) -> Ticket:
    """The same ticket with its values as float32 deltas (``f32delta`` codec), in memory."""
    out = []
    for tt in ticket:
        arr, _ = to_storage(base_sd[tt.name])
        out.append(dataclasses.replace(tt, values="f32delta", payload=tt.delta(np.take(arr.reshape(-1), tt.indices))))
    return Ticket(out)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_pair):
    """``{dtype: (base_dir, ft_dir, {codec: Ticket})}`` for bf16 and fp32 tiny llamas."""
    from lotavec.testing import make_finetuned, make_tiny_model

    root = tmp_path_factory.mktemp("apply")
    make_tiny_model("llama", root / "b32", dtype="float32", seed=0)
    make_finetuned(root / "b32", root / "f32", density=0.1, seed=1)
    out = {}
    for dt, (b, f) in {"bf16": tiny_pair, "fp32": (root / "b32", root / "f32")}.items():
        tks = {}
        for codec in ("ulpdiff", "raw"):
            path = root / f"{dt}_{codec}.lota"
            lotavec.extract(b, f, path, density=0.05, values=codec)
            tks[codec] = lotavec.load_ticket(path)
        tks["f32delta"] = as_f32delta(tks["ulpdiff"], load_file(b / "model.safetensors"))
        out[dt] = (b, f, tks)
    return out


#: State dicts stay alive for the module: apply() remembers dicts by id(), so a dropped dict with a
#: ticket applied could otherwise be mistaken for a new one (see test_a_dropped_state_dict...).
_KEEP: list[dict] = []


def state(folder) -> dict:
    sd = load_file(folder / "model.safetensors")
    _KEEP.append(sd)
    return sd


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_apply_then_unapply_is_identity(pairs, dtype, codec, weight):
    base, _, tks = pairs[dtype]
    sd = state(base)
    before = snapshot(sd)
    lotavec.apply(sd, tks[codec], weight)
    changed = sum(int((bits(sd[n]) != bits(before[n])).sum()) for n in sd)
    assert changed > 0.9 * tks[codec].nnz  # it really did something
    lotavec.unapply(sd, tks[codec])
    assert_same_bits(sd, before)


# Regression: apply() on F32/F16 models once handed the ticket bit patterns instead of floats.


def value_cases():
    for dtype in ("bf16", "fp32"):
        for codec in CODECS:
            for weight in (1.0, 0.5, -2.0):
                yield pytest.param(dtype, codec, weight, id=f"{dtype}-{codec}-{weight}")


@pytest.mark.parametrize("dtype, codec, weight", list(value_cases()))
def test_applied_values(pairs, dtype, codec, weight):
    """On the ticket's entries: round(base + w·(ft − base)), i.e. ft's bits for w = 1; base elsewhere."""
    base, ft, tks = pairs[dtype]
    b, f = state(base), state(ft)
    sd = state(base)
    lotavec.apply(sd, tks[codec], weight)
    for n in b:
        want = b[n].reshape(-1).clone()
        if n in tks[codec]:
            idx = torch.from_numpy(tks[codec].indices(n))
            bf, ff = b[n].reshape(-1)[idx].float(), f[n].reshape(-1)[idx].float()
            want[idx] = f[n].reshape(-1)[idx] if weight == 1.0 else (bf + weight * (ff - bf)).to(b[n].dtype)
        assert torch.equal(bits(sd[n]), bits(want)), n


@pytest.mark.parametrize("dtype, codec", [
    (d, c)
    for d in ("bf16", "fp32") for c in CODECS])
def test_weight_one_gives_the_finetuned_bits_and_unapply_restores_a_module(pairs, dtype, codec):
    from transformers import AutoModelForCausalLM

    base, ft, tks = pairs[dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    before = snapshot(model.state_dict())
    lotavec.apply(model, tks[codec])
    f, b = state(ft), state(base)
    sd = model.state_dict()
    for n in b:
        want = bits(b[n]).clone()
        if n in tks[codec]:
            idx = torch.from_numpy(tks[codec].indices(n))
            want[idx] = bits(f[n])[idx]
        assert torch.equal(bits(sd[n]), want), n
    lotavec.unapply(model, tks[codec])
    assert_same_bits(model.state_dict(), before)
    assert not getattr(model, "_lotavec_undo", {})  # nothing left behind


@settings(max_examples=25, deadline=None)
@given(weight=st.floats(-4, 4, allow_nan=False, width=32), codec=st.sampled_from(CODECS),
       dtype=st.sampled_from(["bf16", "fp32"]))
def test_apply_unapply_identity_any_weight(pairs, weight, codec, dtype):
    base, _, tks = pairs[dtype]
    sd = state(base)
    before = snapshot(sd)
    lotavec.apply(sd, tks[codec], weight)
    lotavec.unapply(sd, tks[codec])
    assert_same_bits(sd, before)


def test_hot_swap_two_tickets_one_at_a_time(pairs, tmp_path):
    """apply A, unapply A, apply B, unapply B on one module: each state is exact."""
    from transformers import AutoModelForCausalLM

    from lotavec.testing import make_finetuned

    base, ft, tks = pairs["bf16"]
    make_finetuned(base, tmp_path / "ft2", density=0.1, seed=2)
    lotavec.extract(base, tmp_path / "ft2", tmp_path / "b.lota", density=0.05)
    tb = lotavec.load_ticket(tmp_path / "b.lota")
    model = AutoModelForCausalLM.from_pretrained(base)
    before = snapshot(model.state_dict())
    ids = torch.arange(4, 36).reshape(1, 32)
    with torch.no_grad():
        lotavec.apply(model, tks["ulpdiff"])
        la = model(ids).logits
        lotavec.unapply(model, tks["ulpdiff"])
        lotavec.apply(model, tb)
        lb = model(ids).logits
        lotavec.unapply(model, tb)
        l0 = model(ids).logits
    assert_same_bits(model.state_dict(), before)
    assert not torch.equal(la, lb) and not torch.equal(la, l0)


def test_two_disjoint_tickets_in_memory(pairs, tmp_path):
    from lotavec.testing import make_finetuned

    base, _, tks = pairs["bf16"]
    make_finetuned(base, tmp_path / "ft2", density=0.1, seed=2)
    lotavec.extract(base, tmp_path / "ft2", tmp_path / "b.lota", density=0.05,
                    disjoint_from=[tks["ulpdiff"]])
    tb = lotavec.load_ticket(tmp_path / "b.lota")
    sd = state(base)
    before = snapshot(sd)
    lotavec.apply(sd, tks["ulpdiff"])
    lotavec.apply(sd, tb)
    lotavec.unapply(sd, tks["ulpdiff"])
    lotavec.unapply(sd, tb)
    assert_same_bits(sd, before)


def test_negation(pairs):
    """What holds when a ticket is added and then subtracted (f32delta: the delta is base-free).

    * weight 1 then −1: exact, because a lossless ticket's float32 delta is the exact difference
      of two bf16 values, so (b + δ) − δ = b without rounding;
    * weight w then −w: within one bf16 ulp of max(|b|, |b + wδ|) (two roundings);
    * an ulpdiff ticket's delta is defined against its own base: a second apply on the modified
      model is refused by the fingerprint check (use unapply, which is exact).
    """
    base, _, tks = pairs["bf16"]
    b = state(base)
    sd = state(base)
    lotavec.apply(sd, tks["f32delta"], 1.0)
    lotavec.apply(sd, as_f32delta(tks["ulpdiff"], b), -1.0, check_base=False)
    assert_same_bits(sd, b)
    for w in (0.3, 2.0, -1.7):
        sd = state(base)
        lotavec.apply(sd, tks["f32delta"], w)
        mid = snapshot(sd)
        lotavec.apply(sd, as_f32delta(tks["ulpdiff"], b), -w, check_base=False)
        exact = total = 0
        for n in tks["f32delta"].names:
            idx = torch.from_numpy(tks["f32delta"].indices(n))
            got, want, m = (x[n].reshape(-1)[idx].float() for x in (sd, b, mid))
            mag = torch.maximum(want.abs(), m.abs()).clamp_min(1e-30)
            ulp = torch.ldexp(torch.ones_like(mag), torch.frexp(mag).exponent - 8)  # bf16: 8 significant bits
            assert ((got - want).abs() <= ulp).all(), n
            exact += int((got == want).sum())
            total += idx.numel()
        assert 0.3 < exact / total < 1.0  # rounding shows, and is bounded
    sd = state(base)
    lotavec.apply(sd, tks["ulpdiff"], 1.0)
    with pytest.raises(BaseMismatchError):  # FingerprintMismatchError, or a refusal of the overlap
        lotavec.apply(sd, Ticket(list(tks["ulpdiff"])), -1.0)


@pytest.mark.parametrize("dtype, codec", [
    (d, c) for d in ("bf16", "fp32") for c in CODECS])
def test_linear_in_the_weight(pairs, dtype, codec):
    """apply(w) − base = w · δ within one ulp of max(|b + wδ|, |wδ|) (δ: the ticket's float32 delta;
    two roundings: w·δ in float32, then b + w·δ to the model's dtype)."""
    base, _, tks = pairs[dtype]
    b = state(base)
    one = state(base)
    lotavec.apply(one, tks[codec], 1.0)
    bits_kept = 8 if dtype == "bf16" else 24  # significant bits of the model's dtype
    for w in (0.25, 0.5, -1.0, 3.0):
        sd = state(base)
        lotavec.apply(sd, tks[codec], w)
        for n in tks[codec].names:
            delta = (one[n].float() - b[n].float()).double()
            got, want = sd[n].double() - b[n].double(), w * delta
            mag = torch.maximum((b[n].double() + want).abs(), want.abs()).clamp_min(1e-30)
            ulp = torch.ldexp(torch.ones_like(mag), torch.frexp(mag).exponent - bits_kept)
            bad = (got - want).abs() > ulp
            assert not bad.any(), (n, w, got[bad][:4], want[bad][:4])
            assert (got != 0).sum() > 0.5 * tks[codec].info(n)["nnz"], n  # the weight really acts


def test_double_apply_and_stray_unapply_refused(pairs):
    base, _, tks = pairs["bf16"]
    sd = state(base)
    lotavec.apply(sd, tks["ulpdiff"])
    snap = snapshot(sd)
    with pytest.raises(BaseMismatchError, match="already applied"):
        lotavec.apply(sd, tks["ulpdiff"])
    with pytest.raises(BaseMismatchError, match="already applied"):
        lotavec.apply(sd, tks["ulpdiff"].path, 0.5)  # the same file, by path
    assert_same_bits(sd, snap)  # refusals change nothing
    lotavec.unapply(sd, tks["ulpdiff"])
    with pytest.raises(NotFoundError, match="not applied"):
        lotavec.unapply(sd, tks["ulpdiff"])
    with pytest.raises(NotFoundError, match="not applied"):
        lotavec.unapply(state(base), tks["raw"])


def test_a_dropped_state_dict_does_not_haunt_a_new_one(pairs):
    base, _, tks = pairs["bf16"]
    b = state(base)
    sd = {k: v.clone() for k, v in b.items()}
    lotavec.apply(sd, tks["ulpdiff"])
    old = id(sd)
    del sd
    for _ in range(100):
        fresh = {k: v.clone() for k, v in b.items()}
        if id(fresh) == old:
            break
    else:
        pytest.skip("the interpreter did not reuse the address of the dropped dict")
    with pytest.raises(NotFoundError):
        lotavec.unapply(fresh, tks["ulpdiff"])  # never applied to this dict
    assert_same_bits(fresh, b)
    lotavec.apply(fresh, tks["ulpdiff"])


def test_apply_refuses_another_base(pairs):
    base, ft, tks = pairs["bf16"]
    other = state(ft)  # the fine-tune is not the ticket's base
    snap = snapshot(other)
    with pytest.raises(FingerprintMismatchError, match=r"model\.layers"):
        lotavec.apply(other, tks["ulpdiff"])
    assert_same_bits(other, snap)


@pytest.mark.cuda
def test_apply_unapply_on_cuda(pairs):
    base, ft, tks = pairs["bf16"]
    sd = {k: v.cuda() for k, v in state(base).items()}
    before = snapshot(sd)
    lotavec.apply(sd, tks["ulpdiff"])
    f = state(ft)
    for n in tks["ulpdiff"].names:
        idx = torch.from_numpy(tks["ulpdiff"].indices(n))
        assert torch.equal(bits(sd[n].cpu())[idx], bits(f[n])[idx]), n
    lotavec.unapply(sd, tks["ulpdiff"])
    assert_same_bits(sd, before)
