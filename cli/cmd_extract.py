"""``lotavec extract``: a ticket from a base + fine-tuned pair."""

from __future__ import annotations

import click

from ._common import echo_json, human_bytes, progress_bar, user_errors
from ._resolve import resolve_model_arg, resolve_ticket_args


@click.command()
@click.argument("base")
@click.argument("finetuned")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Ticket file to write.")
@click.option("--density", type=float, default=None, help="Fraction of candidate entries to keep (e.g. 0.1).")
@click.option("--sparsity", type=float, default=None, help="Fraction to leave out (= 1 - density).")
@click.option("--all-changed", is_flag=True, help="Keep every entry that differs (lossless conversion).")
@click.option("--scope", type=click.Choice(["global", "tensor"]), default="global", show_default=True,
              help="One threshold across all candidates (LoTA), or per tensor.")
@click.option("--include", multiple=True, metavar="REGEX", help="Also consider tensors matching REGEX (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Never consider tensors matching REGEX (repeatable).")
@click.option("--embeddings", is_flag=True, help="Also consider the token embeddings.")
@click.option("--lm-head", is_flag=True, help="Also consider the LM head (once if tied).")
@click.option("--norms", is_flag=True, help="Also consider normalization weights.")
@click.option("--biases", is_flag=True, help="Also consider biases.")
@click.option("--disjoint-from", multiple=True, metavar="TICKET", help="Exclude the entries of these tickets (LoTTO).")
@click.option("--values", type=click.Choice(["ulpdiff", "raw"]), default="ulpdiff", show_default=True,
              help="Lossless value codec: bit-pattern difference (smaller) or raw fine-tuned values (base-free).")
@click.option("--full-digest", is_flag=True,
              help="Also record a digest of every byte of each base tensor (one more read of the base), so that "
                   "'lotavec verify --base --full' can check it; by default only a sampled fingerprint is recorded.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def extract(base, finetuned, out, density, sparsity, all_changed, scope, include, exclude, embeddings, lm_head,
            norms, biases, disjoint_from, values, full_digest, as_json, quiet):
    """Make a ticket from BASE and FINETUNED (HF model folders or Hub ids)."""
    from lotavec.extraction import extract as run

    base_dir, base_ref = resolve_model_arg(base)
    ft_dir, _ = resolve_model_arg(finetuned)
    others = resolve_ticket_args(disjoint_from)
    with progress_bar(not quiet and not as_json) as bar:
        r = run(base_dir, ft_dir, out, density=density, sparsity=sparsity, all_changed=all_changed, scope=scope,
                include=include, exclude=exclude, embeddings=embeddings, lm_head=lm_head, norms=norms,
                biases=biases, disjoint_from=others, values=values, base_ref=base_ref,
                full_digest=full_digest, progress=bar)
    import os

    size = os.path.getsize(r.path)
    summary = {
        "ticket": r.path, "candidate_tensors": len(r.candidates), "candidate_params": r.candidate_params,
        "selected": r.nnz, "density": r.density, "bytes": size,
        "bits_per_param": 8 * size / r.candidate_params if r.candidate_params else 0.0,
        "seconds": r.seconds, "disjoint_from": r.disjoint_from, "per_tensor": r.per_tensor,
    }
    if as_json:
        echo_json(summary)
        return
    touched = sum(1 for v in r.per_tensor.values() if v)
    dens = sorted(r.per_tensor[c] / max(r.numels[c], 1) for c in r.candidates)
    click.echo(
        f"Selected {r.nnz:,} of {r.candidate_params:,} parameters (density {r.density:.4%}) in {touched} of "
        f"{len(r.candidates)} candidate tensors (per-tensor density {dens[0]:.2%}–{dens[-1]:.2%}, scope {scope}). "
        f"Wrote {r.path}: {human_bytes(size)}, {summary['bits_per_param']:.3f} bits per candidate parameter, "
        f"in {r.seconds:.1f} s."
    )
    if r.disjoint_from:
        click.echo(f"Verified disjoint from {len(r.disjoint_from)} ticket(s): {', '.join(r.disjoint_from)}")
