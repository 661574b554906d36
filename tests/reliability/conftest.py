"""Short CI versions of the reliability campaign (``campaign/``); see docs/RELIABILITY.md.

``campaign/`` (and ``fixtures/``, for ``ticketbytes``) is put on ``sys.path`` so the tests call the campaign's own functions with smaller
counts. ``campaign_work`` is a session folder where ``tiny_base`` / ``tiny_ft`` link to the session's
tiny llama pair (``tests/conftest.py``), so campaign helpers reuse it instead of building models.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "campaign", ROOT / "fixtures"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture(scope="session")
def campaign_work(tmp_path_factory, tiny_pair) -> Path:
    """A work folder whose ``tiny_base`` and ``tiny_ft`` are the session's tiny llama pair."""
    work = tmp_path_factory.mktemp("campaign")
    os.symlink(tiny_pair[0], work / "tiny_base")
    os.symlink(tiny_pair[1], work / "tiny_ft")
    return work


@pytest.fixture(scope="session")
def campaign_pair(campaign_work) -> tuple[Path, Path]:
    """``(base, fine-tuned)`` folders inside ``campaign_work``."""
    return campaign_work / "tiny_base", campaign_work / "tiny_ft"
