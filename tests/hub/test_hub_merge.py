"""push → merge from Hub ids → stop the Hub → merge again offline from the pinned cache.

The base is the session's tiny llama (``tiny_pair``) published to the fake Hub; the ticket is
extracted from the synthetic fine-tune, pushed with ``lotavec push``, and both are merged by id
with ``lotavec merge`` in a subprocess.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakehub import FakeHub
from hubutil import hub_env, last_line, run_cli

BASE_REPO = "erin/tiny-llama"
TICKET_REPO = "erin/math-ticket"


def _tensors(folder) -> dict[str, np.ndarray]:
    from lotavec.format.safetensors_io import SafetensorsFile

    with SafetensorsFile(folder / "model.safetensors") as f:
        return {k: f.array(k).copy() for k in f.keys()}


@pytest.fixture(scope="module")
def merged(tiny_pair, tmp_path_factory):
    """Merge online, stop the Hub, merge offline; returns both outputs and what was published."""
    from lotavec.extraction import extract

    base_dir, ft_dir = tiny_pair
    root = tmp_path_factory.mktemp("hub_merge")
    hub = FakeHub().start()
    base_sha = hub.add_files(BASE_REPO, {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()})
    ticket = root / "math.lotavec.safetensors"
    res = extract(base_dir, ft_dir, ticket, density=0.05, base_ref={"repo_id": BASE_REPO, "revision": base_sha})
    env = hub_env(hub, root / "hf_home")
    p = run_cli(["push", str(ticket), TICKET_REPO], env)
    assert p.returncode == 0, p.stderr
    ticket_sha = hub.head(TICKET_REPO)
    online = run_cli(["merge", BASE_REPO, TICKET_REPO, "-o", str(root / "online"), "-q"], env)
    hub.stop()
    assert not hub.unknown, hub.unknown
    offline_env = hub_env(None, root / "hf_home", offline=True)
    offline = run_cli(["merge", BASE_REPO, TICKET_REPO, "-o", str(root / "offline"), "-q"], offline_env)
    missing = run_cli(["merge", BASE_REPO, "erin/never-fetched", "-o", str(root / "missing"), "-q"], offline_env)
    return {"root": root, "base_dir": base_dir, "base_sha": base_sha, "ticket_sha": ticket_sha, "nnz": res.nnz, "online": online, "offline": offline, "missing": missing}


def test_merge_from_hub_ids(merged):
    assert merged["online"].returncode == 0, merged["online"].stderr
    out, base = _tensors(merged["root"] / "online"), _tensors(merged["base_dir"])
    assert out.keys() == base.keys()
    changed = sum(int(np.count_nonzero(out[k] != base[k])) for k in out)
    assert changed == merged["nnz"] > 0  # every ticket entry landed, nothing else moved
    record = json.loads((merged["root"] / "online" / "lotavec_merge.json").read_text())
    assert record["base"]["repo_id"] == BASE_REPO and record["base"]["revision"] == merged["base_sha"]
    assert f"/snapshots/{merged['ticket_sha']}/" in record["tickets"][0]["path"]


def test_merge_again_offline_from_cache(merged):
    assert merged["offline"].returncode == 0, merged["offline"].stderr
    assert "Traceback" not in merged["offline"].stderr
    a, b = _tensors(merged["root"] / "online"), _tensors(merged["root"] / "offline")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_offline_merge_with_uncached_ticket_fails_cleanly(merged):
    p = merged["missing"]
    assert p.returncode == 1 and "Traceback" not in p.stderr
    msg = last_line(p.stderr)
    assert msg.startswith("Error: erin/never-fetched is not in the local Hugging Face cache"), msg
    assert "HF_HUB_OFFLINE=1" in msg
