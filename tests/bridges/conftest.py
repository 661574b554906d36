"""Fixtures for the bridges tests (helpers are in bridges_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def llama_ticket(tmp_path_factory, tiny_pair):
    """``(base_dir, ticket)``: a density-0.05 ticket of the tiny llama fine-tune (file-backed)."""
    from lotavec.extraction import extract

    base, ft = tiny_pair
    out = tmp_path_factory.mktemp("bridges") / "llama.lotavec.safetensors"
    return base, extract(base, ft, out, density=0.05).ticket
