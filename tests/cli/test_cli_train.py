"""``lotavec train`` end to end on the tiny llama, with each data shape; LoTTO through the CLI;
malformed data lines give exit status 1 and a message with file:line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lotavec

FAST = ["--density", "0.05", "--calibration-steps", "2", "--steps", "2", "--batch-size", "2",
        "--max-length", "48", "--lr", "1e-3"]

SHAPES = {
    "prompt_completion": [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(6)],
    "messages": [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"},
                               {"role": "assistant", "content": f"hello {i}"}]} for i in range(6)],
    "text": [{"text": f"line number {i} of the text task."} for i in range(6)],
}


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_each_data_shape(lotavec_cli, tiny_model_dirs, tmp_path, shape):
    base = tiny_model_dirs["llama"]
    data = jsonl(tmp_path / f"{shape}.jsonl", SHAPES[shape])
    out = tmp_path / "t.lota"
    r = lotavec_cli("train", base, "--data", data, "-o", out, *FAST, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    t = lotavec.load_ticket(out)
    assert doc["ticket"] == str(out) and doc["nnz"] == t.nnz == round(0.05 * 73728)
    assert doc["method"] == "LoTA" and doc["bytes"] == out.stat().st_size
    assert np.isfinite(doc["first_loss"]) and np.isfinite(doc["last_loss"])
    prov = t.provenance["training"]
    assert prov["data"]["path"] == str(data) and prov["data"]["sha256"].startswith("sha256:")
    assert len(prov["losses"]) == 2
    # the ticket fits its base
    assert lotavec_cli("verify", out, "--base", base).exit_code == 0


def test_train_with_eval_and_lotto(lotavec_cli, tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["llama"]
    a_data = jsonl(tmp_path / "a.jsonl", SHAPES["prompt_completion"])
    b_data = jsonl(tmp_path / "b.jsonl", SHAPES["text"])
    ev = jsonl(tmp_path / "eval.jsonl", SHAPES["prompt_completion"][:2])
    r = lotavec_cli("train", base, "--data", a_data, "--eval", ev, "-o", tmp_path / "a.lota", *FAST, "-q")
    assert r.exit_code == 0, r.output
    assert "LoTA: trained 3,686 entries" in r.stdout and "eval loss" in r.stdout
    r = lotavec_cli("train", base, "--data", b_data, "-o", tmp_path / "b.lota", *FAST, "-q",
                    "--disjoint-from", tmp_path / "a.lota")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("LoTTO:") and "Verified disjoint from 1 earlier ticket(s)" in r.stdout
    a, b = lotavec.load_ticket(tmp_path / "a.lota"), lotavec.load_ticket(tmp_path / "b.lota")
    assert all(np.intersect1d(a.indices(n), b.indices(n)).size == 0 for n in b.names if n in a)
    r = lotavec_cli("overlap", tmp_path / "a.lota", tmp_path / "b.lota", "--json")
    assert json.loads(r.stdout)["disjoint"] is True


BAD = [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', 2, "JSON"),
    ('{"prompt": "a", "completion": "b"}\n\n{"question": "a"}\n', 3, "keys"),
    ('{"messages": []}\n', 1, "messages"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', 1, "assistant"),
    ('{"text": 5}\n', 1, "text"),
    ('[1, 2]\n', 1, ""),
]


@pytest.mark.parametrize("content, line, word", BAD)
def test_malformed_lines_exit_1_with_file_and_line(lotavec_cli, tiny_model_dirs, tmp_path, content, line, word):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "t.lota"
    r = lotavec_cli("train", tiny_model_dirs["llama"], "--data", data, "-o", out, *FAST)
    assert r.exit_code == 1, r.output
    assert f"{data}:{line}:" in r.output
    assert word.lower() in r.output.lower()
    assert "Traceback" not in r.output and not out.exists()


def test_train_usage_and_config_errors(lotavec_cli, tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["llama"]
    data = jsonl(tmp_path / "d.jsonl", SHAPES["text"])
    r = lotavec_cli("train", base, "-o", tmp_path / "t.lota")  # no --data
    assert r.exit_code == 2
    r = lotavec_cli("train", base, "--data", tmp_path / "missing.jsonl", "-o", tmp_path / "t.lota")
    assert r.exit_code == 2 and "missing.jsonl" in r.output
    r = lotavec_cli("train", base, "--data", data, "-o", tmp_path / "t.lota", *FAST[2:], "--density", "1.5")
    assert r.exit_code == 1 and "--density" in r.output and "Traceback" not in r.output


@pytest.mark.cuda
def test_train_on_cuda_with_bf16(lotavec_cli, tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["llama"]
    data = jsonl(tmp_path / "pc.jsonl", SHAPES["prompt_completion"])
    out = tmp_path / "t.lota"
    r = lotavec_cli("train", base, "--data", data, "-o", out, *FAST, "--device", "cuda", "--bf16", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["nnz"] == lotavec.load_ticket(out).nnz == round(0.05 * 73728)
    assert np.isfinite(doc["first_loss"]) and np.isfinite(doc["last_loss"])
    assert lotavec_cli("verify", out, "--base", base).exit_code == 0
