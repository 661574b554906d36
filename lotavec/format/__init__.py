"""Ticket format: bytes ⇄ numpy arrays. Imports numpy and zstandard, never torch."""
