"""Every error lotavec raises on purpose.

All errors derive from :class:`LotavecError`. Each also inherits the closest built-in
exception (``FileNotFoundError``, ``ValueError``...) so callers can catch either. Messages
name the file, tensor or option involved, what was expected, what was found, and what to do.
"""

from __future__ import annotations


class LotavecError(Exception):
    """Root of every error lotavec raises deliberately."""


# --- ticket format -------------------------------------------------------------------------


class FormatError(LotavecError, ValueError):
    """A ticket file is not a valid ticket (root of the format errors)."""


class InvalidHeaderError(FormatError):
    """The safetensors header or the ticket manifest is malformed."""


class UnsupportedVersionError(FormatError):
    """The ticket was written with a major format version this reader does not know."""


class UnsupportedFeatureError(FormatError):
    """The ticket uses a must-understand codec or extension this reader does not know."""


class CorruptTicketError(FormatError):
    """Stored bytes are inconsistent: checksum mismatch, bad stream, indices out of range..."""


class ChecksumError(CorruptTicketError):
    """A chunk's checksum does not match its bytes."""


class TruncatedFileError(CorruptTicketError):
    """The file ends before the data its header declares."""


class LimitExceededError(FormatError):
    """A declared size exceeds a safety limit (header size, shape, nnz, decompressed size)."""


# --- models and tickets against models -----------------------------------------------------


class ModelError(LotavecError, ValueError):
    """A model folder, checkpoint or state dict cannot be used as asked."""


class BaseMismatchError(ModelError):
    """A ticket (or fine-tuned model) does not fit the base model it is used with."""


class TensorMismatchError(BaseMismatchError):
    """A tensor's presence, shape or dtype differs between two models, or model and ticket."""


class FingerprintMismatchError(BaseMismatchError):
    """The base tensor's contents differ from the ones the ticket was made against."""


# --- operations ----------------------------------------------------------------------------


class SelectionError(LotavecError, ValueError):
    """Invalid mask-selection request (density, patterns, empty candidate set...)."""


class DisjointnessError(LotavecError, ValueError):
    """Tickets that must be disjoint share entries."""


class MergeConfigError(LotavecError, ValueError):
    """Invalid merge method, weights or parameters."""


class TrainingError(LotavecError, RuntimeError):
    """Training cannot proceed as configured."""


class DataError(LotavecError, ValueError):
    """A training or evaluation data file is malformed (names the file and line)."""


class OutputExistsError(LotavecError, FileExistsError):
    """The output path exists and overwriting was not requested."""


class NotFoundError(LotavecError, FileNotFoundError):
    """A local file, folder, tensor or Hub object does not exist."""


class HubError(LotavecError, RuntimeError):
    """A Hugging Face Hub operation failed (wraps the huggingface_hub error with context)."""


class MissingDependencyError(LotavecError, ImportError):
    """An optional dependency (e.g. matplotlib, peft) is needed for this feature."""
