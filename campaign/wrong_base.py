"""Wrong base: a matrix of tickets × bases; every mismatch refused before any output is written.

Tickets (made against base A, a tiny bf16 llama): ``ulpdiff`` (lotavec extract), ``raw``
(extract --values raw) and ``f32delta`` (the same deltas, written with TicketWriter).
Bases: A itself (control), B (same architecture, other weights), A with one entry changed by one
ulp outside the sampled fingerprint positions (found only by the full digest), C (other MLP
shapes), A and B upcast to F32, A cast to F16, and a GPT-2 (other tensor names).

Paths checked per cell: ``lotavec merge`` (CLI; must exit 1 and leave no output folder and no
temporary folder), ``lotavec merge --verify-base``, ``lotavec verify --base`` (full digests) and
``--quick`` (sampled), and ``lotavec.apply`` on the model loaded in the base's own dtype (must
raise a ``BaseMismatchError`` and leave every weight untouched).

Usage:
    .venv/bin/python campaign/wrong_base.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, finish, leftovers, tiny_pair  # noqa: E402

PATHS = ("merge", "merge --verify-base", "verify --base", "verify --base --quick", "apply")


def make_tickets(work: Path, base: Path, ft: Path) -> dict[str, Path]:
    """The three tickets, all made against ``base``."""
    from lotavec.extraction import extract
    from lotavec.models import open_model
    from lotavec.ticket import TicketTensor, TicketWriter, load_ticket

    out = {"ulpdiff": work / "t_ulpdiff.safetensors", "raw": work / "t_raw.safetensors",
           "f32delta": work / "t_f32delta.safetensors"}
    if not out["ulpdiff"].exists():
        extract(base, ft, out["ulpdiff"], density=0.1, full_digest=True)  # full checks need digests
        extract(base, ft, out["raw"], density=0.1, values="raw", full_digest=True)
        with load_ticket(out["ulpdiff"]) as t, open_model(base) as src, TicketWriter(out["f32delta"]) as w:
            for tt in t:
                b = src.array(tt.name)
                w.add(TicketTensor.from_delta(tt.name, b, tt.indices, tt.delta(b.reshape(-1)[tt.indices]), tt.dtype))
    return out


def make_bases(work: Path, base: Path, ticket: Path) -> dict[str, tuple[Path, bool]]:
    """``{label: (folder, expected to be accepted)}``."""
    import torch

    from lotavec.format.fingerprint import base_sample
    from lotavec.format.safetensors_io import SafetensorsFile, write_safetensors
    from lotavec.testing import make_tiny_model
    from lotavec.ticket import load_ticket

    bases: dict[str, tuple[Path, bool]] = {"A (the ticket's base)": (base, True)}
    b = work / "base_B"
    if not b.exists():
        make_tiny_model("llama", b, seed=1)
        make_tiny_model("llama", work / "base_C", seed=0, intermediate_size=96)
        make_tiny_model("gpt2", work / "base_gpt2", seed=0)
        for src, dt, name in ((base, torch.float32, "base_A_f32"), (b, torch.float32, "base_B_f32"),
                              (base, torch.float16, "base_A_f16")):
            from transformers import AutoModelForCausalLM

            m = AutoModelForCausalLM.from_pretrained(src, dtype=dt)
            m.save_pretrained(work / name)
            shutil.copy(base / "tokenizer.json", work / name / "tokenizer.json")
        # A with one entry one ulp off, at a position the sampled fingerprint does not read.
        with load_ticket(ticket) as t:
            name = max(t.names, key=lambda n: t.info(n)["numel"])
        one = work / "base_A_one_ulp"
        shutil.copytree(base, one)
        with SafetensorsFile(base / "model.safetensors") as f:
            arrays = {n: np.array(f.array(n)) for n in f.keys()}
            infos = {n: f.info(n) for n in f.keys()}
        flat = arrays[name].reshape(-1)
        n = flat.size
        sampled = {i * n // min(n, 4096) for i in range(min(n, 4096))}
        pos = next(i for i in range(n) if i not in sampled)
        before = base_sample(arrays[name])
        flat[pos] += 1  # BF16 bit pattern + 1: one ulp
        assert base_sample(arrays[name]) == before
        with open(one / "model.safetensors", "wb") as fh:
            write_safetensors(fh, [(n_, infos[n_].dtype, infos[n_].shape, arrays[n_]) for n_ in arrays], {"format": "pt"})
    bases.update({
        "B (same architecture, other weights)": (b, False),
        "A with one entry 1 ulp off (not sampled)": (work / "base_A_one_ulp", False),
        "C (other MLP shapes)": (work / "base_C", False),
        "A upcast to F32": (work / "base_A_f32", False),
        "B upcast to F32": (work / "base_B_f32", False),
        "A cast to F16": (work / "base_A_f16", False),
        "GPT-2 (other tensor names)": (work / "base_gpt2", False),
    })
    return bases


def cell(ticket: Path, base: Path, work: Path) -> dict[str, str]:
    """Outcome of each path: ``"accepted"``, ``"refused: <Error>"`` or a problem description."""
    import torch
    from click.testing import CliRunner
    from lotavec_cli.main import cli
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import lotavec
    from lotavec.errors import BaseMismatchError, LotavecError
    from lotavec.verify import verify_against_base

    hf_logging.disable_progress_bar()
    res = {}
    runner = CliRunner()
    for path, extra in (("merge", []), ("merge --verify-base", ["--verify-base"])):
        out = work / "wb_out" / "merged"
        if out.parent.exists():
            shutil.rmtree(out.parent)
        out.parent.mkdir()
        r = runner.invoke(cli, ["merge", str(base), str(ticket), "-o", str(out), "-q", *extra])
        err = None
        try:
            lotavec.merge(base, [ticket], work / "wb_out" / "lib", verify_base=bool(extra))
        except LotavecError as e:
            err = type(e).__name__
        left = leftovers(out.parent) + ([] if err is None else [p for p in os.listdir(out.parent) if p == "lib"])
        if r.exit_code == 0 and err is None:
            res[path] = "accepted"
        elif r.exit_code == 1 and err is not None and not out.exists() and not left:
            res[path] = f"refused: {err}"
        else:
            res[path] = f"PROBLEM exit {r.exit_code}, error {err}, output {out.exists()}, leftovers {left}"
    for path, quick in (("verify --base", False), ("verify --base --quick", True)):
        r = runner.invoke(cli, ["verify", str(ticket), "--base", str(base), *(["--quick"] if quick else [])])
        err = None
        try:
            with lotavec.load_ticket(ticket) as t:
                verify_against_base(t, base, full=not quick)
        except LotavecError as e:
            err = type(e).__name__
        ok_cli = (r.exit_code == 0) == (err is None)
        res[path] = ("accepted" if err is None else f"refused: {err}") + ("" if ok_cli else f" (CLI exit {r.exit_code})")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        lotavec.apply(model, str(ticket))
        res["apply"] = "accepted"
    except BaseMismatchError as e:
        same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        res["apply"] = f"refused: {type(e).__name__}" + ("" if same else " (MODEL MODIFIED)")
    except LotavecError as e:
        res["apply"] = f"PROBLEM {type(e).__name__}: {e}"
    return res


#: Cells where acceptance is the documented behaviour although the base differs.
BY_DESIGN = {
    ("A with one entry 1 ulp off (not sampled)", "merge"): "sampled fingerprint by default",
    ("A with one entry 1 ulp off (not sampled)", "verify --base --quick"): "sampled fingerprint",
    ("A with one entry 1 ulp off (not sampled)", "apply"): "sampled fingerprint",
    ("A upcast to F32", "apply"): "apply works in the model's dtype; an exact upcast of the base",
}


def matrix(work: Path, *, codecs: tuple[str, ...] = ("ulpdiff", "raw", "f32delta"),
           only: tuple[str, ...] | None = None, pair: tuple[Path, Path] | None = None) -> list[Row]:
    """All cells; one row per (ticket codec, base). ``pair``: (base, fine-tuned) tiny llama folders."""
    base, ft = pair or tiny_pair(work)
    tickets = make_tickets(work, base, ft)
    bases = make_bases(work, base, tickets["ulpdiff"])
    rows = []
    for codec in codecs:
        for label, (folder, accept) in bases.items():
            if only and label not in only:
                continue
            got = cell(tickets[codec], folder, work)
            bad = []
            for path, outcome in got.items():
                want_accept = accept or (label, path) in BY_DESIGN
                if outcome.startswith("PROBLEM") or (outcome == "accepted") != want_accept:
                    bad.append(path)
            note = "; ".join(f"{p}: {BY_DESIGN[(label, p)]}" for p in PATHS if (label, p) in BY_DESIGN)
            text = ", ".join(f"{p} → {o}" for p, o in got.items()) + (f" (by design — {note})" if note else "")
            if bad:
                text += f"; WRONG: {', '.join(bad)}"
            rows.append(Row(f"wrong base: {codec} ticket × {label}", text, not bad, got))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return finish(matrix(args.workdir))
    with tempfile.TemporaryDirectory(prefix="lotavec-wrongbase-") as td:
        return finish(matrix(Path(td)))


if __name__ == "__main__":
    sys.exit(main())
