"""``lotavec export`` (ticket → PEFT SHiRA adapter or sparse weight patch) and ``lotavec import-peft``."""

from __future__ import annotations

import os

import click

from ._common import echo_json, human_bytes, progress_bar, user_errors
from ._resolve import resolve_model_arg, resolve_ticket_arg


@click.command()
@click.argument("ticket")
@click.option("--to", "fmt", type=click.Choice(["peft", "patch"]), required=True,
              help="peft: a PEFT SHiRA adapter folder; patch: a safetensors file of NAME.indices + NAME.values.")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Adapter folder (--to peft) or .safetensors file (--to patch) to write.")
@click.option("--base", default=None,
              help="Base model (HF folder or Hub id) the ticket was made from; default: the base the ticket records.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT, and skip the base fingerprint check.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def export(ticket, fmt, out, base, force, as_json, quiet):
    """Export TICKET for other tools: a PEFT adapter, or a sparse weight patch.

    \b
    --to peft   a SHiRA adapter: PeftModel.from_pretrained(base_model, OUTPUT) gives the
                ticket's weights (and logits) on nn.Linear layers; what SHiRA cannot carry
                (Conv1D, embeddings, norms, biases, tied LM head, layers its single r cannot
                hold) is left out and listed.
    --to patch  for each tensor NAME: NAME.indices (flat, I32; I64 for tensors of 2^31+
                elements) and NAME.values (the new weights, tensor dtype); apply with
                W.view(-1)[indices] = values (bit-exact).
    """
    path = resolve_ticket_arg(ticket)
    base_dir = resolve_model_arg(base)[0] if base else None
    with progress_bar(not quiet and not as_json) as bar:
        if fmt == "peft":
            from lotavec.bridges.peft import export_peft

            r = export_peft(path, out, base=base_dir, check_base=not force, overwrite=force, progress=bar)
        else:
            from lotavec.bridges.patch import export_patch

            r = export_patch(path, out, base=base_dir, check_base=not force, overwrite=force, progress=bar)
    if as_json:
        echo_json(r.to_json())
        return
    if fmt == "patch":
        wide = r.to_json()["i64_tensors"]
        click.echo(f"Wrote sparse weight patch {r.path}: {r.tensors} tensors, {r.nnz:,} entries, "
                   f"{human_bytes(r.bytes)} (indices I32{f'; I64 for {len(wide)} tensors' if wide else ''}).")
        click.echo("Apply: W.view(-1)[f[NAME + '.indices']] = f[NAME + '.values'] for each tensor "
                   "(or lotavec.bridges.patch.apply_patch(model, FILE)).")
        return
    click.echo(f"Wrote PEFT SHiRA adapter {r.path}: r={r.r}, {len(r.carried)} tensors, {r.nnz_carried:,} of "
               f"{r.nnz_total:,} entries (+{r.padded:,} padding entries with delta -0.0).")
    if r.exact:
        click.echo("Exact: base + adapter has the same weights as base + ticket (float32 deltas, one rounding).")
    else:
        missing = r.nnz_total - r.nnz_carried
        click.echo(f"NOT exact: {len(r.skipped)} tensors ({missing:,} entries) are left out"
                   + (f", and {r.inexact:,} entries do not round back exactly" if r.inexact else "") + ":")
        for n, why in list(r.skipped.items())[:12]:
            click.echo(f"  {n}: {why}")
        if len(r.skipped) > 12:
            click.echo(f"  ... and {len(r.skipped) - 12} more (see {os.path.join(r.path, 'README.md')} or --json)")
    click.echo(f"Load: PeftModel.from_pretrained(base_model, {r.path!r})")


@click.command("import-peft")
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--base", required=True, help="Base model (HF folder or Hub id) the adapter was trained on.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Ticket file to write.")
@click.option("--density", type=float, default=None,
              help="Keep this fraction of the LoRA target entries (largest |merged - base| first).")
@click.option("--all-changed", is_flag=True, help="Keep every entry the merge changes (ticket = merged adapter).")
@click.option("--scope", type=click.Choice(["global", "tensor"]), default="global", show_default=True,
              help="With --density: one threshold across all target tensors, or per tensor.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def import_peft(adapter_dir, base, out, density, all_changed, scope, force, as_json, quiet):
    """Turn a LoRA adapter in ADAPTER_DIR into a ticket (so LoRA adapters of any rank merge with lotavec).

    The adapter is merged as PEFT's merge_and_unload does (float32 B@A x scaling added to the
    base, rounded to its dtype); entries are then chosen like `lotavec extract`. Plain LoRA only.
    """
    from lotavec.bridges.peft import import_peft as run
    from lotavec.errors import OutputExistsError

    if os.path.exists(out) and not force:
        raise OutputExistsError(f"{out} already exists; choose another output or pass --force")
    base_dir, base_ref = resolve_model_arg(base)
    with progress_bar(not quiet and not as_json) as bar:
        r = run(adapter_dir, base_dir, out, density=density, all_changed=all_changed, scope=scope,
                base_ref=base_ref, progress=bar)
    size = os.path.getsize(r.path)
    summary = {"ticket": r.path, "adapter": adapter_dir, "lora": r.ticket.provenance.get("import", {}),
               "target_tensors": len(r.candidates), "target_params": r.candidate_params, "selected": r.nnz,
               "density": r.density, "bytes": size, "seconds": r.seconds}
    if as_json:
        echo_json(summary)
        return
    ranks = ",".join(str(x) for x in summary["lora"].get("ranks", []))
    click.echo(f"Imported LoRA (r={ranks}, {len(r.candidates)} target tensors) from {adapter_dir}: kept {r.nnz:,} of "
               f"{r.candidate_params:,} target entries (density {r.density:.4%}). Wrote {r.path}: "
               f"{human_bytes(size)} in {r.seconds:.1f} s.")
