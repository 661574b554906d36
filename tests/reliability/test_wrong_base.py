"""Wrong base, short version of ``campaign/wrong_base.py``: an ``ulpdiff`` ticket of base A against
bases with other weights, other shapes, another dtype and another architecture. Every mismatch is
refused by ``lotavec merge`` (no output folder, no temporary folder), ``lotavec verify --base``
and ``lotavec.apply`` (no weight modified) before anything is written.
"""

from __future__ import annotations

import pytest
import wrong_base

CELLS = ("A (the ticket's base)", "B (same architecture, other weights)", "A with one entry 1 ulp off (not sampled)",
         "C (other MLP shapes)", "A upcast to F32", "GPT-2 (other tensor names)")


@pytest.fixture(scope="module")
def matrix_rows(campaign_work, campaign_pair):
    work = campaign_work / "wrong_base"
    work.mkdir(exist_ok=True)
    rows = wrong_base.matrix(work, codecs=("ulpdiff",), only=CELLS + ("B upcast to F32",), pair=campaign_pair)
    return {r.check.split(" × ", 1)[1]: r for r in rows}


@pytest.mark.parametrize("base", CELLS)
def test_mismatch_is_refused_before_any_output(matrix_rows, base):
    row = matrix_rows[base]
    assert row.ok, row.result


def test_apply_refuses_other_weights_in_another_dtype(matrix_rows):
    row = matrix_rows["B upcast to F32"]
    assert row.details["apply"].startswith("refused"), row.result
