"""Checking tickets against base models."""

from __future__ import annotations

from typing import Any

from .errors import FingerprintMismatchError, TensorMismatchError
from .format.fingerprint import base_digest, base_sample
from .ticket import Ticket


def verify_against_base(ticket: Ticket, base: Any, *, full: bool = True, progress=None) -> int:
    """Check that every ticket tensor exists in ``base`` with its shape, dtype and fingerprint.

    Args:
        ticket: the ticket.
        base: anything :func:`lotavec.models.open_model` accepts (folder, Hub id, state dict, module).
        full: also compare full digests (reads every touched base tensor); else sampled only.

    Returns:
        Number of tensors checked.

    Raises:
        TensorMismatchError, FingerprintMismatchError: naming the first offending tensor.
    """
    from .models import open_model

    src = open_model(base)
    try:
        names = ticket.names
        missing = [n for n in names if n not in set(src.names())]
        if missing:
            raise TensorMismatchError(
                f"base {src.path or 'model'} has no tensor {missing[0]!r} (and {len(missing) - 1} more) "
                "that the ticket changes: wrong base model?"
            )
        for i, name in enumerate(names):
            info = ticket.info(name)
            dtype, shape = src.info(name)
            if tuple(shape) != tuple(info["shape"]) or dtype != info["dtype"]:
                raise TensorMismatchError(
                    f"tensor {name!r}: ticket expects {info['dtype']}{info['shape']}, base has {dtype}{list(shape)}"
                )
            entry = ticket._file.entry(name) if ticket._file is not None else ticket[name]
            arr = src.array(name)
            if entry.base_sample is not None and base_sample(arr) != entry.base_sample:
                raise FingerprintMismatchError(f"tensor {name!r}: base content differs from the ticket's base (sampled fingerprint)")
            if full and entry.base_digest is not None and base_digest(arr) != entry.base_digest:
                raise FingerprintMismatchError(f"tensor {name!r}: base content differs from the ticket's base (full digest)")
            src.release(name)
            if progress:
                progress("verify", i + 1, len(names))
        return len(names)
    finally:
        src.close()
