"""Shared helpers for the ticket-format tests: fixture paths, expected content, storage arrays.

``fixtures/`` is put on ``sys.path`` so tests can import ``ticketbytes`` (the spec-level
reference encoder/decoder and byte editor) and ``make_fixtures`` (the vector generator).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
VALID = FIXTURES / "valid"
INVALID = FIXTURES / "invalid"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

#: Unsigned bit-pattern dtype and storage dtype per spec dtype.
UINT = {"BF16": np.dtype("<u2"), "F16": np.dtype("<u2"), "F32": np.dtype("<u4")}
STORE = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}


def valid_names() -> list[str]:
    """Stems of the valid fixtures (``NAME.safetensors`` with ``NAME.expected.json``)."""
    return sorted(p.name[: -len(".safetensors")] for p in VALID.glob("*.safetensors"))


def invalid_names() -> list[str]:
    return sorted(p.name for p in INVALID.glob("*.safetensors"))


def expected(name: str) -> dict:
    return json.loads((VALID / f"{name}.expected.json").read_text())


def storage(bits: list[int] | np.ndarray, dtype: str) -> np.ndarray:
    """Storage array (BF16 as uint16 bit patterns) from unsigned bit patterns."""
    return np.asarray(bits, dtype=np.uint64).astype(UINT[dtype]).view(STORE[dtype])


def bits_of(arr: np.ndarray) -> np.ndarray:
    """Unsigned bit patterns of a storage or payload array (same width)."""
    a = np.ascontiguousarray(arr)
    return a.view(f"<u{a.dtype.itemsize}")
