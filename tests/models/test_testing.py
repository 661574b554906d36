"""The tiny model / tokenizer factories used by the whole suite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lotavec.format.safetensors_io import SafetensorsFile
from lotavec.models import open_model, select_candidates
from lotavec.testing import (
    ARCHS,
    TINY_VOCAB_SIZE,
    make_tiny_model,
    make_tiny_tokenizer,
    perturb_storage,
)


def test_tokenizer_round_trips_text_and_has_chat_template():
    tok = make_tiny_tokenizer()
    text = "Sum 12+30 = 42.\n\tTabs, ünïcode & {json: [1, 2]}"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(tok) == TINY_VOCAB_SIZE
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 3)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2


def test_tokenizer_saved_reloads(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tok.decode(tok("abc xyz")["input_ids"]) == "abc xyz"
    assert tok.chat_template is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_are_deterministic_and_saved(arch, tiny_model_dirs):
    a = make_tiny_model(arch, seed=0)
    b = make_tiny_model(arch, seed=0)
    c = make_tiny_model(arch, seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)
    assert any(not (sa[k] == sc[k]).all() for k in sa)
    folder = tiny_model_dirs[arch]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == TINY_VOCAB_SIZE
    assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
    f = SafetensorsFile(folder / "model.safetensors")
    assert {f.info(k).dtype for k in f.keys()} == {"BF16"}
    with open_model(a) as mem, open_model(folder) as disk:  # the saved folder is the seed-0 model
        assert mem.names() == disk.names() == sorted(f.keys())
        for k in disk.names():
            assert np.array_equal(mem.array(k), disk.array(k)), k


def test_perturb_storage_changes_every_chosen_entry():
    rng = np.random.default_rng(0)
    base = np.zeros(10_000, dtype=np.uint16)  # BF16 zeros: tiny noise would round to 0 without the nudge
    out = perturb_storage(base, "BF16", rng, density=0.2, scale=1e-30)
    changed = (out != base).mean()
    assert 0.17 < changed < 0.23


def test_finetuned_pair_touches_only_block_matrices(tiny_pair):
    base, ft = tiny_pair
    fb, ff = SafetensorsFile(base / "model.safetensors"), SafetensorsFile(ft / "model.safetensors")
    assert sorted(fb.keys()) == sorted(ff.keys())
    for k in fb.keys():
        frac = (fb.array(k) != ff.array(k)).mean()
        if k.startswith("model.layers.") and k.endswith("proj.weight"):
            assert 0.05 < frac < 0.15, k
        else:
            assert frac == 0, k
    assert (ft / "tokenizer.json").is_file()


def test_sharded_pair_has_index_and_several_shards(sharded_pair):
    for folder in sharded_pair:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = set(index["weight_map"].values())
        assert len(shards) >= 2
        assert all((folder / s).is_file() for s in shards)


@pytest.mark.parametrize("arch", ARCHS)
def test_synthetic_model_matches_architecture(arch, tiny_model_dirs, tmp_path):
    from lotavec.format.dtypes import to_float32
    from lotavec.testing import make_synthetic_model

    out = make_synthetic_model(arch, tmp_path / arch, seed=0, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()
    with open_model(out) as syn, open_model(tiny_model_dirs[arch]) as ref:
        assert syn.names() == ref.names()
        assert [syn.info(n) for n in syn.names()] == [ref.info(n) for n in ref.names()]
        for name in select_candidates(syn):
            w = to_float32(syn.array(name), "BF16")
            assert 0.015 < w.std() < 0.025 and abs(w.mean()) < 0.002, name
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    with open_model(model) as mem, open_model(out) as disk:
        for n in disk.names():
            assert np.array_equal(mem.array(n), disk.array(n)), n
