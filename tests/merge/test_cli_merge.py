"""``lotavec merge`` through the CLI: outputs, options, exit codes, and a merge killed at random
moments (SIGKILL, real subprocesses) that never leaves a partial OUT_DIR."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lotavec_cli.main import cli
from safetensors.torch import load_file, save_file

import lotavec
from lotavec.testing import make_finetuned, make_tiny_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def weights_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_pair):
    root = tmp_path_factory.mktemp("cli_merge")
    base, ft1 = tiny_pair
    ft2 = make_finetuned(base, root / "ft2", density=0.1, seed=2)
    lotavec.extract(base, ft1, root / "a.lota", density=0.05)
    lotavec.extract(base, ft2, root / "b.lota", density=0.05, disjoint_from=[root / "a.lota"])
    make_tiny_model("llama", root / "other", seed=9)
    return {"base": base, "A": root / "a.lota", "B": root / "b.lota", "other": root / "other"}


def test_merge_json_summary_and_output_equals_the_api(kit, tmp_path):
    r = run("merge", kit["base"], kit["A"], kit["B"], "-o", tmp_path / "cli", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["output"] == str(tmp_path / "cli")
    assert doc["tensors"] == 20 and doc["touched"] == 14
    nnz = lotavec.load_ticket(kit["A"]).nnz + lotavec.load_ticket(kit["B"]).nnz
    assert doc["changed_entries"] == nnz
    assert doc["params"]["method"] == "sum" and doc["warnings"] == []
    lotavec.merge(kit["base"], [kit["A"], kit["B"]], tmp_path / "api")
    assert weights_bytes(tmp_path / "cli") == weights_bytes(tmp_path / "api")


def test_merge_human_summary(kit, tmp_path):
    r = run("merge", kit["base"], kit["A"], "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert "Merged 1 ticket(s)" in r.stdout and "14 of 20 tensors touched" in r.stdout
    assert str(tmp_path / "out") in r.stdout


def test_merge_options_are_recorded(kit, tmp_path):
    r = run("merge", kit["base"], kit["A"], kit["B"], "-o", tmp_path / "w", "--weights", "0.5,1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"]["weights"] == [0.5, 1.0]
    r = run("merge", kit["base"], kit["A"], kit["B"], "-o", tmp_path / "d", "--method", "dare_linear",
            "--density", "0.5", "--seed", "7", "-q")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "d" / "lotavec_merge.json").read_text())
    assert rec["params"]["method"] == "dare_linear" and rec["params"]["seed"] == 7
    assert "seed 7" in r.stdout


def test_dtype_float32(kit, tmp_path):
    from transformers import AutoModelForCausalLM

    r = run("merge", kit["base"], kit["A"], "-o", tmp_path / "out", "--dtype", "float32", "-q")
    assert r.exit_code == 0, r.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


def test_yaml_config(kit, tmp_path):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(
        f"merge_method: task_arithmetic\nbase_model: {kit['base']}\nmodels:\n"
        f"  - model: {kit['A']}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {kit['B']}\n    parameters: {{weight: 1.0}}\n")
    r = run("merge", "--config", cfg, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    lotavec.merge(kit["base"], [kit["A"], kit["B"]], tmp_path / "api",
                  params=lotavec.MergeParams(weights=(0.5, 1.0)))
    assert weights_bytes(tmp_path / "out") == weights_bytes(tmp_path / "api")


def test_user_errors_exit_1_without_traceback(kit, tmp_path):
    out = tmp_path / "out"
    r = run("merge", kit["other"], kit["A"], "-o", out)  # a ticket for another base
    assert r.exit_code == 1
    assert "Error:" in r.output and "differs from the base" in r.output and "--force" in r.output
    assert "Traceback" not in r.output and not out.exists()
    out.mkdir()
    r = run("merge", kit["base"], kit["A"], "-o", out)
    assert r.exit_code == 1 and "already exists" in r.output and "Traceback" not in r.output
    r = run("merge", kit["base"], tmp_path / "missing.lota", "-o", tmp_path / "o2")
    assert r.exit_code == 1 and "missing.lota" in r.output
    r = run("merge", kit["base"], kit["A"], "-o", tmp_path / "o3", "--method", "nonsense")
    assert r.exit_code == 1 and "nonsense" in r.output


def test_force_overwrites_and_overrides_with_a_warning(kit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run("merge", kit["other"], kit["A"], "-o", out, "--force", "-q")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "differs from the base" in r.stderr
    assert (out / "model.safetensors").is_file()


def test_usage_errors_exit_2(kit, tmp_path):
    assert run("merge", kit["base"], kit["A"]).exit_code == 2  # no -o
    r = run("merge", kit["base"], "-o", tmp_path / "o")
    assert r.exit_code == 2 and "TICKET" in r.output
    assert run("merge", kit["base"], kit["A"], "-o", tmp_path / "o", "--dtype", "int8").exit_code == 2


# --- killed mid-write -------------------------------------------------------------------------


def lotavec_exe() -> list[str]:
    exe = Path(sys.executable).with_name("lotavec")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from lotavec_cli.main import main; main()"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 200 MB bf16 base (24 tensors of 2048×2048) and a ticket touching two of them: the merge
    must write long enough (~1 s) for random kill points to land mid-write."""
    from lotavec.ticket import TicketTensor, TicketWriter
    from lotavec.torchio import to_storage

    root = tmp_path_factory.mktemp("kill")
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i:02d}.weight": torch.randn(2048, 2048, generator=g, dtype=torch.bfloat16) for i in range(24)}
    (root / "base").mkdir()
    save_file(sd, root / "base" / "model.safetensors", metadata={"format": "pt"})
    (root / "base" / "config.json").write_text(json.dumps({"model_type": "none", "note": "kill test"}))
    rng = np.random.default_rng(0)
    with TicketWriter(root / "t.lota") as w:
        for name in ("layers.03.weight", "layers.08.weight"):
            b, dt = to_storage(sd[name])
            idx = np.sort(rng.choice(b.size, b.size // 10, replace=False)).astype(np.int64)
            w.add(TicketTensor.from_finetuned(name, b, b.reshape(-1)[idx] ^ np.uint16(1), idx, dt))
    return root


def start_merge(big: Path, out: Path) -> subprocess.Popen:
    cmd = lotavec_exe() + ["merge", str(big / "base"), str(big / "t.lota"), "-o", str(out), "-q",
                           "--max-shard-size", "20MB"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def temp_folders(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_killed_merge_never_leaves_a_partial_output(big, tmp_path):
    # Reference run: how long it takes, and when its temporary folder first holds a file (the
    # first shard is opened once the base check has passed).
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    p = start_merge(big, ref)
    t_tmp = None
    while p.poll() is None:
        if t_tmp is None and any(any(t.iterdir()) for t in temp_folders(ref)):
            t_tmp = time.monotonic() - t0
        time.sleep(0.002)
    t_end = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.read()
    assert t_tmp is not None and len(list(ref.glob("model-*.safetensors"))) > 3
    want = folder_bytes(ref)

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "out"
    mid_write = 0
    # Kill points: three at random moments of the whole run, one near the end (rename), and three
    # while the output is being written: once the killed run's first shard exists (polled, so
    # start-up jitter cannot move the kill out of the write), within half the reference's write.
    kills = [("any", rng.uniform(0, t_end)) for _ in range(3)] + [("any", t_end * 0.97)]
    kills += [("writing", rng.uniform(0, (t_end - t_tmp) / 2)) for _ in range(3)]
    for kind, delay in kills:
        if out.exists():
            shutil.rmtree(out)
        for t in temp_folders(out):  # earlier kills' leftovers: only this run's folder counts below
            shutil.rmtree(t)
        p = start_merge(big, out)
        if kind == "writing":
            while p.poll() is None and not any(any(t.iterdir()) for t in temp_folders(out)):
                time.sleep(0.001)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        state = f"seed {seed}, {kind} kill after {delay:.3f}s (run {t_end:.3f}s), rc {p.returncode}"
        if out.exists():
            assert folder_bytes(out) == want, f"partial OUT_DIR ({state})"
        else:
            mid_write += any(any(t.iterdir()) for t in temp_folders(out))
    # At least one kill hit the write itself (a non-empty temporary folder was left, OUT absent).
    assert mid_write >= 1, f"no kill landed mid-write (seed {seed}, t_tmp {t_tmp:.3f}s, t_end {t_end:.3f}s)"
    if out.exists():
        shutil.rmtree(out)
    p = start_merge(big, out)  # a rerun succeeds despite the leftovers
    assert p.wait() == 0, p.stderr.read()
    assert folder_bytes(out) == want


def test_no_fsync_gives_the_same_output(kit, tmp_path):
    r = run("merge", kit["base"], kit["A"], kit["B"], "-o", tmp_path / "nf", "-q", "--no-fsync")
    assert r.exit_code == 0, r.output
    lotavec.merge(kit["base"], [kit["A"], kit["B"]], tmp_path / "api")
    assert weights_bytes(tmp_path / "nf") == weights_bytes(tmp_path / "api")
