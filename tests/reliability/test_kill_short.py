"""Crash safety, short version of ``campaign/kill.py``: 5 kill -9 per command.

``lotavec extract``, ``merge``, ``train`` and ``pull`` (against the strict fake Hub) run in children
forked from a pre-imported CLI and are killed at random moments (uniform over the run, or just
after their first temporary file appears). After each kill the destination must hold the old
content, nothing (when there was none) or the complete new content; a rerun must succeed with the
new content; for ``pull`` the Hub cache must never present an incomplete file.
"""

from __future__ import annotations

import os
import stat

import kill
import pytest

COMMANDS = ("extract", "merge", "train", "pull")


@pytest.fixture(scope="module")
def kill_rows(campaign_work, campaign_pair):
    work = campaign_work / "kill"
    work.mkdir(exist_ok=True)
    rows = kill.run(list(COMMANDS), 5, work, size="tiny", seed=7, pair=campaign_pair, calibration=1)
    return {r.check: r for r in rows}


@pytest.mark.parametrize("command", COMMANDS)
def test_kill_leaves_old_or_complete_new_and_rerun_succeeds(kill_rows, command):
    row = kill_rows[f"kill -9: {command}"]
    assert row.ok, row.result
    assert not any(k.endswith(":TORN") for k in row.details["outcomes"])


def test_fake_hub_saw_only_known_routes(kill_rows):
    assert "kill -9: pull (fake Hub strictness)" not in kill_rows


def test_ticket_files_honour_the_umask(tmp_path):
    import numpy as np

    from lotavec.ticket import TicketTensor, TicketWriter

    old = os.umask(0o022)
    try:
        with TicketWriter(tmp_path / "t.safetensors") as w:
            base = np.zeros(8, np.float32)
            w.add(TicketTensor.from_finetuned("w", base, base + 1, np.array([1, 2]), "F32"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == 0o644
