"""Concurrency: readers of one ticket and base while merges write elsewhere; readers during replacement.

1. **Shared inputs**: ``--readers`` processes loop over ``verify_against_base`` (full digests),
   ``ticket_report`` and a hash of every decoded ticket tensor and every base tensor, while two
   ``lotavec merge`` processes write two output folders from the same ticket and base. Every
   reader result and both merged folders must equal those of a quiet run.
2. **Atomic replacement of a ticket**: a writer re-saves two different tickets alternately to one
   path (``Ticket.save``: temp file + rename) while readers open, verify and hash it: every read
   must be one of the two complete tickets.
3. **Replacement of a merged folder**: ``lotavec merge --force`` replaces a sharded output folder
   while readers open it with ``open_model`` and hash every tensor: each read must be the old or
   the new model, never a mix of shards.

Usage:
    .venv/bin/python campaign/concurrency.py [--readers 4] [--seconds 20] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOTAVEC, PYTHON, Row, finish, tiny_pair, tree_hash  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def read_once(ticket: str, base: str) -> str:
    """One reader pass: verify against the base, report, hash decoded tensors and base tensors."""
    from lotavec.models import open_model
    from lotavec.report import ticket_report
    from lotavec.ticket import load_ticket
    from lotavec.verify import verify_against_base

    h = hashlib.sha256()
    with load_ticket(ticket) as t:
        t.verify()
        n = verify_against_base(t, base, full=True)
        rep = ticket_report(t)
        rep.pop("path")
        h.update(json.dumps(rep, sort_keys=True, default=str).encode() + str(n).encode())
        for tt in t:
            h.update(tt.name.encode() + tt.indices.tobytes() + tt.payload.tobytes())
    with open_model(base) as src:
        for name in src.names():
            h.update(name.encode() + src.array(name).tobytes())
    return h.hexdigest()


def ticket_hash(path: str) -> str:
    """Hash of a ticket's decoded content (after a full verify)."""
    from lotavec.ticket import load_ticket

    h = hashlib.sha256()
    with load_ticket(path) as t:
        t.verify()
        for tt in t:
            h.update(tt.name.encode() + tt.indices.tobytes() + tt.payload.tobytes())
    return h.hexdigest()


def model_hash(folder: str) -> str:
    """Hash of every tensor of a model folder, read through ``open_model``."""
    from lotavec.models import open_model

    h = hashlib.sha256()
    with open_model(folder) as src:
        for name in src.names():
            h.update(name.encode() + src.array(name).tobytes())
    return h.hexdigest()


def role_main(args: list[str]) -> None:
    """Subprocess roles: ``reader T B SECONDS``, ``ticket-reader P SECONDS``, ``model-reader F SECONDS``,
    ``replacer P A B SECONDS``. Readers print a JSON Counter of results (or errors)."""
    from lotavec.errors import LotavecError

    role = args[0]
    if role == "replacer":
        from lotavec.ticket import load_ticket

        path, a, b, secs = args[1], args[2], args[3], float(args[4])
        tk = [load_ticket(a), load_ticket(b)]
        end, n = time.time() + secs, 0
        while time.time() < end:
            tk[n % 2].save(path)
            n += 1
        print(json.dumps({"saves": n}))
        return
    fn = {"reader": lambda: read_once(args[1], args[2]), "ticket-reader": lambda: ticket_hash(args[1]),
          "model-reader": lambda: model_hash(args[1])}[role]
    secs = float(args[-1])
    out: Counter = Counter()
    end = time.time() + secs
    while time.time() < end:
        try:
            out[fn()] += 1
        except LotavecError as e:
            out[f"error {type(e).__name__}: {e}"[:300]] += 1
        except Exception as e:  # noqa: BLE001 - reported
            out[f"UNEXPECTED {type(e).__name__}: {e}"[:300]] += 1
    print(json.dumps(out))


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, __file__, "--role", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _collect(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=3600)
    if p.returncode != 0:
        return {f"PROCESS FAILED {p.returncode}: {err[-500:]}": 1}
    return json.loads(out.strip().splitlines()[-1])


def _merge_cli(base: Path, tickets: list[Path], out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([LOTAVEC, "merge", str(base), *map(str, tickets), "-o", str(out), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def shared_inputs_row(work: Path, base: Path, tickets: list[Path], readers: int, seconds: float,
                      cli: bool = True) -> Row:
    """Readers of one ticket and base while merges write elsewhere (``lotavec merge`` processes, or
    with ``cli=False`` the library's ``merge`` in this process)."""
    import shutil

    from lotavec.merge import merge

    def merge_round(outs: list[Path]) -> list[int]:
        if cli:
            ms = [_merge_cli(base, tickets, out, "--force") for out in outs]
            for m in ms:
                m.communicate(timeout=1800)
            return [m.returncode for m in ms]
        for out in outs:
            merge(base, tickets, out, overwrite=True)
        return [0] * len(outs)

    quiet_out = work / "conc_quiet"
    merge_round([quiet_out])
    quiet_tree = tree_hash(quiet_out)
    quiet_read = read_once(str(tickets[0]), str(base))
    noisy = [work / f"conc_noisy{i}" for i in (1, 2)]
    for out in noisy:
        if out.exists():
            shutil.rmtree(out)
    procs = [_spawn("reader", str(tickets[0]), str(base), str(seconds)) for _ in range(readers)]
    merges, rounds = [], 0
    end = time.time() + seconds
    trees: Counter = Counter()
    while time.time() < end or rounds == 0:  # keep merging for as long as the readers read
        merges += merge_round(noisy)
        for out in noisy:
            trees[tree_hash(out)] += 1
        rounds += 1
    results: Counter = Counter()
    for p in procs:
        results.update(_collect(p))
    bad_reads = {k: v for k, v in results.items() if k != quiet_read}
    ok = not bad_reads and all(rc == 0 for rc in merges) and set(trees) == {quiet_tree}
    text = (f"{readers} reader processes × {seconds:.0f} s: {sum(results.values())} passes (verify --base full, "
            f"report, decode, read base), {results.get(quiet_read, 0)} equal to the quiet run; meanwhile "
            f"{len(merges)} {'lotavec merge runs' if cli else 'merge calls'} into 2 other folders: exit "
            f"{sorted(set(merges))}, {sum(trees.values())} outputs, "
            f"{'all identical to the quiet merge' if set(trees) == {quiet_tree} else 'DIFFERENT'}")
    if bad_reads:
        text += f"; differing reads: {list(bad_reads)[:3]}"
    return Row("concurrency: readers of one ticket and base while merges write", text, ok)


def replace_ticket_row(work: Path, tickets: list[Path], readers: int, seconds: float) -> Row:
    import shutil

    path = work / "conc_replaced.safetensors"
    shutil.copyfile(tickets[0], path)
    want = {ticket_hash(str(t)): t.name for t in tickets}
    rs = [_spawn("ticket-reader", str(path), str(seconds)) for _ in range(readers)]
    w = _spawn("replacer", str(path), str(tickets[0]), str(tickets[1]), str(seconds))
    saves = _collect(w).get("saves", 0)
    results: Counter = Counter()
    for p in rs:
        results.update(_collect(p))
    seen = {want.get(k, k): v for k, v in results.items()}
    ok = set(results) <= set(want) and saves > 0
    return Row("concurrency: readers while a ticket is replaced in place",
               f"{saves} atomic re-saves alternating two tickets, {sum(results.values())} reads by {readers} processes: "
               + ", ".join(f"{k[:80]} {v}" for k, v in seen.items()), ok)


def replace_folder_row(work: Path, base: Path, tickets: list[Path], readers: int, seconds: float,
                       shard: str = "2MB") -> Row:
    from lotavec.merge import merge

    out = work / "conc_folder"
    merge(base, tickets[:1], out, overwrite=True, max_shard_size=shard)
    a = model_hash(str(out))
    merge(base, tickets[1:2], work / "conc_folder_b", overwrite=True, max_shard_size=shard)
    b = model_hash(str(work / "conc_folder_b"))
    rs = [_spawn("model-reader", str(out), str(seconds)) for _ in range(readers)]
    n, end = 0, time.time() + seconds
    while time.time() < end:
        m = _merge_cli(base, [tickets[n % 2]], out, "--force", "--max-shard-size", shard)
        m.communicate(timeout=1800)
        n += 1
    results: Counter = Counter()
    for p in rs:
        results.update(_collect(p))
    names = {a: "ticket-1 model", b: "ticket-2 model"}
    seen = {names.get(k, "MIXED/OTHER " + k[:60]): v for k, v in results.items()}
    mixed = sum(v for k, v in results.items() if k not in names)
    shards = len(list(out.glob("*.safetensors")))
    return Row("concurrency: readers while merge --force replaces a sharded folder",
               f"{n} replacements of a {shards}-shard folder, {sum(results.values())} reads by {readers} processes: "
               + ", ".join(f"{k} {v}" for k, v in seen.items())
               + ("" if not mixed else " — a reader can combine the index or shards of two versions (finding F-folder)"),
               mixed == 0, {"results": dict(results)})


def run(work: Path, readers: int, seconds: float, size: str = "mid",
        pair: tuple[Path, Path] | None = None) -> list[Row]:
    from lotavec.extraction import extract
    from lotavec.testing import make_finetuned

    base, ft = pair or tiny_pair(work, size=size)
    ft2 = work / f"{size}_ft2"
    if not (ft2 / "config.json").exists():
        make_finetuned(base, ft2, density=0.2, seed=2)
    tickets = [work / "conc_t1.safetensors", work / "conc_t2.safetensors"]
    if not tickets[1].exists():
        extract(base, ft, tickets[0], density=0.2)
        extract(base, ft2, tickets[1], density=0.2)
    return [shared_inputs_row(work, base, tickets, readers, seconds),
            replace_ticket_row(work, tickets, readers, seconds),
            replace_folder_row(work, base, tickets, readers, seconds, "2MB" if size == "mid" else "60KB")]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", choices=["tiny", "mid"], default="mid")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return finish(run(args.workdir, args.readers, args.seconds, args.size))
    with tempfile.TemporaryDirectory(prefix="lotavec-concurrency-") as td:
        return finish(run(Path(td), args.readers, args.seconds, args.size))


if __name__ == "__main__":
    sys.exit(main())
