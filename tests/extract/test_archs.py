"""Which tensors extraction considers, on tiny Llama, GPT-2, GPT-NeoX and Qwen2 checkpoints whose
fine-tune changed *every* stored tensor: attention and MLP matrices by default, the rest only on
request (``embeddings``, ``lm_head``, ``norms``, ``biases``, ``include``, ``exclude``)."""

from __future__ import annotations

import numpy as np
import pytest
from extract_helpers import EXPECTED_LINEAR, bits, folder_tensors

import lotavec
from lotavec.errors import SelectionError
from lotavec.testing import ARCHS


#: Per architecture: (stored embedding names, stored LM-head name or None when tied, norm names, bias names)
def kinds(arch: str, names: list[str]):
    emb = {"llama": ["model.embed_tokens.weight"], "qwen2": ["model.embed_tokens.weight"],
           "gpt2": ["transformer.wpe.weight", "transformer.wte.weight"],
           "gpt_neox": ["gpt_neox.embed_in.weight"]}[arch]
    head = "embed_out.weight" if arch == "gpt_neox" else None  # the others tie it to the embedding
    norms = [n for n in names if any(s in n for s in ("layernorm", "ln_", "norm."))]
    biases = [n for n in names if n.endswith(".bias") and n not in norms]
    return emb, head, norms, biases


@pytest.mark.parametrize("arch", ARCHS)
def test_default_candidates_are_attention_and_mlp(arch, arch_pairs):
    base, ft = arch_pairs[arch]
    r = lotavec.extract(base, ft, None, all_changed=True)
    assert sorted(r.candidates) == sorted(EXPECTED_LINEAR[arch])
    # Every stored tensor changed, yet only the candidates are in the ticket.
    assert sorted(r.ticket.names) == sorted(EXPECTED_LINEAR[arch])
    b, f = folder_tensors(base), folder_tensors(ft)
    for n in r.ticket.names:  # all_changed keeps exactly the entries that differ
        want = np.flatnonzero((bits(b[n]) != bits(f[n])).numpy())
        np.testing.assert_array_equal(r.ticket.indices(n), want, err_msg=n)


@pytest.mark.parametrize("arch", ARCHS)
def test_flags_add_their_kind_only(arch, arch_pairs):
    base, ft = arch_pairs[arch]
    names = sorted(folder_tensors(base))
    emb, head, norms, biases = kinds(arch, names)
    lin = set(EXPECTED_LINEAR[arch])
    assert norms and (biases or arch in ("llama",))  # the fixture is what we think it is

    def cands(**kw):
        return set(lotavec.extract(base, ft, None, density=0.01, **kw).candidates)

    assert cands(embeddings=True) == lin | set(emb)
    # Tied LM head: counted once, under the stored embedding name.
    assert cands(lm_head=True) == lin | ({head} if head else {emb[-1] if arch == "gpt2" else emb[0]})
    assert cands(norms=True) == lin | set(norms)
    assert cands(biases=True) == lin | set(biases)
    everything = cands(embeddings=True, lm_head=True, norms=True, biases=True)
    assert everything == set(names)


def test_include_and_exclude(arch_pairs):
    base, ft = arch_pairs["llama"]
    lin = set(EXPECTED_LINEAR["llama"])
    r = lotavec.extract(base, ft, None, density=0.01, include=[r"model\.norm\.weight$"])
    assert set(r.candidates) == lin | {"model.norm.weight"}
    r = lotavec.extract(base, ft, None, density=0.01, exclude=[r"\.mlp\."])
    assert set(r.candidates) == {n for n in lin if ".mlp." not in n}
    # exclude wins over include and over flags
    r = lotavec.extract(base, ft, None, density=0.01, norms=True, include=["embed_tokens"], exclude=["norm", "embed"])
    assert set(r.candidates) == lin
    with pytest.raises(SelectionError, match="nothing_like_this"):
        lotavec.extract(base, ft, None, density=0.01, include=["nothing_like_this"])
    with pytest.raises(SelectionError):
        lotavec.extract(base, ft, None, density=0.01, exclude=["."])
    with pytest.raises(SelectionError, match="regular expression"):
        lotavec.extract(base, ft, None, density=0.01, include=["("])


@pytest.mark.parametrize("arch", ARCHS)
def test_all_changed_with_everything_reproduces_the_finetune(arch, arch_pairs, tmp_path):
    """All flags + all_changed: the ticket applied to the base module *is* the fine-tuned model."""
    from transformers import AutoModelForCausalLM

    base, ft = arch_pairs[arch]
    out = tmp_path / "t.lota"
    lotavec.extract(base, ft, out, all_changed=True, embeddings=True, lm_head=True, norms=True, biases=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    lotavec.apply(model, lotavec.load_ticket(out))
    want = folder_tensors(ft)
    got = lotavec.open_model(model)
    assert sorted(got.names()) == sorted(want)
    for n, t in want.items():
        assert torch_equal_bits(got.tensor(n), t), n


def torch_equal_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((bits(a) == bits(b)).all())
