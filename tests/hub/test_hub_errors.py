"""The errors users meet get one-line messages that say what to do, and exit status 1."""

from __future__ import annotations

import pytest
from fakehub import READ_TOKEN, WRITE_TOKEN
from hubutil import hub_env, last_line, make_ticket, run_api_batch, run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def env(fakehub, home):
    return hub_env(fakehub, home)


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
    return make_ticket(tmp_path_factory.mktemp("t") / "t.lotavec.safetensors", seed=7)


@pytest.fixture(scope="module")
def published(fakehub, ticket):
    sha = fakehub.add_files("carol/ticket", {"ticket.lotavec.safetensors": ticket.read_bytes(), "README.md": b"card\n"})
    fakehub.create_repo("carol/gated", gated=True)
    fakehub.add_files("carol/gated", {"ticket.lotavec.safetensors": ticket.read_bytes()})
    fakehub.add_files("carol/empty", {"README.md": b"nothing here\n"})
    fakehub.add_files("carol/two", {"a.lotavec.safetensors": ticket.read_bytes(), "b.lotavec.safetensors": ticket.read_bytes()})
    return sha


def _fails(p, *needles: str) -> str:
    """Exit status 1, a one-line ``Error: ...`` message containing every needle, no traceback."""
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    msg = last_line(p.stderr)
    assert msg.startswith("Error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for n in needles:
        assert n in msg, msg
    assert WRITE_TOKEN not in p.stderr + p.stdout
    return msg


@pytest.fixture(scope="module")
def pulls(env, published, ticket):
    """Library-level failures, run in one subprocess: ``{case: {"error", "message"}}``."""
    cases = {
        "gated": ("pull_ticket", ("carol/gated",), {}),
        "bad_revision": ("pull_ticket", ("carol/ticket@no-such-branch",), {}),
        "bad_sha": ("pull_ticket", ("carol/ticket@" + "0" * 40,), {}),
        "missing_file": ("pull_ticket", ("carol/ticket",), {"filename": "other.lotavec.safetensors"}),
        "no_ticket": ("pull_ticket", ("carol/empty",), {}),
        "two_tickets": ("pull_ticket", ("carol/two",), {}),
        "not_an_id": ("pull_ticket", ("just-a-name",), {}),
        "missing_local": ("resolve_ticket", ("missing/dir/file.lotavec.safetensors",), {}),
        "missing_model": ("resolve_model", ("nobody/missing-model",), {}),
        "push_bad_id": ("push_ticket", (str(ticket), "not-an-id"), {"card_text": "hi"}),
    }
    return dict(zip(cases, run_api_batch(list(cases.values()), env)))


def _err(result: dict, kind: str, *needles: str) -> None:
    assert result.get("error") == kind, result
    assert "\n" not in result["message"]
    for n in needles:
        assert n in result["message"], result["message"]


def test_repo_not_found_cli(env, published):
    _fails(run_cli(["pull", "nobody/missing"], env), "Hub repository 'nobody/missing' not found", "hf auth login")


def test_gated_repo(pulls):
    _err(pulls["gated"], "HubError", "carol/gated is a gated repository", "request access", "HF_TOKEN")


def test_bad_revision(pulls):
    _err(pulls["bad_revision"], "NotFoundError", "revision 'no-such-branch' not found in Hub repository 'carol/ticket'")
    _err(pulls["bad_sha"], "NotFoundError", "not found in Hub repository 'carol/ticket'")


def test_missing_file(pulls):
    _err(pulls["missing_file"], "NotFoundError", "has no file 'other.lotavec.safetensors'")


def test_repo_without_ticket(pulls):
    _err(pulls["no_ticket"], "NotFoundError", "has no ticket (*.lotavec.safetensors)", "README.md")


def test_repo_with_two_tickets_needs_filename(env, pulls, tmp_path):
    _err(pulls["two_tickets"], "NotFoundError", "several tickets", "a.lotavec.safetensors, b.lotavec.safetensors", "--filename")
    p = run_cli(["pull", "carol/two", "--filename", "b.lotavec.safetensors", "-o", str(tmp_path)], env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.lotavec.safetensors").exists()


def test_not_a_hub_id(pulls):
    _err(pulls["not_an_id"], "NotFoundError", "'just-a-name' is not a Hub id")
    _err(pulls["missing_local"], "NotFoundError", "no such ticket file, and not a Hub id")
    _err(pulls["missing_model"], "NotFoundError", "Hub repository 'nobody/missing-model' not found")
    _err(pulls["push_bad_id"], "HubError", "'not-an-id' is not a Hub repo id")


def test_push_without_token_sends_nothing(fakehub, home, ticket):
    before = len(fakehub.requests)
    p = run_cli(["push", str(ticket), "carol/new"], hub_env(fakehub, home, token=None))
    _fails(p, "needs a token", "hf auth login", "HF_TOKEN")
    assert len(fakehub.requests) == before and "carol/new" not in fakehub.repos


def test_push_while_offline(fakehub, home, ticket):
    p = run_cli(["push", str(ticket), "carol/new"], hub_env(fakehub, home, offline=True))
    _fails(p, "cannot push to carol/new while HF_HUB_OFFLINE=1 is set")


def test_push_with_rejected_token(fakehub, home, ticket):
    p = run_cli(["push", str(ticket), "carol/new"], hub_env(fakehub, home, token="hf_not_a_real_token"))
    msg = _fails(p, "rejected your token (HTTP 401)", "hf auth login")
    assert "hf_not_a_real_token" not in msg and "carol/new" not in fakehub.repos


def test_push_with_read_only_token(fakehub, home, ticket, published):
    p = run_cli(["push", str(ticket), "carol/ticket"], hub_env(fakehub, home, token=READ_TOKEN))
    _fails(p, "may not write to carol/ticket (HTTP 403)")
    assert fakehub.head("carol/ticket") == published


def test_push_missing_file(env, tmp_path):
    _fails(run_cli(["push", str(tmp_path / "nope.lotavec.safetensors"), "carol/x"], env), "no such ticket file")


def test_push_not_a_ticket(env, tmp_path):
    from lotavec.format.safetensors_io import write_safetensors

    path = tmp_path / "plain.safetensors"
    with open(path, "wb") as fh:
        write_safetensors(fh, [("w", "F32", (2,), b"\0" * 8)])
    _fails(run_cli(["push", str(path), "carol/plain"], env), "not a lotavec ticket")


def test_pull_with_server_down_and_nothing_cached(tmp_path):
    p = run_cli(["pull", "carol/ticket"], hub_env(None, tmp_path))
    _fails(p, "carol/ticket is not in the local Hugging Face cache", "cannot be reached")
