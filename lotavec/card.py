"""Model cards (``README.md``) for tickets pushed to the Hub and for merged-model folders.

The YAML front matter has the layout of ``huggingface_hub.ModelCardData.to_yaml()`` (no Jinja2),
so the Hub and ``huggingface_hub.ModelCard`` parse it (the tests check both). Ticket cards declare
``library_name: lotavec`` and ``base_model_relation: adapter``; merged-model cards declare
``base_model: [ids...]`` and ``base_model_relation: merge``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Tags every ticket card carries.
TICKET_TAGS = ("lotavec", "lota", "sparse-task-vector")

_LOTA = "[Lottery Ticket Adaptation](https://arxiv.org/abs/2406.16797)"


#: Strings written as plain YAML scalars: Hub ids, licenses, tags. Anything else, and anything
#: YAML would read as another type (numbers, booleans, null), is written JSON-quoted, which YAML
#: reads as the same string.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+-]*")
_NOT_PLAIN = re.compile(r"[-+]?[0-9][0-9._]*([eE][-+]?[0-9]+)?|0[xob][0-9a-fA-F_]+|(?i:y|n|yes|no|true|false|on|off|null)")


def _scalar(v: str) -> str:
    v = str(v)
    return v if _PLAIN.fullmatch(v) and not _NOT_PLAIN.fullmatch(v) else json.dumps(v)


def _front_matter(**fields: Any) -> str:
    """YAML front matter of strings and lists of strings (``None`` fields are left out), in the
    layout of ``huggingface_hub.ModelCardData.to_yaml()``; written here so that every merge does
    not import huggingface_hub's card module (and PyYAML) for a handful of strings."""
    lines = ["---"]
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            lines += [f"{k}:"] + [f"- {_scalar(x)}" for x in v]
        else:
            lines.append(f"{k}: {_scalar(v)}")
    return "\n".join(lines) + "\n---\n"


def _human_bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if v < 1000 or unit == "TB":
            return f"{int(v)} B" if unit == "B" else f"{v:.2f} {unit}"
        v /= 1000
    raise AssertionError("unreachable")


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _training_line(training: Mapping[str, Any] | None) -> str | None:
    if not training:
        return None
    parts = [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in training.items()]
    return ", ".join(parts)


def ticket_card(summary: Mapping[str, Any], *, repo_id: str | None = None) -> str:
    """The ``README.md`` for a ticket repo.

    Args:
        summary: facts about the ticket (see :func:`lotavec.hub.ticket_summary`): ``base_repo_id``,
            ``base_revision``, ``density``, ``n_tensors``, ``nnz``, ``numel``, ``file_bytes``,
            ``bits_per_param``, ``format_version``; optional ``license``, ``training``,
            ``selection``, ``lotavec_version``. Missing or ``None`` items are left out.
        repo_id: the ticket's own repo (used in the how-to-use snippet; a placeholder otherwise).

    Returns:
        The card text: YAML front matter, a metadata table and a how-to-use section.
    """
    base = summary.get("base_repo_id")
    tags = list(TICKET_TAGS) + ([f"base_model:adapter:{base}"] if base else [])
    head = _front_matter(
        base_model=base,
        base_model_relation="adapter" if base else None,
        library_name="lotavec",
        license=summary.get("license"),
        tags=tags,
    )
    me = repo_id or "<org>/<ticket-repo>"
    base_name = base or "<base-model>"
    title = me.split("/")[-1] if repo_id else "lotavec ticket"
    lines = [
        head,
        f"# {title}",
        "",
        f"A sparse task vector (a *lottery ticket*, {_LOTA}) for "
        + (f"[`{base}`](https://huggingface.co/{base})" if base else "its base model")
        + ", stored in the [lotavec](https://pypi.org/project/lotavec/) ticket format: for some weight "
        "tensors of the base, the flat indices a fine-tune changed and their new values.",
        "",
        "## Ticket",
        "",
        "| property | value |",
        "|---|---|",
    ]
    rows: list[tuple[str, Any]] = [
        ("base model", f"`{base}`" if base else None),
        ("base revision", f"`{summary['base_revision']}`" if summary.get("base_revision") else None),
        ("format version", summary.get("format_version")),
        ("tensors", summary.get("n_tensors")),
        ("changed entries (nnz)", f"{summary['nnz']:,}" if summary.get("nnz") is not None else None),
        ("entries of the touched tensors", f"{summary['numel']:,}" if summary.get("numel") is not None else None),
        ("density", f"{100 * summary['density']:.4g} %" if summary.get("density") is not None else None),
        ("file size", _human_bytes(summary["file_bytes"]) if summary.get("file_bytes") is not None else None),
        ("bits per parameter", f"{summary['bits_per_param']:.4g} (file bits ÷ entries of the touched tensors)"
         if summary.get("bits_per_param") is not None else None),
        ("selection", _training_line(summary.get("selection"))),
        ("training", _training_line(summary.get("training"))),
        ("written by", f"lotavec {summary['lotavec_version']}" if summary.get("lotavec_version") else None),
    ]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows if value is not None]
    lines += [
        "",
        "## How to use",
        "",
        "Merge the ticket into its base model and save a regular transformers folder:",
        "",
        "```bash",
        "pip install lotavec",
        f"lotavec merge {base_name} {me} -o merged-model",
        "```",
        "",
        "From Python:",
        "",
        "```python",
        "import lotavec",
        "",
        f'ticket = lotavec.load_ticket("{me}")  # downloads and pins the commit',
        f'lotavec.merge("{base_name}", ["{me}"], "merged-model")',
        "```",
        "",
        "The ticket is only meaningful on the exact base weights it was made from"
        + (f" (`{base}`" + (f" at `{summary['base_revision']}`)" if summary.get("base_revision") else ")") if base else "")
        + "; lotavec checks the base tensors' fingerprints before applying it.",
        "",
    ]
    return "\n".join(lines)


def _source(entry: str | Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(label, Hub repo id or None, revision or None) of a merge input."""
    if isinstance(entry, str):
        from .hub import cache_ref, parse_ref

        ref = parse_ref(entry) or cache_ref(entry)
        return (ref.repo_id, ref.repo_id, ref.revision) if ref else (entry, None, None)
    repo = entry.get("repo_id")
    rev = entry.get("revision_sha") or entry.get("revision")
    path = entry.get("path") or entry.get("spec")
    cached = None
    if repo is None and path and "models--" in str(path):  # a Hugging Face cache path (lotavec.hub.cache_ref)
        from .hub import cache_ref

        cached = cache_ref(path)
    if cached is not None:
        return cached.repo_id, cached.repo_id, rev or cached.revision
    return repo or str(path or "?"), repo, rev


def merged_card(base: str | Mapping[str, Any], tickets: Sequence[str | Mapping[str, Any]], method: str,
                params: Mapping[str, Any] | None = None, *, license: str | None = None) -> str:
    """The ``README.md`` of a merged-model folder written by lotavec.

    Args:
        base: the base model: a Hub id / path string, or a mapping with ``repo_id``,
            ``revision_sha`` (or ``revision``) and ``path``.
        tickets: the merged tickets, same forms as ``base``; a mapping may carry ``weight``.
        method: merge method name.
        params: method parameters (JSON-serializable).
        license: the base model's license, when known.

    Returns:
        The card text; ``base_model`` lists every input known by Hub id (base first),
        ``base_model_relation: merge``, ``library_name: transformers``.
    """
    inputs = [_source(base)] + [_source(t) for t in tickets]
    hub_ids = list(dict.fromkeys(repo for _, repo, _ in inputs if repo))
    head = _front_matter(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        license=license,
        tags=["lotavec", "merge", "lota", "sparse-task-vector"],
    )
    lines = [head, "# Merged model", "",
             f"Made by [lotavec](https://pypi.org/project/lotavec/) by merging sparse task vectors ({_LOTA}) "
             f"into a base model with the `{method}` method.", "",
             "| role | source | revision | weight |", "|---|---|---|---|"]
    for i, (label, _, rev) in enumerate(inputs):
        raw = base if i == 0 else tickets[i - 1]
        weight = raw.get("weight") if isinstance(raw, Mapping) else None
        role = "base" if i == 0 else f"ticket {i}"
        lines.append(f"| {role} | `{_cell(label)}` | {f'`{rev}`' if rev else '–'} | {'' if weight is None else weight} |")
    lines += ["", "Merge parameters:", "", "```json", json.dumps({"method": method, **dict(params or {})}, indent=2,
                                                                  sort_keys=True, default=str), "```", "",
              "Load it like any transformers model:", "", "```python",
              "from transformers import AutoModelForCausalLM", "",
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")', "```", ""]
    return "\n".join(lines)
