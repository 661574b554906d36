"""Generate docs/cli.md from the click definitions: ``python tools/gen_cli_docs.py [--check]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "cli.md"


def render() -> str:
    from lotavec_cli.main import cli

    ctx = click.Context(cli, info_name="lotavec", terminal_width=100, max_content_width=100)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the click definitions by `python tools/gen_cli_docs.py`; do not edit by hand.",
        "",
        "```text",
        cli.get_help(ctx).rstrip(),
        "```",
        "",
        "Shell completion (click): add `eval \"$(_LOTAVEC_COMPLETE=bash_source lotavec)\"` to `~/.bashrc`",
        "(`zsh_source` for `~/.zshrc`; for fish: `_LOTAVEC_COMPLETE=fish_source lotavec > "
        "~/.config/fish/completions/lotavec.fish`).",
        "",
    ]
    for name in sorted(cli.list_commands(ctx)):
        cmd = cli.get_command(ctx, name)
        sub = click.Context(cmd, info_name=f"lotavec {name}", parent=ctx, terminal_width=100, max_content_width=100)
        lines += [f"## lotavec {name}", "", "```text", cmd.get_help(sub).rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run python tools/gen_cli_docs.py")
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
