"""``lotavec extract`` and ``lotavec overlap``: JSON and human outputs match the library."""

from __future__ import annotations

import json

import numpy as np

import lotavec


def test_extract_json_matches_the_library(lotavec_cli, cli_kit, tmp_path):
    out = tmp_path / "t.lota"
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--density", "0.05", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    api = lotavec.extract(cli_kit["base"], cli_kit["ft1"], None, density=0.05)
    assert doc["ticket"] == str(out) and out.is_file()
    assert doc["candidate_tensors"] == 14 and doc["candidate_params"] == 73728
    assert doc["selected"] == api.nnz == round(0.05 * 73728)
    assert doc["density"] == api.nnz / 73728
    assert doc["bytes"] == out.stat().st_size
    assert doc["bits_per_param"] == 8 * out.stat().st_size / 73728
    assert doc["per_tensor"] == api.per_tensor
    t = lotavec.load_ticket(out)
    for n in api.ticket.names:
        np.testing.assert_array_equal(t.indices(n), api.ticket.indices(n))


def test_extract_summary_and_options(lotavec_cli, cli_kit, tmp_path):
    out = tmp_path / "t.lota"
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--sparsity", "0.9", "--scope", "tensor",
                    "--norms", "--exclude", r"\.mlp\.", "-q")
    assert r.exit_code == 0, r.output
    t = lotavec.load_ticket(out)
    sel = t.provenance["selection"]
    assert sel["scope"] == "tensor" and sel["sparsity"] == 0.9 and sel["norms"] is True
    assert sel["exclude"] == [r"\.mlp\."]
    assert sel["candidate_tensors"] == 8 + 5  # 8 attention matrices + 5 norm weights
    assert not any(".mlp." in n for n in t.names)
    assert f"Selected {t.nnz:,} of {sel['candidate_params']:,} parameters" in r.stdout
    assert "scope tensor" in r.stdout and str(out) in r.stdout and "bits per candidate parameter" in r.stdout


def test_extract_all_changed_and_disjoint_from(lotavec_cli, cli_kit, tmp_path):
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", tmp_path / "all.lota", "--all-changed", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["selected"] == lotavec.extract(cli_kit["base"], cli_kit["ft1"], None, all_changed=True).nnz
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft2"], "-o", tmp_path / "b.lota", "--density", "0.05",
                    "--disjoint-from", cli_kit["A"], "-q")
    assert r.exit_code == 0, r.output
    assert f"Verified disjoint from 1 ticket(s): {cli_kit['A']}" in r.stdout
    a, b = lotavec.load_ticket(cli_kit["A"]), lotavec.load_ticket(tmp_path / "b.lota")
    assert all(np.intersect1d(a.indices(n), b.indices(n)).size == 0 for n in b.names if n in a)


def test_extract_errors(lotavec_cli, cli_kit, tmp_path):
    out = tmp_path / "t.lota"
    r = lotavec_cli("extract", cli_kit["base"], tmp_path / "nowhere", "-o", out, "--density", "0.1")
    assert r.exit_code == 1 and "nowhere" in r.output and "Traceback" not in r.output
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--density", "0.1", "--all-changed")
    assert r.exit_code == 1 and "--all-changed" in r.output
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--density", "0.1", "--include", "zzz")
    assert r.exit_code == 1 and "zzz" in r.output
    r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--density", "abc")
    assert r.exit_code == 2
    assert not out.exists()


def test_overlap_json(lotavec_cli, cli_kit):
    r = lotavec_cli("overlap", cli_kit["A"], cli_kit["B"], cli_kit["C"], "--json", "--base", cli_kit["base"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    ts = [lotavec.load_ticket(cli_kit[k]) for k in ("A", "B", "C")]
    assert doc["tickets"] == [str(cli_kit[k]) for k in ("A", "B", "C")]
    assert doc["nnz"] == [t.nnz for t in ts]
    assert doc["disjoint"] is False and doc["signs_known"] is True
    pairs = {(p["a"], p["b"]): p for p in doc["pairs"]}
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        inter = sum(np.intersect1d(ts[i].indices(n), ts[j].indices(n)).size for n in ts[i].names if n in ts[j])
        p = pairs[(i, j)]
        assert p["intersection"] == inter
        assert p["union"] == ts[i].nnz + ts[j].nnz - inter
        assert p["jaccard"] == inter / p["union"]
    assert pairs[(0, 1)]["intersection"] == 0 and pairs[(0, 2)]["intersection"] > 0
    assert set(doc["tensors"]) <= set(ts[0].names) | set(ts[2].names)
    assert doc["layers"]
    # signs: A and C both came from real deltas; every shared entry either agrees or not
    assert 0 <= pairs[(0, 2)]["sign_agree"] <= pairs[(0, 2)]["intersection"]


def test_overlap_text_and_disjoint(lotavec_cli, cli_kit):
    r = lotavec_cli("overlap", cli_kit["A"], cli_kit["B"])
    assert r.exit_code == 0, r.output
    assert "disjoint" in r.output and "--base" in r.output
    r = lotavec_cli("overlap", cli_kit["A"], cli_kit["B"], "--json")
    doc = json.loads(r.stdout)
    assert doc["disjoint"] is True and doc["signs_known"] is False and doc["ties"] is None
    r = lotavec_cli("overlap", cli_kit["A"], cli_kit["C"], "--base", cli_kit["base"], "--density", "0.5")
    assert r.exit_code == 0, r.output
    assert "TIES" in r.output and "trimmed" in r.output


def test_extract_full_digest_flag(lotavec_cli, cli_kit, tmp_path):
    from lotavec.format.fingerprint import base_digest
    from lotavec.models import open_model

    for flag, want in (((), False), (("--full-digest",), True)):
        out = tmp_path / f"t{want}.lota"
        r = lotavec_cli("extract", cli_kit["base"], cli_kit["ft1"], "-o", out, "--density", "0.05", "-q", *flag)
        assert r.exit_code == 0, r.output
        t = lotavec.load_ticket(out)
        with open_model(cli_kit["base"]) as src:
            for n in t.names:
                assert t[n].base_digest == (base_digest(src.array(n)) if want else None)
                assert t[n].base_sample is not None
