"""``lotavec inspect`` and ``lotavec verify``."""

from __future__ import annotations

import click

from ._common import echo_json, human_bytes, user_errors
from ._resolve import resolve_model_arg, resolve_ticket_arg


@click.command()
@click.argument("ticket")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save a PNG heatmap of density per layer x module type (needs matplotlib).")
@user_errors
def inspect(ticket: str, as_json: bool, plot_path: str | None) -> None:
    """Show what a TICKET holds: per-tensor shape, dtype, nnz, density, codecs and size."""
    from lotavec.report import ticket_report
    from lotavec.ticket import load_ticket

    with load_ticket(resolve_ticket_arg(ticket)) as t:
        rep = ticket_report(t)
        if plot_path:
            from lotavec.plots import plot_density

            plot_density(t, plot_path)
    if plot_path and not as_json:
        click.echo(f"wrote {plot_path}")
    if as_json:
        echo_json(rep)
        return
    rows = rep["tensors"]
    w = max([len(r["name"]) for r in rows] + [6])
    click.echo(f"{'tensor':<{w}}  {'shape':<14} {'dtype':<5} {'nnz':>10} {'density':>8} {'mask':<12} {'values':<8} {'bytes':>10} {'bits/param':>10}")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "()"
        click.echo(
            f"{r['name']:<{w}}  {shape:<14} {r['dtype']:<5} {r['nnz']:>10} {r['density']:>8.4f} "
            f"{','.join(r['mask_codecs']) or '-':<12} {r['values']:<8} {r['bytes']:>10} {r['bits_per_param']:>10.4f}"
        )
    base = rep["base"]
    click.echo("")
    click.echo(f"format {rep['format_version']}.{rep['format_minor']}   base {base.get('repo_id') or '(unknown)'}"
               f"{'@' + base['revision'] if base.get('revision') else ''}")
    click.echo(f"{len(rows)} tensors, {rep['total_nnz']:,} of {rep['total_numel']:,} entries "
               f"(density {rep['density']:.4%}), {human_bytes(rep['total_bytes'])} = {rep['bits_per_param']:.4f} bits/param")
    if rep["mask_vs_floor"] is not None:
        click.echo(f"mask {rep['mask_bits'] / 8:,.0f} bytes = {rep['mask_vs_floor']:.3f} x its entropy floor; "
                   f"values {rep['value_bits_per_nnz']:.2f} bits each")


@click.command()
@click.argument("ticket")
@click.option("--base", "base", default=None, help="Base model (HF folder or Hub id) to check the ticket against.")
@click.option("--quick", is_flag=True, help="With --base: check shapes, dtypes and sampled fingerprints only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def verify(ticket: str, base: str | None, quick: bool, as_json: bool) -> None:
    """Check a TICKET's structure and checksums, and optionally that it fits a --base model.

    Exit status 0 when sound; 1 with a message naming what is wrong.
    """
    from lotavec.ticket import load_ticket
    from lotavec.verify import verify_against_base

    with load_ticket(resolve_ticket_arg(ticket)) as t:
        t.verify()
        result = {"ticket": ticket, "ok": True, "tensors": len(t), "nnz": t.nnz, "base": None}
        if not as_json:
            click.echo(f"{ticket}: structure and checksums OK ({len(t)} tensors, nnz {t.nnz:,})")
        if base is not None:
            n = verify_against_base(t, resolve_model_arg(base)[0], full=not quick)
            with_digest = sum(1 for name in t.names if (t._file.entry(name) if t._file is not None else t[name]).base_digest)
            if quick or with_digest == 0:
                kind = "sampled fingerprints" + ("" if quick else " (the ticket records no full digests: "
                                                 "extract with --full-digest for a full check)")
            elif with_digest < len(t):
                kind = f"full digests of {with_digest} tensors, sampled fingerprints of the others"
            else:
                kind = "full digests"
            result["base"] = {"model": base, "tensors": n, "check": kind}
            if not as_json:
                click.echo(f"{ticket}: matches base {base} ({n} tensors: shapes, dtypes, {kind})")
    if as_json:
        echo_json(result)
