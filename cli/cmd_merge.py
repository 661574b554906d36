"""``lotavec merge`` and ``lotavec overlap``."""

from __future__ import annotations

import click

from ._common import echo_json, human_bytes, progress_bar, user_errors
from ._resolve import resolve_model_arg, resolve_ticket_arg, resolve_ticket_ref


def _method_help() -> str:
    from lotavec.merge.registry import METHODS

    return "; ".join(f"{m.name}: {m.formula}" for m in METHODS)


@click.command()
@click.argument("base", required=False)
@click.argument("tickets", nargs=-1)
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--method", default=None, help="sum (default), disjoint, mean, ties, dare_linear, dare_ties, magnitude_prune.")
@click.option("--weights", default=None, metavar="W1,W2,...", help="One weight per ticket (default 1 each).")
@click.option("--density", default=None, metavar="P[,P2,...]", help="Trim/DARE density p, one or one per ticket.")
@click.option("--lambda", "lambda_", type=float, default=None, help="Scale λ of the merged delta (default 1).")
@click.option("--scope", type=click.Choice(["tensor", "global"]), default=None,
              help="Trim per tensor (PEFT, mergekit; default) or one top-k per ticket (TIES paper, LoTA).")
@click.option("--semantics", type=click.Choice(["peft", "mergekit"]), default=None,
              help="Whose conventions where PEFT and mergekit differ (default peft; mergekit for --config).")
@click.option("--seed", type=int, default=None, help="DARE seed (drawn and recorded when not given).")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None, help="Output dtype (default: the base's).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML merge config in mergekit's vocabulary (merge_method, base_model, models, parameters).")
@click.option("--force", is_flag=True, help="Overwrite OUT_DIR, and merge despite base-identity mismatches (with a warning).")
@click.option("--verify-base", is_flag=True, help="Compare full base digests, not only sampled fingerprints.")
@click.option("--no-fsync", is_flag=True,
              help="Do not flush OUT_DIR to disk before renaming it into place (faster; a crash of the "
                   "machine, not of lotavec, could then leave incomplete files).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def merge(base, tickets, out, method, weights, density, lambda_, scope, semantics, seed, dtype, max_shard_size,
          config_path, force, verify_base, no_fsync, as_json, quiet):
    """Merge TICKETS into BASE and write a Hugging Face model folder OUT_DIR.

    BASE and TICKETS are local paths or Hub ids (org/name[@revision]). With --config, BASE and
    TICKETS come from the YAML file (command-line flags override its parameters).
    """
    import dataclasses
    import time

    import psutil

    from lotavec.errors import MergeConfigError
    from lotavec.merge import load_merge_config, merge_config_from_args
    from lotavec.merge import merge as run

    if config_path:
        cfg = load_merge_config(config_path)
        if base or tickets:
            raise MergeConfigError("with --config, give the base and tickets in the YAML file, not as arguments")
        over = {k: v for k, v in {"method": method, "lambda_": lambda_, "scope": scope, "semantics": semantics,
                                  "seed": seed}.items() if v is not None}
        params = dataclasses.replace(cfg.params, **over) if over else cfg.params
        if weights or density:
            raise MergeConfigError("with --config, set weights and densities in the YAML file")
        base, tickets, dtype, notes = cfg.base, cfg.tickets, dtype or cfg.dtype, cfg.notes
    else:
        if not base or not tickets:
            raise click.UsageError("give BASE and at least one TICKET (or --config merge.yaml)")
        cfg = merge_config_from_args(base, tickets, method=method or "sum", weights=weights, density=density,
                                     lambda_=1.0 if lambda_ is None else lambda_, scope=scope or "tensor",
                                     semantics=semantics or "peft", seed=seed, dtype=dtype)
        params, notes = cfg.params, ()
        dtype = cfg.dtype
    base_dir, base_ref = resolve_model_arg(base)
    paths, refs = [], []
    for t in tickets:
        path, ref = resolve_ticket_ref(t)
        paths.append(path)
        refs.append({"source": t, **ref})
    for n in notes:
        click.echo(f"note: {n}", err=True)
    t0 = time.perf_counter()
    with progress_bar(not quiet and not as_json) as bar:
        r = run(base_dir, paths, out, params=params, dtype=dtype, max_shard_size=max_shard_size, overwrite=force,
                force=force, verify_base=verify_base, base_ref=base_ref, ticket_refs=refs, notes=notes,
                fsync=not no_fsync, progress=bar)
    peak = psutil.Process().memory_info().rss
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    summary = {"output": r.path, "tensors": r.tensors, "touched": r.touched, "changed_entries": r.changed_entries,
               "seconds": r.seconds, "gb_per_s": r.bytes_written / r.seconds / 1e9 if r.seconds else None,
               "bytes": r.bytes_written, "rss_bytes": peak, "params": r.params, "warnings": r.warnings}
    if as_json:
        echo_json(summary)
        return
    seed_note = f", seed {r.params['seed']}" if r.params.get("seed") is not None else ""
    click.echo(
        f"Merged {len(paths)} ticket(s) into {base} with {r.params['method']}{seed_note}: {r.touched} of {r.tensors} "
        f"tensors touched, {r.changed_entries:,} entries changed. Wrote {r.path} ({human_bytes(r.bytes_written)}) "
        f"in {time.perf_counter() - t0:.1f} s ({summary['gb_per_s']:.2f} GB/s), RSS {human_bytes(peak)}."
    )


@click.command()
@click.argument("tickets", nargs=-1, required=True)
@click.option("--base", default=None, help="Base model: needed for delta signs (sign agreement, TIES preview).")
@click.option("--density", type=float, default=None, help="Preview TIES trimming at this density.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save a PNG of the pairwise overlap matrix and per-layer overlap (needs matplotlib).")
@user_errors
def overlap(tickets, base, density, as_json, plot_path):
    """How TICKETS overlap: pairwise counts and Jaccard, per layer, signs, and what TIES would drop."""
    from lotavec.merge import MergeParams
    from lotavec.merge.compare import ticket_overlap

    paths = [resolve_ticket_arg(t) for t in tickets]
    base_dir = resolve_model_arg(base)[0] if base else None
    ties = MergeParams(method="ties", density=density) if density is not None else None
    rep, signs = ticket_overlap(paths, base=base_dir, ties=ties)
    if plot_path:
        from lotavec.plots import plot_overlap

        plot_overlap(rep, plot_path)
    if as_json:
        doc = rep.to_json()
        doc["signs_known"] = signs
        echo_json(doc)
        return
    click.echo("pair                                      shared     jaccard   sign agreement")
    for p in rep.pairs:
        agree = f"{p.sign_agreement:.1%}" if (signs and p.sign_agreement is not None) else "-"
        click.echo(f"{_short(rep.tickets[p.a])} & {_short(rep.tickets[p.b])}".ljust(40)
                   + f"{p.intersection:>9,}  {p.jaccard:>9.4%}   {agree}")
    click.echo("")
    click.echo("per layer (shared entries, all pairs): " + ", ".join(
        f"{k}: {sum(p.intersection for p in v):,}" for k, v in rep.layers.items()))
    if rep.disjoint:
        click.echo("The tickets are disjoint: `--method disjoint` (or sum) merges them without interference.")
    if rep.ties is not None:
        for i, t in enumerate(rep.tickets):
            click.echo(f"TIES ({rep.ties.params.method}, density {density}): {_short(t)}: "
                       f"{rep.ties.trimmed[i]:,} trimmed, {rep.ties.dropped[i]:,} dropped by sign election")
    elif not signs:
        click.echo("(give --base to see sign agreement and what TIES would drop)")


def _short(path: str, n: int = 18) -> str:
    import os

    s = os.path.basename(path)
    return s if len(s) <= n else s[: n - 1] + "…"
