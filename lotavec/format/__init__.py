"""Ticket format v1: bytes ⇄ numpy arrays. Imports numpy and zstandard, never torch.

The normative description is ``spec/ticket-format.md``.
"""

from .dtypes import TICKET_DTYPES, from_float32, storage_dtype, to_float32
from .fingerprint import base_digest, base_sample
from .manifest import FORMAT_MAJOR, FORMAT_MINOR, Manifest, TensorEntry
from .reader import TicketFile
from .writer import TicketFileWriter

__all__ = [
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "TICKET_DTYPES",
    "Manifest",
    "TensorEntry",
    "TicketFile",
    "TicketFileWriter",
    "base_digest",
    "base_sample",
    "from_float32",
    "storage_dtype",
    "to_float32",
]
