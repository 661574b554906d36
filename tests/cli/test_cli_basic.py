"""The ``lotavec`` command: version, help, exit codes (0 / 1 user error without traceback / 2
usage), ``inspect`` and ``verify``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lotavec

TENSOR_KEYS = {"name", "shape", "dtype", "nnz", "bytes"}


def test_version(lotavec_cli):
    r = lotavec_cli("--version")
    assert r.exit_code == 0
    assert r.output.strip() == f"lotavec, version {lotavec.__version__}"


def test_console_script_runs():
    exe = Path(sys.executable).with_name("lotavec")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and lotavec.__version__ in p.stdout


def test_help_lists_the_commands(lotavec_cli):
    r = lotavec_cli("--help")
    assert r.exit_code == 0
    for cmd in ("extract", "merge", "overlap", "train", "inspect", "verify"):
        assert cmd in r.output
    assert "Exit status" in r.output


@pytest.mark.parametrize("args", [["no-such-command"], ["inspect"], ["extract", "a"], ["inspect", "--bogus", "x"],
                                  ["extract", "a", "b", "-o", "t", "--scope", "layer"]])
def test_usage_errors_exit_2(lotavec_cli, args):
    r = lotavec_cli(*args)
    assert r.exit_code == 2, r.output
    assert "Usage:" in r.output and "Traceback" not in r.output


def test_user_errors_exit_1_with_a_message(lotavec_cli, cli_kit, tmp_path):
    r = lotavec_cli("inspect", tmp_path / "missing.lota")
    assert r.exit_code == 1
    assert r.output.startswith("Error:") and "missing.lota" in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    junk = tmp_path / "junk.lota"
    junk.write_bytes(b"not a safetensors file at all")
    r = lotavec_cli("inspect", junk)
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", tmp_path / "t.lota")  # no density
    assert r.exit_code == 1 and "--density" in r.output


def test_inspect_json(lotavec_cli, cli_kit):
    r = lotavec_cli("inspect", cli_kit["A"], "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"format_version", "total_bytes", "total_numel", "total_nnz", "tensors"} <= set(doc)
    t = lotavec.load_ticket(cli_kit["A"])
    assert doc["format_version"] == 1
    assert doc["total_bytes"] == Path(cli_kit["A"]).stat().st_size
    assert doc["total_nnz"] == t.nnz and doc["total_numel"] == t.numel
    assert [x["name"] for x in doc["tensors"]] == t.names
    for x in doc["tensors"]:
        assert TENSOR_KEYS <= set(x)
        info = t.info(x["name"])
        assert x["shape"] == info["shape"] and x["dtype"] == "BF16" and x["nnz"] == info["nnz"]
        assert 0 < x["bytes"] < doc["total_bytes"]
    assert sum(x["bytes"] for x in doc["tensors"]) < doc["total_bytes"]  # + header and manifest


def test_inspect_table(lotavec_cli, cli_kit):
    r = lotavec_cli("inspect", cli_kit["A"])
    assert r.exit_code == 0, r.output
    t = lotavec.load_ticket(cli_kit["A"])
    for n in t.names:
        assert n in r.output
    assert f"{len(t.names)} tensors, {t.nnz:,} of {t.numel:,} entries" in r.output


def test_verify_structure_and_corruption(lotavec_cli, cli_kit, tmp_path):
    r = lotavec_cli("verify", cli_kit["A"])
    assert r.exit_code == 0 and "checksums OK" in r.output
    bad = tmp_path / "bad.lota"
    data = bytearray(Path(cli_kit["A"]).read_bytes())
    data[-20] ^= 0xFF  # inside the last chunk's payload
    bad.write_bytes(bytes(data))
    r = lotavec_cli("verify", bad)
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output


@pytest.fixture
def altered_base(cli_kit, tmp_path):
    """A copy of the base whose first MLP matrix differs at one entry the sampled fingerprint skips."""
    dst = tmp_path / "altered"
    shutil.copytree(cli_kit["base"], dst)
    sd = load_file(dst / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"  # 8192 entries: the sample reads the even positions
    flat = sd[name].reshape(-1).clone()
    flat[1] = flat[1] + 1
    sd[name] = flat.reshape(sd[name].shape)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst, name


def test_verify_against_base(lotavec_cli, cli_kit, altered_base, tiny_model_dirs):
    r = lotavec_cli("verify", cli_kit["A"], "--base", cli_kit["base"])
    assert r.exit_code == 0, r.output
    assert "matches base" in r.output and "full digests" in r.output
    r = lotavec_cli("verify", cli_kit["A"], "--base", cli_kit["ft1"])  # the fine-tune is another base
    assert r.exit_code == 1 and "Error:" in r.output and "model.layers" in r.output
    r = lotavec_cli("verify", cli_kit["A"], "--base", tiny_model_dirs["gpt2"])  # another architecture
    assert r.exit_code == 1 and "no tensor" in r.output
    altered, name = altered_base
    assert lotavec.load_ticket(cli_kit["A"]).info(name)["nnz"] > 0
    r = lotavec_cli("verify", cli_kit["A"], "--base", altered, "--quick")
    assert r.exit_code == 0, r.output  # the sampled fingerprint cannot see that entry
    r = lotavec_cli("verify", cli_kit["A"], "--base", altered)
    assert r.exit_code == 1 and name in r.output and "full digest" in r.output


def test_verify_says_when_the_ticket_has_no_full_digests(lotavec_cli, cli_kit):
    # B was extracted without --full-digest: verify cannot claim a full check
    r = lotavec_cli("verify", cli_kit["B"], "--base", cli_kit["base"])
    assert r.exit_code == 0, r.output
    assert "no full digests" in r.output and "--full-digest" in r.output


def test_verify_base_with_dtype_change(lotavec_cli, cli_kit, tmp_path):
    dst = tmp_path / "f32"
    shutil.copytree(cli_kit["base"], dst)
    sd = {k: v.to(torch.float32) for k, v in load_file(dst / "model.safetensors").items()}
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    r = lotavec_cli("verify", cli_kit["A"], "--base", dst)
    assert r.exit_code == 1 and "F32" in r.output and "BF16" in r.output
