"""``lotavec train``: calibrate → mask → sparse training → ticket."""

from __future__ import annotations

import click

from ._common import echo_json, human_bytes, progress_bar, user_errors
from ._resolve import resolve_model_arg, resolve_ticket_args


@click.command()
@click.argument("base")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help='Training JSONL: {"prompt","completion"}, {"messages":[...]} or {"text"} per line.')
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Evaluation JSONL.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Ticket file to write.")
@click.option("--density", type=float, default=0.1, show_default=True, help="Fraction of candidate parameters to train.")
@click.option("--calibration-steps", type=int, default=50, show_default=True, help="Dense fine-tuning steps that find the mask.")
@click.option("--steps", type=int, default=100, show_default=True, help="Sparse training steps.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Learning rate of sparse training.")
@click.option("--calibration-lr", type=float, default=None, help="Learning rate of calibration (default: --lr).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per example (longer ones are cut).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd", "adafactor"]), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--disjoint-from", multiple=True, metavar="TICKET", help="Earlier tickets (LoTTO): excluded and applied first.")
@click.option("--independent", is_flag=True, help="With --disjoint-from: train from the plain base instead of on top of the earlier tickets.")
@click.option("--mask-from", default=None, metavar="TICKET|MODEL", help="Take the mask from a ticket or fine-tuned model (skips calibration).")
@click.option("--scope", type=click.Choice(["global", "tensor"]), default="global", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--bf16", is_flag=True, help="bf16 autocast.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(base, data, eval_path, out, density, calibration_steps, steps, lr, calibration_lr, batch_size, grad_accum,
          max_length, optimizer, weight_decay, disjoint_from, independent, mask_from, scope, device, bf16, seed,
          as_json, quiet):
    """Train a lottery ticket for BASE (HF folder or Hub id) on --data and write it to -o."""
    from lotavec.train.pipeline import TrainConfig
    from lotavec.train.pipeline import train as run

    cfg = TrainConfig(density=density, calibration_steps=0 if mask_from else calibration_steps, steps=steps, lr=lr,
                      calibration_lr=calibration_lr, batch_size=batch_size, grad_accum=grad_accum,
                      max_length=max_length, optimizer=optimizer, weight_decay=weight_decay, bf16=bf16,
                      device=device, seed=seed, scope=scope, sequential=not independent)
    base_dir, base_ref = resolve_model_arg(base)
    earlier = resolve_ticket_args(disjoint_from)
    with progress_bar(not quiet and not as_json) as bar:
        r = run(base_dir, data, out, config=cfg, eval_data=eval_path, disjoint_from=earlier, mask_from=mask_from,
                base_ref=base_ref, progress=bar)
    import os

    size = os.path.getsize(r.path)
    st = r.training.stats()
    summary = {"ticket": r.path, "nnz": r.ticket.nnz, "bytes": size, "seconds": r.seconds,
               "first_loss": st["first_loss"], "last_loss": st["last_loss"], "eval_losses": st["eval_losses"],
               "median_step_s": st["median_step_s"], "peak_memory_bytes": st["peak_memory_bytes"],
               "optimizer_state_bytes": st["optimizer_state_bytes"], "method": r.summary["method"]}
    if as_json:
        echo_json(summary)
        return
    ev = f", eval loss {st['eval_losses'][-1][1]:.4f}" if st["eval_losses"] else ""
    click.echo(
        f"{r.summary['method']}: trained {r.ticket.nnz:,} entries (density {density:g}) for {steps} steps; loss "
        f"{st['first_loss']:.4f} → {st['last_loss']:.4f}{ev}. Optimizer state {human_bytes(st['optimizer_state_bytes'])}, "
        f"median step {st['median_step_s']:.3f} s. Wrote {r.path} ({human_bytes(size)}) in {r.seconds:.1f} s."
    )
    if earlier:
        click.echo(f"Verified disjoint from {len(earlier)} earlier ticket(s).")
