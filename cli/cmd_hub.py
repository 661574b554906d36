"""``lotavec push`` and ``lotavec pull``: share tickets through the Hugging Face Hub."""

from __future__ import annotations

import click

from ._common import echo_json, progress_bar, user_errors


def _quiet_hub_logs() -> None:
    # huggingface_hub logs its own warnings (e.g. "No files have been modified since last
    # commit"); the commands below say the same thing in their own words.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@click.command()
@click.argument("ticket", type=click.Path(dir_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (ignored if it exists).")
@click.option("--revision", metavar="BRANCH", default=None,
              help="Commit to this branch (created from main if missing); with --create-pr, the PR's target.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--message", "-m", metavar="MSG", default=None, help="Commit message.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def push(ticket: str, repo_id: str, private: bool, revision: str | None, create_pr: bool,
         message: str | None, as_json: bool) -> None:
    """Upload TICKET to the Hub repo REPO_ID (org/name) with a generated model card, in one commit.

    The repo is created if missing. Pushing an unchanged ticket again makes no commit.
    Needs a token with write access: `hf auth login` or HF_TOKEN.
    """
    from lotavec.hub import push_ticket

    _quiet_hub_logs()
    res = push_ticket(ticket, repo_id, private=private, revision=revision, create_pr=create_pr, message=message)
    if as_json:
        echo_json({"repo_id": repo_id, "commit_url": res.commit_url, "commit_sha": res.commit_sha,
                   "pr_url": res.pr_url, "noop": res.noop})
    elif res.noop:
        click.echo(f"nothing to push: already up to date ({repo_id} at {res.commit_sha})")
    elif res.pr_url:
        click.echo(f"opened pull request {res.pr_url}")
        click.echo(f"commit {res.commit_sha}")
    else:
        click.echo(f"pushed {res.commit_url}")
        click.echo(f"commit {res.commit_sha}")


@click.command()
@click.argument("spec", metavar="REPO_ID[@REVISION]")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Copy the ticket to this file or folder (default: leave it in the Hugging Face cache).")
@click.option("--filename", default=None, help="The ticket's file name in the repo (default: ticket.lotavec.safetensors).")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def pull(spec: str, output: str | None, filename: str | None, force: bool, as_json: bool) -> None:
    """Download a ticket from the Hub, pinned to a commit sha, and print where it is."""
    from lotavec.hub import pull_ticket

    _quiet_hub_logs()
    with progress_bar(enabled=not as_json) as progress:
        res = pull_ticket(spec, output, filename=filename, overwrite=force, progress=progress)
    if as_json:
        echo_json({"path": str(res.path), "repo_id": res.repo_id, "revision_sha": res.revision_sha})
        return
    click.echo(f"ticket {res.path}")
    click.echo(f"pinned {res.repo_id}@{res.revision_sha}")
