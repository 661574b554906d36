"""Hugging Face Hub integration: Hub ids to pinned local files, pushing and pulling tickets.

Hub ids
    ``org/name`` or ``org/name@revision`` (a branch, tag, ``refs/pr/N`` or commit sha). Wherever
    lotavec accepts a ticket or a base model, an **existing local path wins**; see
    :func:`parse_ref` for the exact rule.

Pinning
    Every download is made at a 40-hex commit sha, resolved first with
    ``HfApi.resolve_revision`` (which also records ``revision → sha`` in the cache's ``refs/``).
    The sha is returned so callers can record it in what they write. A cached file at a sha is
    served with no request.

Tickets in a repo
    :func:`push_ticket` stores the ticket as ``ticket.lotavec.safetensors`` at the repo root with a
    ``README.md`` model card, in one commit. :func:`resolve_ticket` reads that file, or else the
    single ``*.lotavec.safetensors`` at the repo root.

Base models
    :func:`resolve_model` downloads only transformers' safetensors weights, their index, the config
    and tokenizer/chat-template files (:data:`MODEL_ALLOW_PATTERNS`, the same patterns on every
    call, so offline completeness checks agree); never pickled ``.bin`` weights.

Offline
    With ``HF_HUB_OFFLINE=1`` pinned tickets and models already in the cache work; anything else
    raises :class:`~lotavec.errors.NotFoundError` saying it is not cached and how to fetch it.

Tokens
    Resolved by huggingface_hub (``HF_TOKEN``, ``hf auth login``). lotavec never reads, prints or
    logs them; before a push it only asks huggingface_hub whether one is configured.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import HubError, NotFoundError, OutputExistsError

#: File name of a ticket inside a Hub repo.
TICKET_FILENAME = "ticket.lotavec.safetensors"
#: Suffix every ticket file name ends with.
TICKET_SUFFIX = ".lotavec.safetensors"
#: Files of a base model that :func:`resolve_model` downloads (repo root only).
MODEL_ALLOW_PATTERNS: tuple[str, ...] = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

Progress = Callable[[str, int, int], None]

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")


@dataclass(frozen=True)
class HubRef:
    """A parsed Hub id: ``repo_id`` (``org/name``) and an optional ``revision``."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class ResolvedFile:
    """A local file; ``repo_id`` and ``revision_sha`` are set when it came from the Hub."""

    path: Path
    repo_id: str | None = None
    revision_sha: str | None = None


@dataclass(frozen=True)
class ResolvedDir:
    """A local model folder (or file); ``repo_id`` and ``revision_sha`` when from the Hub."""

    path: Path
    repo_id: str | None = None
    revision_sha: str | None = None


@dataclass(frozen=True)
class PushResult:
    """Outcome of a push: the commit (or, for a no-op, the unchanged head) and the PR if any."""

    commit_url: str
    commit_sha: str
    pr_url: str | None
    noop: bool


def parse_ref(spec: str | os.PathLike, *, local_wins: bool = True) -> HubRef | None:
    """Parse ``org/name[@revision]``; ``None`` when ``spec`` is (or must be) a local path.

    The rule, in order:

    1. With ``local_wins`` (the default), a spec naming an existing file or folder
       (after ``~`` expansion) is local: ``None``.
    2. A spec starting with ``.``, ``/``, ``~`` or containing a backslash is a path: ``None``.
    3. The text before the first ``@`` must be exactly ``namespace/name``, each part 1–96 of
       ``A-Z a-z 0-9 . _ -``, starting and ending with a letter or digit, without ``--`` or
       ``..``, and the name must not end in ``.safetensors``/``.json`` (those are local file
       names); otherwise ``None``.
    4. The text after ``@``, if any, must be a non-empty revision of ``A-Z a-z 0-9 . _ / -``
       without ``..``; otherwise ``None``.

    Args:
        spec: what the user typed.
        local_wins: apply rule 1 (``pull`` passes ``False``: its argument is always a Hub id).

    Returns:
        The :class:`HubRef`, or ``None``.
    """
    if isinstance(spec, os.PathLike):
        return None
    if not isinstance(spec, str) or not spec:
        return None
    if local_wins and os.path.exists(os.path.expanduser(spec)):
        return None
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        return None
    repo_id, at, revision = spec.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        return None
    if repo_id.endswith((".safetensors", ".json")):
        return None
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        return None
    return HubRef(repo_id, revision or None)


# --- huggingface_hub plumbing ----------------------------------------------------------------


def _api():
    from huggingface_hub import HfApi

    return HfApi(library_name="lotavec", library_version=__version__)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _transport_errors() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        err = getattr(mod, "TransportError", None) or getattr(mod, "RequestException", None)
        if err is not None:
            out.append(err)
    return tuple(out)


def _not_cached(what: str, fetch: str) -> str:
    if _offline():
        return (f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                f"run `{fetch}` with network access first, or unset HF_HUB_OFFLINE")
    return (f"{what} is not in the local Hugging Face cache and the Hub at {_endpoint()} cannot be reached: "
            "check your connection (or HF_ENDPOINT) and retry")


@contextmanager
def _hub_errors(ref: HubRef, *, filename: str | None = None, fetch: str = "", pushing: bool = False) -> Iterator[None]:
    """Translate huggingface_hub's errors into one-line lotavec errors that say what to do."""
    from huggingface_hub import errors as hfe

    repo = ref.repo_id
    try:
        yield
    except hfe.GatedRepoError:
        raise HubError(
            f"{repo} is a gated repository and your account has not been granted access: request access at "
            f"{_endpoint()}/{repo}, then log in with `hf auth login` or set HF_TOKEN"
        ) from None
    except hfe.RepositoryNotFoundError:
        raise NotFoundError(
            f"Hub repository {repo!r} not found: check the id (org/name); if it is private, log in with "
            "`hf auth login` or set HF_TOKEN"
        ) from None
    except hfe.RevisionNotFoundError:
        raise NotFoundError(
            f"revision {ref.revision or 'main'!r} not found in Hub repository {repo!r}: use an existing branch, "
            f"tag or commit sha (see {_endpoint()}/{repo}/tree/main)"
        ) from None
    except (hfe.LocalEntryNotFoundError, hfe.RevisionResolutionError, hfe.OfflineModeIsEnabled):
        item = f"{ref}" + (f" ({filename})" if filename else "")
        raise NotFoundError(_not_cached(item, fetch or f"hf download {repo}")) from None
    except hfe.RemoteEntryNotFoundError:
        raise NotFoundError(
            f"Hub repository {repo!r} has no file {filename!r} at {ref.revision or 'main'}: "
            f"list its files at {_endpoint()}/{repo}/tree/{ref.revision or 'main'}"
        ) from None
    except hfe.HfHubHTTPError as e:
        raise HubError(_http_message(e, ref, pushing)) from None
    except _transport_errors() as e:
        raise HubError(
            f"cannot reach the Hub at {_endpoint()} ({type(e).__name__}): check your connection or HF_ENDPOINT, "
            "or set HF_HUB_OFFLINE=1 to use cached files only"
        ) from None


def _http_message(e: Any, ref: HubRef, pushing: bool) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    repo = ref.repo_id
    if status == 401:
        need = " with write access" if pushing else ""
        return f"the Hub rejected your token (HTTP 401) for {repo}: run `hf auth login` or set HF_TOKEN to a valid token{need}"
    if status == 403 and pushing:
        return (f"your token may not write to {repo} (HTTP 403): use a token with write access to the "
                f"{repo.split('/')[0]!r} namespace (`hf auth login`)")
    if status == 403:
        return f"your token may not read {repo} (HTTP 403): check the token's permissions, or log in again with `hf auth login`"
    if status == 412:
        return f"{repo} changed while pushing (another commit landed first): push again"
    detail = (getattr(e, "server_message", None) or str(e)).strip().splitlines()
    return f"Hub request for {ref} failed (HTTP {status}): {detail[0] if detail else type(e).__name__}"


def _quiet_bar(progress: Progress | None, stage: str):
    """A tqdm class that never prints and forwards byte counts to ``progress``."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._bytes = kwargs.get("unit") == "B"

        def update(self, n: float | None = 1) -> None:
            self._done += int(n or 0)
            if progress is not None and self._bytes:
                progress(stage, self._done, int(self.total or 0))

    return _Bar


def _resolve_sha(ref: HubRef, fetch: str) -> str:
    # Offline, read the cached refs/ directly rather than letting the client try and warn.
    with _hub_errors(ref, fetch=fetch):
        return str(_api().resolve_revision(ref.repo_id, revision=ref.revision, local_files_only=_offline()).resolved)


def cache_ref(path: str | os.PathLike) -> HubRef | None:
    """The Hub id and commit sha of a path inside the Hugging Face cache, else ``None``.

    Recognizes ``.../models--<org>--<name>/snapshots/<sha>[/...]`` (the cache layout
    huggingface_hub documents), so a cached path can be recorded as ``org/name@sha``.
    """
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[i + 2]):
            org_name = parts[i][len("models--"):].split("--", 1)
            if len(org_name) == 2:
                return HubRef("/".join(org_name), parts[i + 2])
    return None


# --- resolving ---------------------------------------------------------------------------------


def _ticket_in_dir(folder: Path, filename: str | None) -> Path:
    if filename is not None:
        path = folder / filename
        if not path.is_file():
            raise NotFoundError(f"{folder}: no ticket file {filename!r} in this folder")
        return path
    if (folder / TICKET_FILENAME).is_file():
        return folder / TICKET_FILENAME
    found = sorted(folder.glob(f"*{TICKET_SUFFIX}"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise NotFoundError(f"{folder}: {what} *{TICKET_SUFFIX} files in this folder; name the ticket file itself")
    return found[0]


def _download(repo_id: str, sha: str, filename: str, progress: Progress | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(
        repo_id, filename, revision=sha, library_name="lotavec", library_version=__version__,
        tqdm_class=_quiet_bar(progress, f"download {filename}"),
    ))


def _tickets_in_repo(ref: HubRef, sha: str) -> str:
    files = [f.path for f in _api().list_repo_tree(ref.repo_id, revision=sha) if getattr(f, "size", None) is not None]
    found = sorted(p for p in files if p.endswith(TICKET_SUFFIX))
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(
            f"Hub repository {ref.repo_id!r} at {sha[:12]} has no ticket (*{TICKET_SUFFIX}) at its root; "
            f"files: {', '.join(files) or 'none'}"
        )
    raise NotFoundError(
        f"Hub repository {ref.repo_id!r} at {sha[:12]} holds several tickets ({', '.join(found)}): "
        "name one with filename= (CLI: --filename)"
    )


def _cached_ticket(repo_id: str, sha: str) -> Path | None:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snap = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / sha
    found = sorted(snap.glob(f"*{TICKET_SUFFIX}")) if snap.is_dir() else []
    return found[0] if len(found) == 1 else None


def resolve_ticket(spec: str | os.PathLike, *, filename: str | None = None, progress: Progress | None = None) -> ResolvedFile:
    """A local ticket file for ``spec``: a path, or a Hub id downloaded at a pinned commit.

    Args:
        spec: a local ticket file, a folder holding one ticket, or ``org/name[@revision]``.
        filename: the ticket's file name inside the repo or folder (default:
            ``ticket.lotavec.safetensors``, else the single ``*.lotavec.safetensors``).
        progress: optional ``progress(stage, done, total)`` for download bytes.

    Returns:
        :class:`ResolvedFile`; for Hub ids ``revision_sha`` is the 40-hex commit sha.

    Raises:
        NotFoundError: no such path, repo, revision or file, or not cached while offline.
        HubError: gated repo, rejected token, unreachable Hub, other HTTP errors.
    """
    spec = os.fspath(spec)
    ref = parse_ref(spec)
    if ref is not None:
        return _hub_ticket(ref, filename, progress)
    local = Path(os.path.expanduser(spec))
    if local.is_dir():
        return ResolvedFile(_ticket_in_dir(local, filename))
    if local.is_file():
        return ResolvedFile(local)
    raise NotFoundError(f"{spec}: no such ticket file, and not a Hub id (org/name or org/name@revision)")


def _hub_ticket(ref: HubRef, filename: str | None, progress: Progress | None) -> ResolvedFile:
    from huggingface_hub import errors as hfe

    fetch = f"lotavec pull {ref}"
    sha = _resolve_sha(ref, fetch)
    with _hub_errors(HubRef(ref.repo_id, sha), filename=filename or TICKET_FILENAME, fetch=fetch):
        if filename is not None:
            return ResolvedFile(_download(ref.repo_id, sha, filename, progress), ref.repo_id, sha)
        try:
            path = _download(ref.repo_id, sha, TICKET_FILENAME, progress)
        except hfe.RemoteEntryNotFoundError:
            path = _download(ref.repo_id, sha, _tickets_in_repo(ref, sha), progress)
        except hfe.LocalEntryNotFoundError:
            cached = _cached_ticket(ref.repo_id, sha)
            if cached is None:
                raise
            path = cached
    return ResolvedFile(path, ref.repo_id, sha)


def resolve_model(spec: str | os.PathLike, *, progress: Progress | None = None) -> ResolvedDir:
    """A local base model for ``spec``: a path as is, or a Hub id snapshot at a pinned commit.

    Only :data:`MODEL_ALLOW_PATTERNS` are downloaded (safetensors weights, index, config,
    tokenizer and chat-template files).

    Args:
        spec: a local model folder or file, or ``org/name[@revision]``.
        progress: optional ``progress(stage, done, total)`` for download bytes.

    Returns:
        :class:`ResolvedDir` (the snapshot folder for Hub ids, with the commit sha).

    Raises:
        NotFoundError: no such path/repo/revision, no safetensors weights, or not cached offline.
        HubError: gated repo, rejected token, unreachable Hub, other HTTP errors.
    """
    spec = os.fspath(spec)
    ref = parse_ref(spec)
    if ref is None:
        local = Path(os.path.expanduser(spec))
        if not local.exists():
            raise NotFoundError(f"{spec}: no such model folder or file, and not a Hub id (org/name or org/name@revision)")
        return ResolvedDir(local)
    from huggingface_hub import snapshot_download

    fetch = f"hf download {ref.repo_id}" + (f" --revision {ref.revision}" if ref.revision else "")
    sha = _resolve_sha(ref, fetch)
    with _hub_errors(HubRef(ref.repo_id, sha), fetch=fetch):
        folder = Path(snapshot_download(
            ref.repo_id, revision=sha, allow_patterns=list(MODEL_ALLOW_PATTERNS),
            library_name="lotavec", library_version=__version__,
            tqdm_class=_quiet_bar(progress, f"download {ref.repo_id}"),
        ))
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise NotFoundError(
            f"Hub repository {ref.repo_id!r} at {sha[:12]} has no safetensors weights (model.safetensors or "
            "model-0000k-of-0000n.safetensors); lotavec never loads pickled .bin weights"
        )
    return ResolvedDir(folder, ref.repo_id, sha)


def pull_ticket(spec: str, output: str | os.PathLike | None = None, *, filename: str | None = None,
                overwrite: bool = False, progress: Progress | None = None) -> ResolvedFile:
    """Download a ticket from a Hub id (pinned to a commit sha), optionally copying it out of the cache.

    Args:
        spec: ``org/name[@revision]`` (always a Hub id, even if a local path of that name exists).
        output: copy the ticket here (a file path, or an existing folder); ``None`` keeps the cache path.
        filename: the ticket's file name in the repo (see :func:`resolve_ticket`).
        overwrite: replace an existing ``output`` file.
        progress: optional ``progress(stage, done, total)``.

    Returns:
        :class:`ResolvedFile` with the final path, repo id and commit sha.

    Raises:
        NotFoundError, HubError (see :func:`resolve_ticket`); OutputExistsError.
    """
    ref = parse_ref(spec, local_wins=False)
    if ref is None:
        raise NotFoundError(f"{spec!r} is not a Hub id: expected org/name or org/name@revision")
    got = _hub_ticket(ref, filename, progress)
    if output is None:
        return got
    out = Path(output)
    if out.is_dir():
        out = out / got.path.name
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists: choose another output path or overwrite it (--force)")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(got.path, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ResolvedFile(out, got.repo_id, got.revision_sha)



# --- pushing -----------------------------------------------------------------------------------


def push_files(repo_id: str, files: Mapping[str, str | os.PathLike | bytes], *, private: bool = False,
               revision: str | None = None, create_pr: bool = False, message: str | None = None) -> PushResult:
    """Create ``repo_id`` if missing and upload ``files`` in **one** commit.

    Unchanged files are skipped by huggingface_hub; if nothing changed no commit is made and the
    result has ``noop=True`` and the current head sha.

    Args:
        repo_id: ``org/name``.
        files: path in the repo → local file path or bytes.
        private: create the repo private (ignored when it already exists).
        revision: branch to commit to (created from ``main`` if missing); with ``create_pr`` the
            branch the pull request targets.
        create_pr: open a pull request instead of committing to the branch.
        message: commit message (default ``"Upload with lotavec"``).

    Returns:
        :class:`PushResult`.

    Raises:
        HubError: no token, token rejected, no write access, Hub unreachable, card rejected.
        NotFoundError: a local file is missing, or the repo/branch cannot be found.
    """
    ref = parse_ref(repo_id, local_wins=False)
    if ref is None or ref.revision is not None:
        raise HubError(f"{repo_id!r} is not a Hub repo id: expected org/name (pass the branch with revision=/--revision)")
    for dest, src in files.items():
        if not isinstance(src, bytes) and not os.path.isfile(src):
            raise NotFoundError(f"{os.fspath(src)}: no such file to upload as {dest!r}")
    from huggingface_hub import CommitOperationAdd, get_token
    from huggingface_hub import errors as hfe

    if _offline():
        raise HubError(f"cannot push to {repo_id} while HF_HUB_OFFLINE=1 is set: unset HF_HUB_OFFLINE and retry")
    if get_token() is None:
        raise HubError("pushing to the Hub needs a token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    api = _api()
    with _hub_errors(HubRef(repo_id, revision), pushing=True):
        api.create_repo(repo_id, private=private or None, exist_ok=True)
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        ops = [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=src if isinstance(src, bytes) else os.fspath(src))
               for dest, src in files.items()]
        try:
            info = api.create_commit(repo_id, ops, commit_message=message or "Upload with lotavec", revision=revision,
                                     create_pr=create_pr, parent_commit=head)
        except ValueError as e:
            if isinstance(e, hfe.HfHubHTTPError):
                raise
            raise HubError(f"the Hub rejected the upload to {repo_id}: {' '.join(str(e).split())}") from None
    noop = info.pr_url is None and info.oid == head
    return PushResult(commit_url=str(info.commit_url), commit_sha=str(info.oid), pr_url=info.pr_url, noop=noop)


def push_ticket(path: str | os.PathLike, repo_id: str, *, card_text: str | None = None, private: bool = False,
                revision: str | None = None, create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish a ticket: ``ticket.lotavec.safetensors`` plus a ``README.md`` card, in one commit.

    Pushing the same ticket and card again is a no-op (``noop=True``, no commit).

    Args:
        path: the local ticket file.
        repo_id: ``org/name``; created if missing.
        card_text: the model card; default :func:`lotavec.card.ticket_card` of :func:`ticket_summary`.
        private, revision, create_pr, message: see :func:`push_files`.

    Returns:
        :class:`PushResult`.

    Raises:
        HubError, NotFoundError (see :func:`push_files`); FormatError if ``path`` is not a ticket
        and no ``card_text`` is given.
    """
    if not os.path.isfile(path):
        raise NotFoundError(f"{os.fspath(path)}: no such ticket file")
    if card_text is None:
        from .card import ticket_card

        card_text = ticket_card(ticket_summary(path), repo_id=repo_id)
    files = {TICKET_FILENAME: path, "README.md": card_text.encode("utf-8")}
    return push_files(repo_id, files, private=private, revision=revision, create_pr=create_pr,
                      message=message or "Upload lotavec ticket")


def ticket_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Facts about a ticket file for its model card, from the manifest only (nothing decoded).

    Returns:
        ``{"base_repo_id", "base_revision", "license", "density", "n_tensors", "nnz", "numel",
        "file_bytes", "bits_per_param", "format_version", "lotavec_version", "selection",
        "training"}``; ``bits_per_param`` is file bits ÷ elements of the touched tensors;
        unknown items are ``None``.

    Raises:
        NotFoundError, FormatError subclasses (not a valid ticket).
    """
    from .format.reader import TicketFile

    with TicketFile(path) as tf:
        m = tf.manifest
    nnz = sum(t.nnz for t in m.tensors)
    numel = sum(math.prod(t.shape) for t in m.tensors)
    size = os.path.getsize(path)
    base, prov = m.base, m.provenance

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) and v else None

    return {
        "base_repo_id": text(base.get("repo_id")),
        "base_revision": text(base.get("revision")),
        "license": text(base.get("license")) or text(prov.get("license")),
        "density": nnz / numel if numel else 0.0,
        "n_tensors": len(m.tensors),
        "nnz": nnz,
        "numel": numel,
        "file_bytes": size,
        "bits_per_param": 8 * size / numel if numel else None,
        "format_version": f"{m.version[0]}.{m.version[1]}",
        "lotavec_version": text(prov.get("lotavec_version")),
        "selection": prov.get("selection") if isinstance(prov.get("selection"), dict) else None,
        "training": prov.get("training") if isinstance(prov.get("training"), dict) else None,
    }
