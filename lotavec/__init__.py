"""lotavec: sparse task vectors (Lottery Ticket Adaptation) — format, training, extraction, merging.

Importing lotavec only defines names; heavy modules (torch, transformers) load on first use.
``lotavec.merge`` and ``lotavec.train`` are both the subpackages and callables (the streaming merge
and the LoTA pipeline).

Example:
    >>> import lotavec
    >>> r = lotavec.extract("base/", "finetuned/", "math.safetensors", density=0.1)  # doctest: +SKIP
    >>> lotavec.merge("base/", ["math.safetensors", "code.safetensors"], "merged/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import LotavecError
from .ticket import Ticket, TicketTensor, TicketWriter, load_ticket

_LAZY = {
    "extract": ("lotavec.extraction", "extract"),
    "merge": ("lotavec.merge", None),
    "MergeParams": ("lotavec.merge.config", "MergeParams"),
    "apply": ("lotavec.merge.apply", "apply"),
    "unapply": ("lotavec.merge.apply", "unapply"),
    "overlap": ("lotavec.merge.compare", "ticket_overlap"),
    "open_model": ("lotavec.models", "open_model"),
    "train": ("lotavec.train", None),
    "TrainConfig": ("lotavec.train.pipeline", "TrainConfig"),
    "push_to_hub": ("lotavec.hub", "push_ticket"),
}

__all__ = ["LotavecError", "Ticket", "TicketTensor", "TicketWriter", "__version__", "load_ticket", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        # ``merge`` and ``train`` are packages whose module objects are callable.
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'lotavec' has no attribute {name!r}")
