"""Fixtures for the Hub tests: a strict fake Hub shared by each test module (see hubutil.py)."""

from __future__ import annotations

import pytest
from fakehub import FakeHub


@pytest.fixture(scope="module")
def fakehub():
    """A running fake Hub shared by one test module; fails the module if unknown routes were hit."""
    hub = FakeHub().start()
    yield hub
    hub.stop()
    assert not hub.unknown, f"the client used routes the fake Hub does not know: {hub.unknown}"
