"""A strict, in-memory fake of the Hugging Face Hub HTTP API, for tests only.

It speaks the endpoints the real ``huggingface_hub`` client (2.x, Xet disabled) calls for model
repos — create repo, validate-yaml, preupload, git-lfs batch + PUT + verify, ndjson commit,
create branch, repo info, tree listing, HEAD/GET ``resolve`` — over real HTTP on 127.0.0.1, so
tests exercise the real client code. It is strict on purpose:

* unknown routes, methods or query parameters answer 501 and are recorded in
  ``FakeHub.unknown`` (the ``fakehub`` fixture fails the test if any were hit), so a change in the
  client's protocol breaks the tests instead of passing silently;
* writes need ``Authorization: Bearer <token>`` with a known write token (401 otherwise);
* every LFS upload's sha256 and size must equal the declared oid and size; a commit may only
  reference LFS objects that were uploaded; ``parentCommit`` must match the branch head;
* commit shas are content-addressed (sha1 over parent, files and message), so equal histories
  give equal shas;
* errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) like
  the Hub; a 404 EntryNotFound from ``resolve`` carries ``X-Repo-Commit``;
* LFS uploads and downloads go to another origin (``localhost`` instead of ``127.0.0.1``), like
  the Hub's S3 and CDN hosts, and those requests must not carry an Authorization header.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

WRITE_TOKEN = "hf_fake_write_token"
READ_TOKEN = "hf_fake_read_token"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_THRESHOLD = 10 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RELATIONS = {"adapter", "merge", "quantized", "finetune"}


def git_blob_oid(data: bytes) -> str:
    """Git's sha1 of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """One file at one commit: its bytes and whether git stores it through LFS."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob oid: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_oid(self.pointer if self.lfs else self.data)


@dataclass
class Repo:
    """An in-memory model repo: commits by sha, refs (branches and ``refs/pr/N``) to shas."""

    repo_id: str
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    branches: set[str] = field(default_factory=set)
    n_prs: int = 0

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        return rev if rev in self.commits else None


class HubError(Exception):
    """An HTTP error answer: status, message, optional X-Error-Code and extra headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class FakeHub:
    """The fake Hub's state plus a threaded HTTP server serving it.

    Args:
        tokens: token → role (``"write"`` or ``"read"``); defaults to one of each.
    """

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens if tokens is not None else {WRITE_TOKEN: "write", READ_TOKEN: "read"}
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.pending_uploads: dict[str, int] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, had Authorization)
        self.unknown: list[str] = []
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.storage_origin = f"http://localhost:{self.port}"  # another origin, like S3 / the CDN
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); later requests get "connection refused"."""
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread = None

    # --- direct (non-HTTP) helpers for tests -----------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private=private, gated=gated)
            first = {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}
            sha = _commit_sha(None, first, "initial commit")
            repo.commits[sha] = first
            repo.refs["main"] = sha
            repo.branches.add("main")
            self.repos[repo_id] = repo
            return repo

    def add_files(self, repo_id: str, files: dict[str, bytes], *, message: str = "add files", branch: str = "main") -> str:
        """Commit files directly (setup for download tests); returns the new commit sha."""
        with self.lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.refs[branch]
            tree = dict(repo.commits[head])
            for path, data in files.items():
                lfs = _is_lfs(path, len(data), data[:512], tree)
                if lfs:
                    self.lfs_store[hashlib.sha256(data).hexdigest()] = data
                tree[path] = StoredFile(data, lfs)
            sha = _commit_sha(head, tree, message)
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            return sha

    def head(self, repo_id: str, ref: str = "main") -> str:
        return self.repos[repo_id].refs[ref]

    def file_at(self, repo_id: str, path: str, ref: str = "main") -> bytes:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(ref)][path].data

    def count(self, method: str, pattern: str) -> int:
        """How many requests with this method had a path matching the regex ``pattern``."""
        return sum(1 for m, p, _ in self.requests if m == method and re.search(pattern, p))

    # --- request handling ------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        auth = h.headers.get("Authorization")
        with self.lock:
            self.requests.append((method, url.path, auth is not None))
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = _read_body(h) if method in ("POST", "PUT") else b""
        try:
            route = self._route(method, parts, query)
            if route is None:
                with self.lock:
                    self.unknown.append(f"{method} {h.path}")
                raise HubError(501, f"fakehub: unknown route {method} {url.path}?{url.query}")
            status, payload, headers = route(h, parts, query, body)
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            status, payload = e.status, {"error": e.message, **e.extra}
        _send(h, method, status, payload, headers)

    def _route(self, method: str, p: list[str], q: dict):
        allowed_q: set[str] = set()
        fn = None
        if p[:3] == ["api", "repos", "create"] and len(p) == 3 and method == "POST":
            fn = self._create_repo
        elif p == ["api", "validate-yaml"] and method == "POST":
            fn = self._validate_yaml
        elif p[:2] == ["api", "models"] and len(p) == 4 and method == "GET":
            fn = self._repo_info
        elif p[:2] == ["api", "models"] and len(p) == 6 and p[4] == "revision" and method == "GET":
            fn = self._repo_info
        elif p[:2] == ["api", "models"] and len(p) >= 6 and p[4] == "tree" and method == "GET":
            fn, allowed_q = self._tree, {"recursive", "expand", "cursor"}
        elif p[:2] == ["api", "models"] and len(p) == 6 and p[4] == "preupload" and method == "POST":
            fn, allowed_q = self._preupload, {"create_pr"}
        elif p[:2] == ["api", "models"] and len(p) == 6 and p[4] == "commit" and method == "POST":
            fn, allowed_q = self._commit, {"create_pr"}
        elif p[:2] == ["api", "models"] and len(p) == 6 and p[4] == "branch" and method == "POST":
            fn = self._create_branch
        elif len(p) == 6 and p[1].endswith(".git") and p[2:5] == ["info", "lfs", "objects"] and method == "POST":
            fn = {"batch": self._lfs_batch, "verify": self._lfs_verify}.get(p[5])
        elif len(p) == 2 and p[0] == "_fake_s3" and method == "PUT":
            fn = self._s3_put
        elif len(p) == 2 and p[0] == "_fake_cdn" and method in ("GET", "HEAD"):
            fn = self._cdn_get
        elif len(p) >= 5 and p[2] == "resolve" and p[0] not in ("api", "datasets", "spaces") and method in ("GET", "HEAD"):
            fn = self._resolve
        if fn is None or set(q) - allowed_q:
            return None
        return fn

    # --- helpers ---------------------------------------------------------------------------

    def _role(self, h) -> str | None:
        auth = h.headers.get("Authorization")
        if auth is None:
            return None
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _require_write(self, h) -> None:
        role = self._role(h)
        if role is None:
            raise HubError(401, "You must be authenticated to access this resource")
        if role != "write":
            raise HubError(403, "You don't have the rights to write with this token (read-only)")

    def _repo(self, h, ns: str, name: str) -> Repo:
        repo = self.repos.get(f"{ns}/{name}")
        if repo is None or (repo.private and self._role(h) is None):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _rev(self, repo: Repo, rev: str) -> str:
        sha = repo.resolve(rev)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha

    # --- routes ----------------------------------------------------------------------------

    def _create_repo(self, h, p, q, body):
        self._require_write(h)
        req = json.loads(body)
        if req.get("type", "model") != "model":
            raise HubError(400, f"fakehub only hosts model repos, got type {req.get('type')!r}")
        if not isinstance(req.get("name"), str) or not isinstance(req.get("organization"), str):
            raise HubError(400, f"create needs 'name' and 'organization' strings, got {req!r}")
        repo_id = f"{req['organization']}/{req['name']}"
        url = f"{self.endpoint}/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo", extra={"url": url})
            self.create_repo(repo_id, private=req.get("visibility") == "private" or bool(req.get("private")))
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, h, p, q, body):
        content = json.loads(body)["content"]
        errors = []
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        if m is None:
            errors.append("no YAML front matter between '---' lines")
        else:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                meta, errors = None, [f"invalid YAML: {e}"]
            if meta is not None and not isinstance(meta, dict):
                errors.append("metadata must be a YAML mapping")
            elif isinstance(meta, dict):
                rel = meta.get("base_model_relation")
                if rel is not None and rel not in _RELATIONS:
                    errors.append(f'"base_model_relation" must be one of {sorted(_RELATIONS)}')
                bm = meta.get("base_model")
                if bm is not None and not (isinstance(bm, str) or (isinstance(bm, list) and all(isinstance(b, str) for b in bm))):
                    errors.append('"base_model" must be a string or a list of strings')
                if not isinstance(meta.get("tags", []), list):
                    errors.append('"tags" must be a list')
        if errors:
            return 400, {"errors": [{"message": e} for e in errors], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _repo_info(self, h, p, q, body):
        repo = self._repo(h, p[2], p[3])
        sha = self._rev(repo, p[5] if len(p) == 6 else "main")
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": p[2],
            "sha": sha,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(repo.commits[sha])],
        }
        return 200, info, {}

    def _tree(self, h, p, q, body):
        repo = self._repo(h, p[2], p[3])
        sha = self._rev(repo, p[5])
        if q.get("expand", "false").lower() not in ("false", "0"):
            raise HubError(501, "fakehub: tree expand=true is not implemented")
        recursive = q.get("recursive", "false").lower() in ("true", "1")
        prefix = "/".join(p[6:])
        files = repo.commits[sha]
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            segs = rest.split("/")
            for i in range(1, len(segs)):
                d = "/".join(([prefix] if prefix else []) + segs[:i])
                if recursive or i == 1:
                    entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            if recursive or len(segs) == 1:
                f = files[path]
                e = {"type": "file", "oid": f.oid, "size": len(f.data), "path": path}
                if f.lfs:
                    e["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
                entries[path] = e
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        return 200, list(entries.values()), {}

    def _preupload(self, h, p, q, body):
        self._require_write(h)
        repo = self._repo(h, p[2], p[3])
        tree = repo.commits[self._rev(repo, p[5])]
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            if len(sample) > 512 or not isinstance(f["size"], int):
                raise HubError(400, f"bad preupload entry for {f.get('path')!r}")
            lfs = _is_lfs(f["path"], f["size"], sample, tree)
            old = tree.get(f["path"])
            oid = None if old is None else (old.sha256 if old.lfs else old.oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": out, "commitOid": repo.refs.get(p[5])}, {}

    def _lfs_batch(self, h, p, q, body):
        if "application/vnd.git-lfs+json" not in h.headers.get("Accept", ""):
            raise HubError(400, "LFS batch requests must accept application/vnd.git-lfs+json")
        self._require_write(h)
        repo = self._repo(h, p[0], p[1][: -len(".git")])
        req = json.loads(body)
        if req.get("operation") != "upload":
            raise HubError(501, f"fakehub: LFS operation {req.get('operation')!r} is not implemented")
        objects = []
        for o in req["objects"]:
            oid, size = o["oid"], o["size"]
            if not _SHA256.fullmatch(oid) or not isinstance(size, int):
                raise HubError(422, f"bad LFS object {o!r}")
            entry = {"oid": oid, "size": size}
            with self.lock:
                if oid not in self.lfs_store:
                    self.pending_uploads[oid] = size
                    verify = f"{self.endpoint}/{repo.repo_id}.git/info/lfs/objects/verify"
                    entry["authenticated"] = True
                    entry["actions"] = {
                        "upload": {"href": f"{self.storage_origin}/_fake_s3/{oid}"},
                        "verify": {"href": verify, "header": {}},
                    }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _s3_put(self, h, p, q, body):
        oid = p[1]
        if h.headers.get("Authorization"):
            raise HubError(400, "storage host: do not send Authorization to a pre-signed URL")
        with self.lock:
            size = self.pending_uploads.get(oid)
            if size is None:
                raise HubError(403, f"storage host: no pending upload for {oid}")
            if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"storage host: BadDigest: body sha256/size does not match {oid}/{size}")
            self.lfs_store[oid] = body
            del self.pending_uploads[oid]
        return 200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}

    def _lfs_verify(self, h, p, q, body):
        self._require_write(h)
        o = json.loads(body)
        if self.lfs_store.get(o["oid"]) is None or len(self.lfs_store[o["oid"]]) != o["size"]:
            raise HubError(404, f"LFS object {o['oid']} was not uploaded")
        return 200, {}, {}

    def _create_branch(self, h, p, q, body):
        self._require_write(h)
        repo = self._repo(h, p[2], p[3])
        branch = p[5]
        if branch.startswith("refs/") or not branch:
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        start = self._rev(repo, (json.loads(body) if body else {}).get("startingPoint") or "main")
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = start
            repo.branches.add(branch)
        return 200, {}, {}

    def _commit(self, h, p, q, body):
        self._require_write(h)
        if h.headers.get("Content-Type") != "application/x-ndjson":
            raise HubError(400, f"commit body must be application/x-ndjson, got {h.headers.get('Content-Type')}")
        repo = self._repo(h, p[2], p[3])
        rev, create_pr = p[5], q.get("create_pr") == "1"
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "first ndjson line must be the commit header")
        header = lines[0]["value"]
        with self.lock:
            if rev not in repo.branches:
                raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
            head = repo.refs[rev]
            parent = header.get("parentCommit")
            if parent is not None:
                matches = [s for s in repo.commits if s.startswith(parent)]
                if not create_pr and not head.startswith(parent):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
                if len(matches) != 1:
                    raise HubError(404, f"parent commit {parent} not found", "RevisionNotFound")
                head = matches[0]
            tree = dict(repo.commits[head])
            for line in lines[1:]:
                self._apply(tree, line)
            title = header.get("summary") or ""
            sha = _commit_sha(head, tree, title + "\n" + header.get("description", ""))
            repo.commits[sha] = tree
            out = {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{sha}", "commitOid": sha, "success": True}
            if create_pr:
                repo.n_prs += 1
                repo.refs[f"refs/pr/{repo.n_prs}"] = sha
                out["pullRequestUrl"] = f"{self.endpoint}/{repo.repo_id}/discussions/{repo.n_prs}"
            else:
                repo.refs[rev] = sha
        return 200, out, {}

    def _apply(self, tree: dict[str, StoredFile], line: dict) -> None:
        key, v = line.get("key"), line.get("value", {})
        if key == "file":
            if v.get("encoding") != "base64":
                raise HubError(400, f"file {v.get('path')!r}: encoding must be base64")
            tree[v["path"]] = StoredFile(base64.b64decode(v["content"]), lfs=False)
        elif key == "lfsFile":
            if v.get("algo") != "sha256":
                raise HubError(400, f"lfsFile {v.get('path')!r}: algo must be sha256")
            data = self.lfs_store.get(v["oid"])
            if data is None:
                raise HubError(422, f"lfsFile {v['path']!r}: LFS object {v['oid']} was never uploaded")
            if "size" in v and v["size"] != len(data):
                raise HubError(422, f"lfsFile {v['path']!r}: size {v['size']} != uploaded {len(data)}")
            tree[v["path"]] = StoredFile(data, lfs=True)
        elif key == "deletedFile":
            if tree.pop(v["path"], None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {v['path']}", "EntryNotFound")
        elif key == "deletedFolder":
            for path in [x for x in tree if x.startswith(v["path"].rstrip("/") + "/")]:
                del tree[path]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")

    def _resolve(self, h, p, q, body):
        repo = self._repo(h, p[0], p[1])
        if repo.gated:
            raise HubError(
                403,
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.endpoint}/{repo.repo_id} to ask for access.",
                "GatedRepo",
            )
        sha = self._rev(repo, p[3])
        path = "/".join(p[4:])
        f = repo.commits[sha].get(path)
        if f is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.oid}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
                "Location": f"{self.storage_origin}/_fake_cdn/{f.sha256}",
            })
            return 302, b"", headers
        return _ranged(h, f.data, headers)

    def _cdn_get(self, h, p, q, body):
        if h.headers.get("Authorization"):
            raise HubError(400, "CDN: a signed URL must not receive an Authorization header")
        data = self.lfs_store.get(p[1])
        if data is None:
            raise HubError(404, "CDN: no such object")
        return _ranged(h, data, {"ETag": f'"{p[1]}"', "Accept-Ranges": "bytes"})


def _ranged(h, data: bytes, headers: dict):
    rng = h.headers.get("Range")
    if rng is None:
        return 200, data, headers
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
    if m is None or int(m.group(1)) >= max(len(data), 1):
        raise HubError(416, f"bad range {rng!r}", headers={"Content-Range": f"bytes */{len(data)}"})
    start = int(m.group(1))
    end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
    headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
    return 206, data[start:end + 1], headers


def _is_lfs(path: str, size: int, sample: bytes, tree: dict[str, StoredFile]) -> bool:
    """The Hub's choice: a .gitattributes ``filter=lfs`` pattern, a large size, or binary bytes."""
    attrs = tree.get(".gitattributes")
    patterns = []
    if attrs is not None:
        for line in attrs.data.decode().splitlines():
            fields = line.split()
            if len(fields) > 1 and "filter=lfs" in fields[1:]:
                patterns.append(fields[0])
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def _commit_sha(parent: str | None, tree: dict[str, StoredFile], message: str) -> str:
    listing = sorted((path, f.oid) for path, f in tree.items())
    return hashlib.sha1(json.dumps([parent, listing, message]).encode()).hexdigest()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline().strip():
                    pass
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _send(h: BaseHTTPRequestHandler, method: str, status: int, payload, headers: dict) -> None:
    if isinstance(payload, (bytes, bytearray)):
        data, ctype = bytes(payload), "application/octet-stream"
    else:
        data, ctype = json.dumps(payload).encode(), "application/json"
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    if method != "HEAD":
        h.wfile.write(data)


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls

        def log_message(self, format, *args):  # keep test output clean
            pass

        def do_GET(self):
            hub.handle(self, "GET")

        def do_HEAD(self):
            hub.handle(self, "HEAD")

        def do_POST(self):
            hub.handle(self, "POST")

        def do_PUT(self):
            hub.handle(self, "PUT")

        def do_DELETE(self):
            hub.handle(self, "DELETE")

        def do_PATCH(self):
            hub.handle(self, "PATCH")

    return Handler
