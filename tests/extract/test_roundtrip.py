"""Round trips: extract → save → load → apply gives the fine-tuned value on every selected entry
bit-exactly and the base elsewhere; ``all_changed`` gives the fine-tuned model everywhere;
sharded folders, state dicts and modules behave like single-file folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from extract_helpers import bits, folder_tensors
from safetensors.torch import load_file

import lotavec


def check_roundtrip(base_t: dict, ft_t: dict, applied: dict, ticket) -> None:
    """On the ticket's entries ``applied`` has ft's bits, elsewhere base's bits."""
    assert set(applied) == set(base_t)
    for n, b in base_t.items():
        got, fb, bb = bits(applied[n]), bits(ft_t[n]), bits(b)
        if n in ticket:
            idx = torch.from_numpy(ticket.indices(n))
            assert torch.equal(got[idx], fb[idx]), n
            off = torch.ones(got.numel(), dtype=torch.bool)
            off[idx] = False
            assert torch.equal(got[off], bb[off]), n
        else:
            assert torch.equal(got, bb), n


@pytest.mark.parametrize("values", ["ulpdiff", "raw"])
@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_roundtrip_state_dict_bit_exact(tiny_pair, tmp_path, values, scope):
    base, ft = tiny_pair
    out = tmp_path / "t.lota"
    r = lotavec.extract(base, ft, out, density=0.05, scope=scope, values=values)
    assert r.path == str(out)
    t = lotavec.load_ticket(out)
    assert t.nnz == r.nnz > 0
    assert {t.info(n)["values"] for n in t.names} == {values}
    sd = load_file(base / "model.safetensors")
    lotavec.apply(sd, t)
    check_roundtrip(load_file(base / "model.safetensors"), load_file(ft / "model.safetensors"), sd, t)
    # The selection really is partial: some changed entries were left out.
    f, b = load_file(ft / "model.safetensors"), load_file(base / "model.safetensors")
    changed = sum(int((bits(f[n]) != bits(b[n])).sum()) for n in t.names)
    assert changed > t.nnz


def test_roundtrip_into_hf_module_and_logits(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    base, ft = tiny_pair
    out = tmp_path / "t.lota"
    lotavec.extract(base, ft, out, all_changed=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    lotavec.apply(model, lotavec.load_ticket(out))
    ref = AutoModelForCausalLM.from_pretrained(ft)
    for (n, p), (m, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert n == m and torch.equal(bits(p), bits(q)), n
    ids = torch.arange(4, 40).reshape(2, 18)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_all_changed_is_lossless_and_minimal(tiny_pair, tmp_path):
    base, ft = tiny_pair
    r = lotavec.extract(base, ft, tmp_path / "all.lota", all_changed=True)
    b, f = folder_tensors(base), folder_tensors(ft)
    changed = {n: int((bits(f[n]) != bits(b[n])).sum()) for n in b}
    assert r.nnz == sum(changed.values())  # the tiny fine-tune only changes candidates
    assert r.ticket.provenance["selection"]["rule"] == "all_changed"
    sd = {n: t.clone() for n, t in b.items()}
    lotavec.apply(sd, lotavec.load_ticket(tmp_path / "all.lota"))
    for n in b:
        assert torch.equal(bits(sd[n]), bits(f[n])), n


def test_sharded_folders(sharded_pair, tmp_path):
    base, ft = sharded_pair
    assert (base / "model.safetensors.index.json").is_file()
    assert len(list(base.glob("model-*.safetensors"))) > 1 and len(list(ft.glob("model-*.safetensors"))) > 1
    r = lotavec.extract(base, ft, tmp_path / "s.lota", density=0.05)
    b, f = folder_tensors(base), folder_tensors(ft)
    # Same selection from the same tensors held as state dicts.
    same = lotavec.extract(b, f, None, density=0.05)
    assert r.candidates == same.candidates and r.nnz == same.nnz
    for n in r.ticket.names:
        np.testing.assert_array_equal(r.ticket.indices(n), same.ticket.indices(n))
    sd = {n: t.clone() for n, t in b.items()}
    t = lotavec.load_ticket(tmp_path / "s.lota")
    lotavec.apply(sd, t)
    check_roundtrip(b, f, sd, t)
    assert len({n.split(".")[2] for n in t.names}) == 4  # all four layers are represented


def test_module_inputs_match_folder_inputs(tiny_pair):
    from transformers import AutoModelForCausalLM

    base, ft = tiny_pair
    a = lotavec.extract(base, ft, None, density=0.07)
    m = lotavec.extract(AutoModelForCausalLM.from_pretrained(base), AutoModelForCausalLM.from_pretrained(ft),
                        None, density=0.07)
    assert a.candidates == m.candidates and a.nnz == m.nnz
    for n in a.ticket.names:
        np.testing.assert_array_equal(a.ticket.indices(n), m.ticket.indices(n))
        np.testing.assert_array_equal(a.ticket[n].payload, m.ticket[n].payload)


def test_ticket_records_the_selection(tiny_pair, tmp_path):
    base, ft = tiny_pair
    r = lotavec.extract(base, ft, tmp_path / "t.lota", density=0.05, scope="tensor")
    t = lotavec.load_ticket(tmp_path / "t.lota")
    sel = t.provenance["selection"]
    assert sel["candidate_tensors"] == len(r.candidates) == 14
    assert sel["candidate_params"] == r.candidate_params == 73728
    assert sel["selected"] == r.nnz == t.nnz
    assert sel["scope"] == "tensor" and sel["density"] == 0.05
    assert sel["selected_density"] == pytest.approx(r.nnz / r.candidate_params)
    assert t.provenance["source"]["base"] == str(base)
    # per-tensor densities are in the ticket itself
    for n in r.candidates:
        assert t.info(n)["nnz"] == r.per_tensor[n]
        assert t.info(n)["numel"] == r.numels[n]


def test_base_ref_is_recorded(tiny_pair, tmp_path):
    base, ft = tiny_pair
    lotavec.extract(base, ft, tmp_path / "t.lota", density=0.01, base_ref={"repo_id": "org/base", "revision": "a" * 40})
    t = lotavec.load_ticket(tmp_path / "t.lota")
    assert t.base["repo_id"] == "org/base" and t.base["revision"] == "a" * 40
