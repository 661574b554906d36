"""``lotavec demo --quick`` through the CLI: the table's structure and that its numbers are computed."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from lotavec.errors import TrainingError

ROWS = ["base", "ticket_a", "ticket_b", "merged", "fft_a", "fft_ab"]
LABELS = ["base model", "base + ticket A", "base + ticket B", "merged A + B", "full fine-tune on A",
          "full fine-tune A, then B"]


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    from lotavec_cli.cmd_demo import demo

    work = tmp_path_factory.mktemp("demo") / "work"
    r = CliRunner().invoke(demo, ["--quick", "--json", "--threads", "1", "--workdir", str(work)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return json.loads(r.output), work


def test_rows_and_scores(quick_json):
    res, _ = quick_json
    assert res["quick"] is True and res["device"] == "cpu" and res["threads"] == 1
    assert [r["key"] for r in res["rows"]] == ROWS
    tasks = [t["name"] for t in res["tasks"]]
    assert tasks == ["reverse_words", "upper_words"]
    for row in res["rows"]:
        for t in tasks:
            assert row["n"][t] == 8
            assert 0 <= row["correct"][t] <= 8
            assert row["scores"][t] == pytest.approx(row["correct"][t] / 8)
        assert row["eval_seconds"] > 0


def test_tickets_are_measured_and_disjoint(quick_json):
    res, work = quick_json
    a, b = res["tickets"]
    assert (a["key"], b["key"], b["disjoint_from"]) == ("A", "B", ["A"])
    for tk in (a, b):
        assert tk["nnz"] > 0 and tk["bytes"] > 0 and tk["covered_params"] > tk["nnz"]
        assert tk["density"] == pytest.approx(tk["nnz"] / tk["covered_params"])
        assert tk["bits_per_param"] == pytest.approx(8 * tk["bytes"] / tk["covered_params"])
        assert 0 < tk["model_bits_per_param"] < tk["bits_per_param"]
        assert tk["dense_bits_per_param"] == 16.0  # the tiny model is bf16
        assert math.isfinite(tk["first_loss"]) and tk["train_seconds"] > 0
        assert (work / "tickets" / tk["path"].rsplit("/", 1)[1]).is_file()
    from lotavec.ticket import load_ticket

    with load_ticket(a["path"]) as ta, load_ticket(b["path"]) as tb:
        assert ta.nnz == a["nnz"] and tb.nnz == b["nnz"]
        import numpy as np

        for n in set(ta.names) & set(tb.names):
            assert not np.intersect1d(ta.indices(n), tb.indices(n)).size
    assert res["merged_equals_sequential"] is True
    assert (work / "merged" / "config.json").is_file()


def test_timings_are_measured(quick_json):
    res, _ = quick_json
    assert res["seconds"] > 0 and res["cpu_seconds"] > 0
    assert {"evaluate", "train ticket A (LoTA)", "train ticket B (LoTTO)", "merge", "full fine-tune"} <= set(res["timings"])
    assert sum(res["timings"].values()) <= res["seconds"] + 1e-6


def test_text_table(tmp_path):
    from lotavec_cli.cmd_demo import demo

    r = CliRunner().invoke(demo, ["--quick", "-q", "--threads", "1", "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = r.output
    assert "NOTE --quick" in out and "tiny random" in out
    assert "A: reverse_words (LoTA)" in out and "B: upper_words (LoTTO, disjoint from A)" in out
    score_lines = [ln for ln in out.splitlines() if any(ln.startswith(lab + " ") for lab in LABELS)]
    assert len(score_lines) == len(LABELS)
    for ln in score_lines:
        a, b = (float(x) for x in ln.split()[-2:])
        assert 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0
    assert "bit for bit: yes" in out and "wall time" in out


def test_bad_arguments():
    from lotavec_cli.cmd_demo import demo

    from lotavec.demo import DemoConfig

    r = CliRunner().invoke(demo, ["--quick", "--device", "tpu"])
    assert r.exit_code == 2 and "tpu" in r.output
    with pytest.raises(TrainingError, match="two different tasks"):
        DemoConfig(tasks=("add3", "add3"))
    with pytest.raises(TrainingError, match="density"):
        DemoConfig(density=0.0)
    from lotavec.errors import DataError

    with pytest.raises(DataError, match="unknown task"):
        DemoConfig(tasks=("add3", "nope"))
