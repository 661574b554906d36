"""Pinned tickets and base models keep working from the cache once the Hub is gone.

One fake Hub for the module: tickets and a model are pushed and fetched while it runs, then it is
stopped and every test below runs against a dead endpoint, with or without HF_HUB_OFFLINE=1.

TODO(merge engine): once `lotavec merge` exists, add merge-from-Hub-ids here: merge
BASE_REPO + TICKET_REPO online, stop the server, merge again with HF_HUB_OFFLINE=1 and compare the
output folders byte for byte.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakehub import FakeHub
from hubutil import hub_env, last_line, make_ticket, run_api, run_api_batch, run_cli

TICKET_REPO = "dave/ticket"
MODEL_REPO = "dave/tiny-model"


def _model_files() -> dict[str, bytes]:
    import io

    from lotavec.format.safetensors_io import write_safetensors

    buf = io.BytesIO()
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(buf, [("model.embed_tokens.weight", "F32", (3, 4), w.tobytes())])
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 4}).encode(),
        "model.safetensors": buf.getvalue(),
        "tokenizer.json": b'{"version": "1.0"}',
        "pytorch_model.bin": b"\x80\x04 pickled weights must never be downloaded",
        "original/consolidated.safetensors": buf.getvalue(),
        "README.md": b"model card\n",
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Publish, fetch while online, then stop the Hub. Returns what the tests need."""
    hub = FakeHub().start()
    home = tmp_path_factory.mktemp("hf_home")
    env = hub_env(hub, home)
    tdir = tmp_path_factory.mktemp("tickets")
    t0 = make_ticket(tdir / "t0.lotavec.safetensors", seed=10)
    p = run_cli(["push", str(t0), TICKET_REPO], env)
    assert p.returncode == 0, p.stderr
    sha = hub.head(TICKET_REPO)
    hub.add_files("dave/never-pulled", {"ticket.lotavec.safetensors": t0.read_bytes()})
    model_sha = hub.add_files(MODEL_REPO, _model_files())

    hub.add_files("dave/renamed", {"math-v1.lotavec.safetensors": t0.read_bytes()})
    online = run_api_batch([("resolve_ticket", (TICKET_REPO,), {}), ("resolve_model", (MODEL_REPO,), {}),
                            ("resolve_ticket", ("dave/renamed",), {})], env)
    pulled, model, renamed = (r["ok"] for r in online)
    n_requests = len(hub.requests)
    again = run_api("resolve_ticket", env, f"{TICKET_REPO}@{sha}")["ok"]
    pinned_requests = len(hub.requests) - n_requests
    hub.stop()
    assert not hub.unknown, hub.unknown
    return {"home": home, "env": env, "ticket": t0, "sha": sha, "model_sha": model_sha, "pulled": pulled,
            "model": model, "renamed": renamed, "again": again, "pinned_requests": pinned_requests, "endpoint": hub.endpoint}


def test_online_fetches_were_pinned(world):
    assert world["pulled"]["revision_sha"] == world["sha"]
    assert world["again"]["path"] == world["pulled"]["path"]
    assert world["pinned_requests"] == 0  # a cached file at a sha needs no request at all


def test_model_download_takes_only_allowed_files(world):
    from pathlib import Path

    m = world["model"]
    assert m["revision_sha"] == world["model_sha"] and m["repo_id"] == MODEL_REPO
    files = sorted(p.name for p in Path(m["path"]).iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]


def test_pinned_sha_from_cache_with_hub_down(world, tmp_path):
    out = tmp_path / "x.lotavec.safetensors"
    p = run_cli(["pull", f"{TICKET_REPO}@{world['sha']}", "-o", str(out)], world["env"])
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == world["ticket"].read_bytes()
    assert last_line(p.stdout) == f"pinned {TICKET_REPO}@{world['sha']}"


@pytest.mark.parametrize("spec_suffix", ["", "@main"])
def test_offline_branch_uses_cached_ref(world, spec_suffix):
    env = hub_env(None, world["home"], offline=True)
    p = run_cli(["pull", TICKET_REPO + spec_suffix], env)
    assert p.returncode == 0, p.stderr
    assert last_line(p.stdout) == f"pinned {TICKET_REPO}@{world['sha']}"


def test_offline_load_ticket_and_nonstandard_name(world):
    env = hub_env(None, world["home"], offline=True)
    loaded, renamed = run_api_batch([("load_ticket", (TICKET_REPO,), {}), ("resolve_ticket", ("dave/renamed",), {})], env)
    assert loaded["ok"]["nnz"] == 120 and loaded["ok"]["path"] == world["pulled"]["path"]
    assert renamed["ok"] == world["renamed"] and renamed["ok"]["path"].endswith("/math-v1.lotavec.safetensors")


def test_offline_missing_ticket_is_a_clean_error(world):
    env = hub_env(None, world["home"], offline=True)
    p = run_cli(["pull", "dave/never-pulled"], env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert last_line(p.stderr) == (
        "Error: dave/never-pulled is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading "
        "it: run `lotavec pull dave/never-pulled` with network access first, or unset HF_HUB_OFFLINE")
    specs = [f"{TICKET_REPO}@v9", "dave/never-pulled@" + "1" * 40]
    for spec, r in zip(specs, run_api_batch([("resolve_ticket", (s,), {}) for s in specs], env)):
        assert r["error"] == "NotFoundError", r
        assert r["message"].startswith(f"{spec.split('@')[0]}@")
        assert "is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it" in r["message"]


def test_offline_model(world):
    env = hub_env(None, world["home"], offline=True)
    got = run_api("resolve_model", env, MODEL_REPO)["ok"]
    assert got == world["model"]
    missing = run_api("resolve_model", env, "dave/other-model")
    assert missing["error"] == "NotFoundError"
    assert "not in the local Hugging Face cache" in missing["message"] and "hf download dave/other-model" in missing["message"]
