"""Opt-in checks against the real Hugging Face Hub (skipped unless LOTAVEC_TEST_REAL_HUB=1).

* Always (when opted in): resolve a small public model by id, pinned to a commit sha, taking only
  the allowed files. Set ``LOTAVEC_TEST_REAL_HUB_MODEL`` to choose it.
* With ``LOTAVEC_TEST_REAL_HUB_REPO=user/name`` and a write token (``HF_TOKEN``): push a ticket
  (one commit), re-push (no-op), pull it back pinned, and compare bytes. Uses Xet if installed,
  as real users do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hubutil import make_ticket, run_api, run_cli

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(os.environ.get("LOTAVEC_TEST_REAL_HUB") != "1", reason="set LOTAVEC_TEST_REAL_HUB=1 to talk to the real Hub"),
]


@pytest.fixture()
def env(tmp_path):
    keep = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HOME")}
    return {**keep, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_resolve_public_model(env):
    repo = os.environ.get("LOTAVEC_TEST_REAL_HUB_MODEL", "hf-internal-testing/tiny-random-LlamaForCausalLM")
    got = run_api("resolve_model", env, repo)["ok"]
    assert re.fullmatch(r"[0-9a-f]{40}", got["revision_sha"])
    files = {p.name for p in Path(got["path"]).iterdir()}
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith(".bin") for f in files)


@pytest.mark.skipif(not os.environ.get("LOTAVEC_TEST_REAL_HUB_REPO"), reason="set LOTAVEC_TEST_REAL_HUB_REPO=user/name")
def test_push_pull_roundtrip(env, tmp_path):
    repo = os.environ["LOTAVEC_TEST_REAL_HUB_REPO"]
    ticket = make_ticket(tmp_path / "t.lotavec.safetensors", seed=int.from_bytes(os.urandom(2), "little"))
    p = run_cli(["push", str(ticket), repo, "--private", "--json"], env)
    assert p.returncode == 0, p.stderr
    assert '"noop": false' in p.stdout
    again = run_cli(["push", str(ticket), repo], env)
    assert again.returncode == 0 and again.stdout.startswith("nothing to push"), again.stdout + again.stderr
    out = tmp_path / "back.lotavec.safetensors"
    pulled = run_cli(["pull", repo, "-o", str(out)], env)
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == ticket.read_bytes()
