"""lotavec: sparse task vectors (Lottery Ticket Adaptation) — format, training, extraction, merging."""

from ._version import __version__
from .errors import LotavecError

__all__ = ["__version__", "LotavecError"]
