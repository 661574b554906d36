"""The ticket manifest (spec §4): parse and validate every field of untrusted JSON.

One small ``parse_<field>`` validator per field, as in zarr. Everything the reader later relies
on (sizes, counts, codec names) is checked here, before any allocation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    InvalidHeaderError,
    LimitExceededError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .codecs import MASK_CODECS, VALUE_CODECS
from .dtypes import TICKET_DTYPES

#: Key of the manifest inside safetensors ``__metadata__``.
MANIFEST_KEY = "lotavec.ticket"
#: Value of ``__metadata__["format"]``.
FORMAT_NAME = "lotavec.ticket"
#: Major version this reader implements, and the minor it writes.
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
#: Extensions this reader understands (none in 1.0).
KNOWN_EXTENSIONS: frozenset[str] = frozenset()

DEFAULT_CHUNK_ELEMENTS = 1 << 22
MAX_CHUNK_ELEMENTS = 1 << 24
MAX_TENSORS = 1 << 20
#: Chunk records over all tensors (a 70 B-parameter ticket at the default chunk size has ~17,000).
MAX_CHUNKS = 1 << 18
MAX_NDIM = 16
MAX_NUMEL = 1 << 48
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Chunk:
    """One chunk of a tensor: element range, nnz, codec, stream lengths, crc32."""

    start: int
    length: int
    nnz: int
    mask_codec: str
    mask_bytes: int
    value_bytes: int
    crc32: int
    offset: int  # byte offset of the chunk inside the tensor's data blob


@dataclass(frozen=True)
class TensorEntry:
    """Manifest record of one ticket tensor (no data)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    values: str
    data: str
    chunks: tuple[Chunk, ...]
    base_sample: str | None = None
    base_digest: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_bytes(self) -> int:
        return sum(c.mask_bytes + c.value_bytes for c in self.chunks)


@dataclass(frozen=True)
class Manifest:
    """The validated manifest of a ticket file."""

    version: tuple[int, int]
    chunk_elements: int
    tensors: tuple[TensorEntry, ...]
    base: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    must_understand: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Serialize (canonical key order, compact)."""
        doc = {
            "format_version": self.version[0],
            "format_minor": self.version[1],
            "must_understand": list(self.must_understand),
            "chunk_elements": self.chunk_elements,
            "base": self.base,
            "provenance": self.provenance,
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                    "nnz": t.nnz,
                    "values": t.values,
                    "data": t.data,
                    "base_sample": t.base_sample,
                    "base_digest": t.base_digest,
                    "chunks": [[c.nnz, c.mask_codec, c.mask_bytes, c.value_bytes, c.crc32] for c in t.chunks],
                }
                for t in self.tensors
            ],
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        raise InvalidHeaderError(f"{what} must be an integer in [{lo}, {hi if hi is not None else '∞'}], found {v!r}")
    return v


def parse_version(doc: dict, where: str) -> tuple[int, int]:
    major = doc.get("format_version")
    if not isinstance(major, int) or isinstance(major, bool):
        raise InvalidHeaderError(f"{where}: manifest has no integer format_version")
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"{where}: ticket format version {major} is not supported by this lotavec "
            f"(reads version {FORMAT_MAJOR}); upgrade lotavec: pip install -U lotavec"
        )
    minor = doc.get("format_minor", 0)
    return major, _int(minor, f"{where}: format_minor")


def parse_must_understand(doc: dict, where: str) -> tuple[str, ...]:
    mu = doc.get("must_understand", [])
    if not isinstance(mu, list) or not all(isinstance(x, str) for x in mu):
        raise InvalidHeaderError(f"{where}: must_understand must be a list of strings")
    unknown = [x for x in mu if x not in KNOWN_EXTENSIONS]
    if unknown:
        raise UnsupportedFeatureError(
            f"{where}: ticket needs extension(s) {unknown} that this lotavec does not understand; upgrade lotavec"
        )
    return tuple(mu)


def parse_object(doc: dict, key: str, where: str) -> dict[str, Any]:
    v = doc.get(key, {})
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidHeaderError(f"{where}: manifest field {key!r} must be an object")
    return v


def parse_hex(v: Any, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _HEX32.match(v):
        raise InvalidHeaderError(f"{what} must be 32 lowercase hex digits or null")
    return v


def parse_shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > MAX_NDIM:
        raise InvalidHeaderError(f"{what}: shape must be a list of at most {MAX_NDIM} integers")
    shape = tuple(_int(d, f"{what}: dimension") for d in v)
    if math.prod(shape) > MAX_NUMEL:
        raise LimitExceededError(f"{what}: shape {list(shape)} exceeds 2**48 elements")
    return shape


def parse_chunks(v: Any, numel: int, chunk_elements: int, what: str) -> tuple[Chunk, ...]:
    n_chunks = -(-numel // chunk_elements)
    if not isinstance(v, list) or len(v) != n_chunks:
        raise InvalidHeaderError(f"{what}: expected {n_chunks} chunks for {numel} elements, found {len(v) if isinstance(v, list) else v!r}")
    out = []
    offset = 0
    for i, c in enumerate(v):
        w = f"{what} chunk {i}"
        if not isinstance(c, list) or len(c) != 5:
            raise InvalidHeaderError(f"{w}: must be [nnz, mask_codec, mask_bytes, value_bytes, crc32]")
        start = i * chunk_elements
        length = min(chunk_elements, numel - start)
        nnz = _int(c[0], f"{w}: nnz", 0, length)
        codec = c[1]
        if not isinstance(codec, str):
            raise InvalidHeaderError(f"{w}: mask codec must be a string")
        if codec not in MASK_CODECS:
            raise UnsupportedFeatureError(f"{w}: unknown mask codec {codec!r}; upgrade lotavec")
        mb = _int(c[2], f"{w}: mask_bytes", 0, 1 << 40)
        vb = _int(c[3], f"{w}: value_bytes", 0, 1 << 40)
        crc = _int(c[4], f"{w}: crc32", 0, 0xFFFFFFFF)
        out.append(Chunk(start, length, nnz, codec, mb, vb, crc, offset))
        offset += mb + vb
    return tuple(out)


def parse_tensor(v: Any, chunk_elements: int, where: str) -> TensorEntry:
    if not isinstance(v, dict):
        raise InvalidHeaderError(f"{where}: each tensors[] entry must be an object")
    name = v.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidHeaderError(f"{where}: a tensor entry has no name")
    what = f"{where}: tensor {name!r}"
    shape = parse_shape(v.get("shape"), what)
    dtype = v.get("dtype")
    if not isinstance(dtype, str) or dtype not in TICKET_DTYPES:
        raise UnsupportedFeatureError(f"{what}: dtype {dtype!r} is not one of {TICKET_DTYPES}")
    values = v.get("values")
    if not isinstance(values, str) or values not in VALUE_CODECS:
        raise UnsupportedFeatureError(f"{what}: unknown value codec {values!r}; upgrade lotavec")
    data = v.get("data")
    if not isinstance(data, str):
        raise InvalidHeaderError(f"{what}: 'data' must name a safetensors tensor")
    numel = math.prod(shape)
    nnz = _int(v.get("nnz"), f"{what}: nnz", 0, numel)
    chunks = parse_chunks(v.get("chunks"), numel, chunk_elements, what)
    if sum(c.nnz for c in chunks) != nnz:
        raise InvalidHeaderError(f"{what}: chunk nnz values add up to {sum(c.nnz for c in chunks)}, not nnz={nnz}")
    return TensorEntry(
        name, shape, dtype, nnz, values, data, chunks,
        parse_hex(v.get("base_sample"), f"{what}: base_sample"),
        parse_hex(v.get("base_digest"), f"{what}: base_digest"),
    )


def parse_manifest(text: str, where: str) -> Manifest:
    """Parse and validate a manifest JSON string.

    Raises:
        InvalidHeaderError, UnsupportedVersionError, UnsupportedFeatureError, LimitExceededError.
    """
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise InvalidHeaderError(f"{where}: ticket manifest is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidHeaderError(f"{where}: ticket manifest is not a JSON object")
    version = parse_version(doc, where)
    mu = parse_must_understand(doc, where)
    ce = _int(doc.get("chunk_elements"), f"{where}: chunk_elements", 8, MAX_CHUNK_ELEMENTS)
    if ce % 8:
        raise InvalidHeaderError(f"{where}: chunk_elements must be a multiple of 8, found {ce}")
    tensors = doc.get("tensors")
    if not isinstance(tensors, list):
        raise InvalidHeaderError(f"{where}: manifest has no tensors list")
    if len(tensors) > MAX_TENSORS:
        raise LimitExceededError(f"{where}: {len(tensors)} tensors exceeds the limit of {MAX_TENSORS}")
    n_chunks = sum(len(t["chunks"]) for t in tensors if isinstance(t, dict) and isinstance(t.get("chunks"), list))
    if n_chunks > MAX_CHUNKS:
        raise LimitExceededError(f"{where}: {n_chunks} chunk records exceed the limit of {MAX_CHUNKS}")
    entries = tuple(parse_tensor(t, ce, where) for t in tensors)
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise InvalidHeaderError(f"{where}: tensor {e.name!r} appears twice in the manifest")
        seen.add(e.name)
    return Manifest(version, ce, entries, parse_object(doc, "base", where), parse_object(doc, "provenance", where), mu)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d
