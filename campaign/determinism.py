"""Determinism: the same inputs give byte-identical tickets and merged models, whatever the threads.

* ``lotavec extract``: fresh processes with ``OMP_NUM_THREADS`` 1 (pinned to one CPU with
  ``taskset``) and 2, twice each; and the same ticket re-encoded with 1 and 2 writer threads.
* ``lotavec train --seed 0`` on CPU: fresh processes with ``OMP_NUM_THREADS`` 1 and 2 (torch takes
  its thread count from it), twice each: file bytes, decoded content, and which manifest fields differ.
* ``lotavec merge``: two tickets, methods sum, ties and dare_ties (seeded), with the engine's
  ``threads=1`` and ``2`` and twice each; plus fresh CLI processes with ``OMP_NUM_THREADS`` 1 and 2.

Usage:
    .venv/bin/python campaign/determinism.py [--workdir DIR] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOTAVEC, Row, file_sha, finish, tiny_pair, tree_hash, write_jsonl  # noqa: E402


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _cli(args: list[str], threads: int) -> subprocess.CompletedProcess:
    pin = ["taskset", "-c", "0"] if threads == 1 and shutil.which("taskset") else []
    p = subprocess.run([*pin, LOTAVEC, *args], env=_env(threads), capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"lotavec {' '.join(args)} failed: {p.stderr[-1000:]}")
    return p


def manifest_diff(a: Path, b: Path) -> list[str]:
    """Dotted paths of manifest fields whose values differ between two tickets."""
    from lotavec.format import TicketFile

    def doc(p):
        with TicketFile(p) as tf:
            return json.loads(tf._st.metadata["lotavec.ticket"])

    out: list[str] = []

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y) and path != "tensors":
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif x != y:
            out.append(path)

    walk(doc(a), doc(b), "")
    return out


def extract_rows(work: Path, base: Path, ft: Path, cli: bool = True) -> list[Row]:
    from lotavec.extraction import extract
    from lotavec.ticket import load_ticket

    rows = []
    shas = {}
    if cli:
        for threads in (1, 2):
            for k in range(2):
                p = work / f"det_extract_t{threads}_{k}.safetensors"
                _cli(["extract", str(base), str(ft), "-o", str(p), "--density", "0.2", "-q"], threads)
                shas[f"OMP {threads} run {k + 1}"] = file_sha(p)
        ok = len(set(shas.values())) == 1
        rows.append(Row("determinism: lotavec extract across runs and threads",
                        f"{len(shas)} fresh processes (OMP_NUM_THREADS 1 pinned to one CPU, and 2; twice each): "
                        f"{len(set(shas.values()))} distinct ticket file(s)" + (f" {shas}" if not ok else ""), ok, shas))
    src = work / "det_extract_lib.safetensors"
    extract(base, ft, src, density=0.2)
    extract(base, ft, work / "det_extract_lib2.safetensors", density=0.2)
    same_lib = file_sha(src) == file_sha(work / "det_extract_lib2.safetensors")
    enc = {}
    with load_ticket(src) as t:
        for threads in (1, 2):
            for k in range(2):
                p = work / f"det_resave_{threads}_{k}.safetensors"
                t.save(p, chunk_elements=1024, threads=threads)
                enc[(threads, k)] = file_sha(p)
    ok = same_lib and len(set(enc.values())) == 1
    rows.append(Row("determinism: ticket encoding with 1 and 2 writer threads",
                    f"lotavec.extract twice in one process: {'identical' if same_lib else 'DIFFERENT'} bytes; re-encoded "
                    f"with chunk_elements=1024 (many chunks per tensor) and threads 1 / 2, twice each: "
                    f"{len(set(enc.values()))} distinct file(s)", ok))
    return rows


def train_rows(work: Path, base: Path, cli: bool = True, runs: tuple[int, ...] = (1, 2)) -> list[Row]:
    from kill import ticket_content

    data = write_jsonl(work / "det_train.jsonl", 24)
    files = {}
    for threads in runs:
        for k in range(2):
            p = work / f"det_train_t{threads}_{k}.safetensors"
            args = ["train", str(base), "--data", str(data), "-o", str(p), "--density", "0.2", "--calibration-steps",
                    "2", "--steps", "3", "--batch-size", "4", "--max-length", "32", "--seed", "0", "-q"]
            if cli:
                _cli(args, threads)
            else:
                import torch

                from lotavec.train.pipeline import TrainConfig, train

                was = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    train(base, data, p, config=TrainConfig(density=0.2, calibration_steps=2, steps=3, batch_size=4,
                                                            max_length=32, seed=0))
                finally:
                    torch.set_num_threads(was)
            files[(threads, k)] = p
    shas = {k: file_sha(p) for k, p in files.items()}
    contents = {k: ticket_content(p) for k, p in files.items()}
    keys = list(files)
    diffs = sorted({d for k in keys[1:] for d in manifest_diff(files[keys[0]], files[k])})
    same_runs = all(contents[(t, 0)] == contents[(t, 1)] for t in runs)
    same_threads = len(set(contents.values())) == 1
    text = (f"seed 0 on CPU, {'fresh processes with OMP_NUM_THREADS' if cli else 'torch.set_num_threads'} "
            f"{' and '.join(map(str, runs))}, twice each: {len(set(shas.values()))} distinct file(s) of {len(shas)}; "
            f"decoded content (indices, values, fingerprints) identical across runs: {same_runs}, across thread counts: "
            f"{same_threads}; manifest fields that differ: {', '.join(diffs) or 'none'}")
    bytes_ok = len(set(shas.values())) == 1
    return [Row("determinism: lotavec train (content)", text, same_runs and same_threads, {"diffs": diffs}),
            Row("determinism: lotavec train (bytes)", ("byte-identical" if bytes_ok else
                "NOT byte-identical: provenance records wall-clock step times and peak RSS (bug B6)") +
                f"; differing fields: {', '.join(diffs) or 'none'}", bytes_ok, {"diffs": diffs})]


def merge_rows(work: Path, base: Path, ft: Path, cli: bool = True) -> list[Row]:
    from lotavec.extraction import extract
    from lotavec.merge import MergeParams, merge
    from lotavec.testing import make_finetuned

    ft2 = work / f"{base.name}_ft2"
    if not (ft2 / "config.json").exists():
        make_finetuned(base, ft2, density=0.2, seed=2)
    t1, t2 = work / "det_m1.safetensors", work / "det_m2.safetensors"
    extract(base, ft, t1, density=0.2)
    extract(base, ft2, t2, density=0.2)
    rows = []
    for params in (MergeParams(), MergeParams(method="ties", density=0.5),
                   MergeParams(method="dare_ties", density=0.5, seed=1234)):
        hashes = {}
        for threads in (1, 2):
            for k in range(2):
                out = work / f"det_merge_{params.method}_{threads}_{k}"
                merge(base, [t1, t2], out, params=params, threads=threads, overwrite=True)
                hashes[(threads, k)] = tree_hash(out)
        ok = len(set(hashes.values())) == 1
        rows.append(Row(f"determinism: merge {params.method} with threads 1 and 2",
                        f"engine threads=1 and 2, twice each: {len(set(hashes.values()))} distinct output folder(s)", ok))
    if cli:
        hashes = {}
        for threads in (1, 2):
            for k in range(2):
                out = work / f"det_merge_cli_{threads}_{k}"
                _cli(["merge", str(base), str(t1), str(t2), "-o", str(out), "--method", "dare_ties", "--density",
                      "0.5", "--seed", "7", "--force", "-q"], threads)
                hashes[(threads, k)] = tree_hash(out)
        ok = len(set(hashes.values())) == 1
        rows.append(Row("determinism: lotavec merge (CLI) across processes and OMP threads",
                        f"dare_ties --seed 7, fresh processes with OMP_NUM_THREADS 1 (one CPU) and 2, twice each: "
                        f"{len(set(hashes.values()))} distinct output folder(s)", ok))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-cli", action="store_true", help="library calls only (no fresh processes)")
    ap.add_argument("--size", choices=["tiny", "mid"], default="tiny")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def go(work: Path) -> int:
        base, ft = tiny_pair(work, size=args.size)
        rows = extract_rows(work, base, ft, cli=not args.skip_cli)
        rows += merge_rows(work, base, ft, cli=not args.skip_cli)
        rows += train_rows(work, base, cli=not args.skip_cli)
        return finish(rows)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return go(args.workdir)
    with tempfile.TemporaryDirectory(prefix="lotavec-determinism-") as td:
        return go(Path(td))


if __name__ == "__main__":
    sys.exit(main())
