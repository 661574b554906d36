"""Puts ``fixtures/`` on ``sys.path`` before the format tests are imported, so they can
``import ticketbytes`` (spec-level encoder/decoder and byte editor) and ``make_fixtures``."""

from __future__ import annotations

import sys
from pathlib import Path

_FIXTURES = str(Path(__file__).resolve().parents[2] / "fixtures")
if _FIXTURES not in sys.path:
    sys.path.insert(0, _FIXTURES)
