"""The fake Hub itself is strict: raw HTTP requests that break the protocol are refused."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request

import pytest
from fakehub import WRITE_TOKEN, FakeHub

AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}


@pytest.fixture()
def hub():
    h = FakeHub().start()
    yield h
    h.stop()


def _req(url: str, method: str = "GET", body: bytes | dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    req = urllib.request.Request(url, data=data, method=method, headers={**h, **(headers or {})})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _commit(hub: FakeHub, repo: str, lines: list[dict], rev: str = "main"):
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    return _req(f"{hub.endpoint}/api/models/{repo}/commit/{rev}", "POST", body,
                {**AUTH, "Content-Type": "application/x-ndjson"})


def _lfs_upload(hub: FakeHub, repo: str, data: bytes, body: bytes | None = None) -> int:
    oid = hashlib.sha256(data).hexdigest()
    st, _, out = _req(f"{hub.endpoint}/{repo}.git/info/lfs/objects/batch", "POST",
                      {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
                      {**AUTH, "Accept": "application/vnd.git-lfs+json"})
    assert st == 200
    href = json.loads(out)["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub.storage_origin)  # another origin, like S3
    return _req(href, "PUT", body if body is not None else data)[0]


def test_unknown_route_is_loud(hub):
    st, headers, _ = _req(f"{hub.endpoint}/api/models/a/b/discussions")
    assert st == 501 and "unknown route" in headers["X-Error-Message"]
    st, _, _ = _req(f"{hub.endpoint}/api/models/a/b/revision/main?expand=downloads")
    assert st == 501
    assert len(hub.unknown) == 2


def test_writes_need_a_valid_token(hub):
    body = {"name": "x", "organization": "o"}
    assert _req(f"{hub.endpoint}/api/repos/create", "POST", body)[0] == 401
    st, headers, _ = _req(f"{hub.endpoint}/api/repos/create", "POST", body, {"Authorization": "Bearer nope"})
    assert st == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert _req(f"{hub.endpoint}/api/repos/create", "POST", body, AUTH)[0] == 200
    st, _, out = _req(f"{hub.endpoint}/api/repos/create", "POST", body, AUTH)
    assert st == 409 and json.loads(out)["url"] == f"{hub.endpoint}/o/x"


def test_lfs_put_checks_sha256_and_forbids_auth(hub):
    hub.create_repo("o/x")
    assert _lfs_upload(hub, "o/x", b"payload", body=b"tampered") == 400
    data = b"another payload"
    oid = hashlib.sha256(data).hexdigest()
    _req(f"{hub.endpoint}/o/x.git/info/lfs/objects/batch", "POST",
         {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}, {**AUTH, "Accept": "application/vnd.git-lfs+json"})
    assert _req(f"{hub.storage_origin}/_fake_s3/{oid}", "PUT", data, AUTH)[0] == 400  # token must not leak to storage
    assert _req(f"{hub.storage_origin}/_fake_s3/{oid}", "PUT", data)[0] == 200
    assert hub.lfs_store[oid] == data


def test_commit_requires_uploaded_lfs_and_matching_parent(hub):
    hub.create_repo("o/x")
    head = hub.head("o/x")
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    st, _, _ = _commit(hub, "o/x", [{"key": "header", "value": {"summary": "s"}},
                                    {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": missing, "size": 14}}])
    assert st == 422 and hub.head("o/x") == head
    st, _, _ = _commit(hub, "o/x", [{"key": "header", "value": {"summary": "s", "parentCommit": "f" * 40}},
                                    {"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}}])
    assert st == 412 and hub.head("o/x") == head
    st, _, out = _commit(hub, "o/x", [{"key": "header", "value": {"summary": "s", "parentCommit": head}},
                                      {"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}}])
    assert st == 200 and json.loads(out)["commitOid"] == hub.head("o/x") != head
    assert hub.file_at("o/x", "a.txt") == b"hi"


def test_commit_shas_are_content_addressed(hub):
    shas = []
    for name in ("o/a", "o/b"):
        hub.create_repo(name)
        line = {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"same").decode(), "encoding": "base64"}}
        st, _, out = _commit(hub, name, [{"key": "header", "value": {"summary": "same"}}, line])
        assert st == 200
        shas.append(json.loads(out)["commitOid"])
    assert shas[0] == shas[1] and len(shas[0]) == 40


def test_resolve_errors_carry_codes(hub):
    sha = hub.add_files("o/x", {"a.txt": b"hello"})
    hub.create_repo("o/gated", gated=True)
    st, h, _ = _req(f"{hub.endpoint}/o/x/resolve/main/missing.txt", "HEAD")
    assert st == 404 and h["X-Error-Code"] == "EntryNotFound" and h["X-Repo-Commit"] == sha
    assert _req(f"{hub.endpoint}/o/x/resolve/nope/a.txt", "HEAD")[1]["X-Error-Code"] == "RevisionNotFound"
    assert _req(f"{hub.endpoint}/o/none/resolve/main/a.txt", "HEAD")[1]["X-Error-Code"] == "RepoNotFound"
    st, h, _ = _req(f"{hub.endpoint}/o/gated/resolve/main/.gitattributes")
    assert st == 403 and h["X-Error-Code"] == "GatedRepo"
    st, h, body = _req(f"{hub.endpoint}/o/x/resolve/{sha}/a.txt", headers={"Range": "bytes=1-3"})
    assert st == 206 and body == b"ell" and h["Content-Range"] == "bytes 1-3/5" and h["X-Repo-Commit"] == sha
