"""push → pull through the real huggingface_hub client and the fake Hub, with the CLI in a subprocess."""

from __future__ import annotations

import re

import pytest
from fakehub import WRITE_TOKEN
from hubutil import hub_env, make_ticket, run_api, run_cli

REPO = "alice/math-ticket"


@pytest.fixture(scope="module")
def env(fakehub, tmp_path_factory):
    return hub_env(fakehub, tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    d = tmp_path_factory.mktemp("tickets")
    return [make_ticket(d / f"t{i}.lotavec.safetensors", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def pushed(fakehub, env, tickets):
    """First push of ticket 0; returns the CLI result and the commit sha."""
    p = run_cli(["push", str(tickets[0]), REPO, "--message", "first ticket"], env)
    assert p.returncode == 0, p.stderr
    return p, fakehub.head(REPO)


def test_push_creates_repo_and_one_commit(fakehub, pushed, tickets):
    p, sha = pushed
    assert p.stdout.splitlines() == [f"pushed {fakehub.endpoint}/{REPO}/commit/{sha}", f"commit {sha}"]
    repo = fakehub.repos[REPO]
    assert len(repo.commits) == 2  # the repo's initial commit + exactly one push commit
    stored = repo.commits[sha]
    assert set(stored) == {".gitattributes", "README.md", "ticket.lotavec.safetensors"}
    assert stored["ticket.lotavec.safetensors"].data == tickets[0].read_bytes()
    assert stored["ticket.lotavec.safetensors"].lfs  # went through LFS batch + PUT, sha256-checked
    puts = [r for r in fakehub.requests if r[0] == "PUT"]
    assert len(puts) == 1 and puts[0][2] is False  # the storage PUT never carries the token


def test_card_parses_with_modelcard(fakehub, pushed):
    from huggingface_hub import ModelCard

    card = ModelCard(fakehub.file_at(REPO, "README.md").decode())
    assert card.data.library_name == "lotavec"
    assert card.data.base_model == "base-org/tiny-base"
    assert card.data.base_model_relation == "adapter"
    assert card.data.license == "apache-2.0"
    assert {"lotavec", "lota", "sparse-task-vector"} <= set(card.data.tags)
    assert "| tensors | 3 |" in card.text
    assert "| changed entries (nnz) | 120 |" in card.text
    assert f"lotavec merge base-org/tiny-base {REPO} -o merged-model" in card.text


def test_pull_pins_commit_sha(fakehub, env, pushed, tickets, tmp_path):
    _, sha = pushed
    out = tmp_path / "pulled.lotavec.safetensors"
    p = run_cli(["pull", REPO, "-o", str(out)], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"ticket {out}", f"pinned {REPO}@{sha}"]
    assert out.read_bytes() == tickets[0].read_bytes()
    again = run_cli(["pull", REPO, "-o", str(out)], env)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_repush_is_noop(fakehub, env, pushed, tickets):
    _, sha = pushed
    n_commits = len(fakehub.repos[REPO].commits)
    p = run_cli(["push", str(tickets[0]), REPO, "--message", "first ticket"], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"nothing to push: already up to date ({REPO} at {sha})"
    assert fakehub.head(REPO) == sha and len(fakehub.repos[REPO].commits) == n_commits


def test_new_version_and_old_sha_still_pullable(fakehub, env, pushed, tickets, tmp_path):
    _, old = pushed
    p = run_cli(["push", str(tickets[1]), REPO, "--json"], env)
    assert p.returncode == 0, p.stderr
    new = fakehub.head(REPO)
    assert new != old and f'"commit_sha": "{new}"' in p.stdout and '"noop": false' in p.stdout
    got = run_api("pull_ticket", env, f"{REPO}@{old}", str(tmp_path / "old.safetensors"))["ok"]
    assert got["revision_sha"] == old and got["repo_id"] == REPO
    assert (tmp_path / "old.safetensors").read_bytes() == tickets[0].read_bytes()
    latest = run_api("resolve_ticket", env, REPO)["ok"]
    assert latest["revision_sha"] == new
    assert re.search(rf"/snapshots/{new}/ticket\.lotavec\.safetensors$", latest["path"])


def test_create_pr_leaves_main_alone(fakehub, env, pushed, tickets):
    main_before = fakehub.head(REPO)
    p = run_cli(["push", str(tickets[2]), REPO, "--create-pr", "-m", "proposal"], env)
    assert p.returncode == 0, p.stderr
    pr_sha = fakehub.head(REPO, "refs/pr/1")
    assert p.stdout.splitlines() == [f"opened pull request {fakehub.endpoint}/{REPO}/discussions/1", f"commit {pr_sha}"]
    assert fakehub.head(REPO) == main_before
    assert fakehub.file_at(REPO, "ticket.lotavec.safetensors", "refs/pr/1") == tickets[2].read_bytes()
    got = run_api("resolve_ticket", env, f"{REPO}@refs/pr/1")["ok"]
    assert got["revision_sha"] == pr_sha


def test_push_to_new_branch(fakehub, env, pushed, tickets):
    p = run_cli(["push", str(tickets[2]), REPO, "--revision", "v2"], env)
    assert p.returncode == 0, p.stderr
    assert fakehub.file_at(REPO, "ticket.lotavec.safetensors", "v2") == tickets[2].read_bytes()
    assert fakehub.file_at(REPO, "ticket.lotavec.safetensors", "main") != tickets[2].read_bytes()
    assert run_api("resolve_ticket", env, f"{REPO}@v2")["ok"]["revision_sha"] == fakehub.head(REPO, "v2")


def test_load_ticket_from_hub_id(fakehub, env, pushed, tickets):
    got = run_api("load_ticket", env, f"{REPO}@{pushed[1]}")["ok"]
    assert got["nnz"] == 120 and len(got["names"]) == 3
    assert f"/snapshots/{pushed[1]}/" in got["path"]


def test_single_nonstandard_ticket_name_is_found(fakehub, env, tickets):
    sha = fakehub.add_files("bob/renamed", {"math-v1.lotavec.safetensors": tickets[1].read_bytes(), "README.md": b"hi\n"})
    got = run_api("resolve_ticket", env, "bob/renamed")["ok"]
    assert got["revision_sha"] == sha and got["path"].endswith("/math-v1.lotavec.safetensors")


def test_private_push_and_token_never_printed(fakehub, env, tickets):
    p = run_cli(["push", str(tickets[0]), "alice/secret", "--private"], env)
    assert p.returncode == 0, p.stderr
    assert fakehub.repos["alice/secret"].private
    assert WRITE_TOKEN not in p.stdout + p.stderr
