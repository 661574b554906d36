"""Bridges between tickets and the tools users already run.

* :func:`~lotavec.bridges.peft.export_peft` — a ticket as a PEFT SHiRA adapter folder that
  ``peft.PeftModel.from_pretrained(base, folder)`` loads.
* :func:`~lotavec.bridges.patch.export_patch` — a ticket as a plain safetensors *sparse weight
  patch* (``NAME.indices`` + ``NAME.values`` per tensor), for in-place weight updates;
  :func:`~lotavec.bridges.patch.apply_patch` applies one with plain torch.
* :func:`~lotavec.bridges.lora.import_peft` (also importable from ``lotavec.bridges.peft``) — a
  LoRA adapter as a ticket (so LoRA adapters of any rank merge through lotavec).

Submodules are imported on use (``from lotavec.bridges.peft import export_peft``).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ModelError
from ..ticket import Ticket


def ticket_base(ticket: Ticket, base: Any = None) -> Any:
    """The base model to use with ``ticket``: ``base`` when given, else the one the ticket records.

    Args:
        ticket: the ticket.
        base: a model folder, ``.safetensors`` file, Hub id, state dict or ``nn.Module``; ``None``
            to use the ticket's ``base.repo_id`` (at ``base.revision`` when recorded).

    Returns:
        ``base`` (a local path for Hub ids), ready for :func:`lotavec.models.open_model`.

    Raises:
        ModelError: no ``base`` was given and the ticket records no base repository.
        NotFoundError, HubError: the base cannot be found or fetched.
    """
    from .. import hub

    if base is None:
        repo = ticket.base.get("repo_id")
        if not repo:
            raise ModelError(f"ticket {ticket.path or '(in memory)'} records no base model (base.repo_id is empty); "
                             "pass the base model folder with --base")
        rev = ticket.base.get("revision")
        return os.fspath(hub.resolve_model(f"{repo}@{rev}" if rev else repo).path)
    if isinstance(base, (str, os.PathLike)):
        return os.fspath(hub.resolve_model(base).path)
    return base
