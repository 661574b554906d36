"""Hub ids, ticket summaries and model cards (no network)."""

from __future__ import annotations

import os

import pytest
from hubutil import make_ticket

from lotavec.card import merged_card, ticket_card
from lotavec.errors import InvalidHeaderError
from lotavec.hub import HubRef, parse_ref, ticket_summary


@pytest.mark.parametrize("spec, expected", [
    ("org/name", HubRef("org/name")),
    ("org/name@main", HubRef("org/name", "main")),
    ("Org-1/my_model.v2@refs/pr/3", HubRef("Org-1/my_model.v2", "refs/pr/3")),
    ("org/name@" + "a" * 40, HubRef("org/name", "a" * 40)),
    ("name", None),                      # no namespace
    ("a/b/c", None),                     # a nested path
    ("./org/name", None), ("/org/name", None), ("~/org/name", None), ("org\\name", None),
    ("org/name@", None), ("org/name@a..b", None), ("org/name@a b", None),
    ("org/-name", None), ("org/na--me", None), ("org/na..me", None),
    ("tickets/math.lotavec.safetensors", None),  # a (missing) local file, not a repo
    ("org/" + "x" * 97, None),
    ("", None),
])
def test_parse_ref(spec, expected):
    assert parse_ref(spec) == expected


def test_existing_local_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").write_bytes(b"")
    assert parse_ref("org/name") is None
    assert parse_ref("org/name", local_wins=False) == HubRef("org/name")
    assert parse_ref(os.fspath(tmp_path / "org" / "name")) is None
    assert str(HubRef("org/name", "v1")) == "org/name@v1"


def test_ticket_summary(tmp_path):
    path = make_ticket(tmp_path / "t.lotavec.safetensors", seed=3)
    s = ticket_summary(path)
    assert s["base_repo_id"] == "base-org/tiny-base" and s["base_revision"] == "b" * 40
    assert s["license"] == "apache-2.0" and s["format_version"] == "1.0"
    assert (s["n_tensors"], s["nnz"], s["numel"]) == (3, 120, 3 * 16 * 24)
    assert s["density"] == pytest.approx(120 / 1152)
    assert s["file_bytes"] == path.stat().st_size
    assert s["bits_per_param"] == pytest.approx(8 * path.stat().st_size / 1152)
    assert s["training"] == {"steps": 10, "lr": 1e-4}


def test_ticket_summary_rejects_non_tickets(tmp_path):
    from lotavec.format.safetensors_io import write_safetensors

    p = tmp_path / "plain.safetensors"
    with open(p, "wb") as fh:
        write_safetensors(fh, [("w", "F32", (1,), b"\0" * 4)])
    with pytest.raises(InvalidHeaderError, match="not a lotavec ticket"):
        ticket_summary(p)


def test_ticket_card_parses():
    from huggingface_hub import ModelCard

    summary = {"base_repo_id": "meta-llama/Llama-3.2-1B", "base_revision": "c" * 40, "license": "llama3.2",
               "density": 0.01, "n_tensors": 112, "nnz": 12_345_678, "numel": 1_234_567_800, "file_bytes": 32_000_000,
               "bits_per_param": 0.2074, "format_version": "1.0", "training": {"steps": 500, "lr": 2e-5}}
    card = ModelCard(ticket_card(summary, repo_id="alice/math"))
    d = card.data.to_dict()
    assert d["base_model"] == "meta-llama/Llama-3.2-1B" and d["base_model_relation"] == "adapter"
    assert d["library_name"] == "lotavec" and d["license"] == "llama3.2"
    assert d["tags"] == ["lotavec", "lota", "sparse-task-vector", "base_model:adapter:meta-llama/Llama-3.2-1B"]
    for row in ("| density | 1 % |", "| tensors | 112 |", "| changed entries (nnz) | 12,345,678 |",
                "| file size | 32.00 MB |", "| bits per parameter | 0.2074", f"| base revision | `{'c' * 40}` |",
                "| format version | 1.0 |", "| training | steps=500, lr=2e-05 |"):
        assert row in card.text, row
    assert "lotavec merge meta-llama/Llama-3.2-1B alice/math -o merged-model" in card.text
    assert 'lotavec.load_ticket("alice/math")' in card.text


def test_ticket_card_without_base_or_license():
    from huggingface_hub import ModelCard

    card = ModelCard(ticket_card({"nnz": 5, "numel": 10, "density": 0.5}))
    d = card.data.to_dict()
    assert "base_model" not in d and "base_model_relation" not in d and "license" not in d
    assert d["library_name"] == "lotavec"
    assert "| density | 50 % |" in card.text and "base model |" not in card.text


def test_merged_card_parses():
    from huggingface_hub import ModelCard

    text = merged_card({"repo_id": "org/base", "revision_sha": "d" * 40, "path": "/cache/x"},
                       ["alice/math@v1", {"path": "/tmp/local.lotavec.safetensors", "weight": 0.5}],
                       "ties", {"density": 0.2}, license="apache-2.0")
    card = ModelCard(text)
    d = card.data.to_dict()
    assert d["base_model"] == ["org/base", "alice/math"] and d["base_model_relation"] == "merge"
    assert d["library_name"] == "transformers" and d["license"] == "apache-2.0"
    assert f"| base | `org/base` | `{'d' * 40}` |  |" in card.text
    assert "| ticket 1 | `alice/math` | `v1` |  |" in card.text
    assert "| ticket 2 | `/tmp/local.lotavec.safetensors` | – | 0.5 |" in card.text
    assert '"method": "ties"' in card.text and '"density": 0.2' in card.text


def test_cache_ref_and_merged_card_from_cache_paths(tmp_path):
    from huggingface_hub import ModelCard

    from lotavec.hub import cache_ref

    sha = "e" * 40
    snap = tmp_path / "hub" / "models--org--my-ticket" / "snapshots" / sha
    assert cache_ref(snap / "ticket.lotavec.safetensors") == HubRef("org/my-ticket", sha)
    assert cache_ref(snap) == HubRef("org/my-ticket", sha)
    assert cache_ref(tmp_path / "models--org--x" / "snapshots" / "main") is None
    assert cache_ref(tmp_path / "plain" / "ticket.lotavec.safetensors") is None
    card = ModelCard(merged_card({"path": str(tmp_path / "hub" / "models--org--base" / "snapshots" / ("f" * 40))},
                                 [str(snap / "ticket.lotavec.safetensors")], "sum"))
    assert card.data.base_model == ["org/base", "org/my-ticket"]
    assert f"| ticket 1 | `org/my-ticket` | `{sha}` |  |" in card.text


def test_download_bar_is_silent_and_reports_bytes(capsys):
    from lotavec.hub import _quiet_bar

    calls = []
    bar = _quiet_bar(lambda *a: calls.append(a), "download t")(total=100, unit="B", desc="t", name="hf-bar")
    bar.update(40)
    bar.update(60)
    bar.close()
    files = _quiet_bar(lambda *a: calls.append(a), "download t")(total=3, desc="Fetching 3 files")
    files.update(1)  # file counts are not bytes: not reported
    assert calls == [("download t", 40, 100), ("download t", 100, 100)]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@pytest.mark.parametrize("value", ["org/model", "apache-2.0", "base_model:adapter:a/b", "yes", "No", "null", "~",
                                   "1.0", "2", "1e5", "0x1F", "-x", "a: b", "#tag", "[a]", "{a}", "é-model", "it's",
                                   'say "hi"', "trailing ", " lead", "", "multi\nline", "back\\slash", "*alias",
                                   "&anchor", "!tag", "%pct", "@at", "`tick`", "a,b", "?q", "|pipe", ">fold"])
def test_front_matter_reads_back_as_the_same_strings(value):
    """lotavec writes the front matter itself (no huggingface_hub import on every merge): every
    string, including ones YAML would read as another type, reads back unchanged with PyYAML and
    with huggingface_hub's ModelCard."""
    import yaml
    from huggingface_hub import ModelCard

    from lotavec.card import _front_matter

    text = _front_matter(base_model=[value, "org/base"], license=value, tags=["lotavec", value], absent=None)
    data = yaml.safe_load(text.split("---\n")[1])
    assert data == {"base_model": [value, "org/base"], "license": value, "tags": ["lotavec", value]}
    assert ModelCard(text + "\nbody\n").data.to_dict()["base_model"] == [value, "org/base"]
