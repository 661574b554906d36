"""Concurrency, short version of ``campaign/concurrency.py``: reader processes of one ticket and
base while merges write elsewhere see exactly the quiet run's results, and readers of a ticket
being atomically re-saved always see one complete ticket.
"""

from __future__ import annotations

import concurrency


def test_readers_unaffected_by_concurrent_merges(tmp_path, campaign_pair):
    from lotavec.extraction import extract
    from lotavec.testing import make_finetuned

    base, ft = campaign_pair
    ft2 = make_finetuned(base, tmp_path / "ft2", density=0.2, seed=2)
    tickets = [tmp_path / "t1.safetensors", tmp_path / "t2.safetensors"]
    extract(base, ft, tickets[0], density=0.2)
    extract(base, ft2, tickets[1], density=0.2)
    row = concurrency.shared_inputs_row(tmp_path, base, tickets, readers=2, seconds=4, cli=False)
    assert row.ok, row.result
    row = concurrency.replace_ticket_row(tmp_path, tickets, readers=2, seconds=3)
    assert row.ok, row.result
