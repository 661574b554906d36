"""Turn CLI arguments that may be Hub ids into local paths (an existing local path wins)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def resolve_model_arg(spec: str) -> tuple[str, dict[str, Any]]:
    """Local folder for a model argument, and its ``{"repo_id", "revision"}`` when from the Hub."""
    if os.path.exists(spec):
        return spec, _local_ref(spec)
    from lotavec import hub

    if hub.parse_ref(spec) is None:
        from lotavec.errors import NotFoundError

        raise NotFoundError(f"{spec}: no such file or folder, and not a Hub id of the form org/name[@revision]")
    r = hub.resolve_model(spec)
    return os.fspath(r.path), {"repo_id": r.repo_id, "revision": r.revision_sha, "revision_sha": r.revision_sha}


def resolve_ticket_arg(spec: str) -> str:
    """Local file for a ticket argument (downloaded and pinned when it is a Hub id)."""
    return resolve_ticket_ref(spec)[0]


def resolve_ticket_ref(spec: str) -> tuple[str, dict[str, Any]]:
    """Local file for a ticket argument and its ``{"repo_id", "revision_sha", "path"}`` record."""
    if os.path.exists(spec):
        return spec, {**_local_ref(spec), "path": os.path.abspath(spec)}
    from lotavec import hub

    if hub.parse_ref(spec) is None:
        from lotavec.errors import NotFoundError

        raise NotFoundError(f"{spec}: no such ticket file, and not a Hub id of the form org/name[@revision]")
    r = hub.resolve_ticket(spec)
    return os.fspath(r.path), {"repo_id": r.repo_id, "revision_sha": r.revision_sha, "path": os.fspath(r.path)}


def resolve_ticket_args(specs: Iterable[str]) -> list[str]:
    """:func:`resolve_ticket_arg` for each."""
    return [resolve_ticket_arg(s) for s in specs]


def _local_ref(path: str) -> dict[str, Any]:
    """Identity of a local path: the Hub id and sha it was downloaded at, when the HF cache says so."""
    from lotavec.hub import cache_ref

    ref = cache_ref(path)
    if ref is None:
        return {"repo_id": None, "revision": None}
    return {"repo_id": ref.repo_id, "revision": ref.revision, "revision_sha": ref.revision}
