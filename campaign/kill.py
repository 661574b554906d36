"""Crash safety: kill -9 ``lotavec extract | merge | train | pull`` at random moments.

For each command, every iteration starts from a destination holding *old* content (every other
iteration: no destination at all), runs the command and kills it with SIGKILL at a random moment,
then checks:

* the destination holds the old content, nothing (when there was none), or the complete new
  content — never anything else (a torn file or folder);
* for ``pull``, every file the Hugging Face cache presents in a snapshot is complete;
* a rerun (not killed) succeeds and produces exactly the new content;
* which temporary files are left behind, where, how big, and whether the rerun removed them
  (they are not cleaned between iterations, so reruns also run next to earlier leftovers).

Kill moments alternate between uniform over the whole run (measured on a calibration run) and
"triggered": the controller polls for the command's first temporary file and kills after a random
delay within the measured write window, so many kills land while output is being written.

Commands run in children forked from a pre-imported CLI (``campaign/zygote.py``; same code path
as the console script minus interpreter start-up); ``--exec-kills N`` adds N kills of the real
``lotavec`` console script per command. ``pull`` talks to the strict fake Hub of
``tests/hub/fakehub.py``, started in this process.

Usage:
    .venv/bin/python campaign/kill.py --kills 50 [--commands extract,merge,train,pull] [--size mid]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOTAVEC, Row, du, file_sha, finish, fresh_dir, state_of, tiny_pair, write_jsonl  # noqa: E402
from zygote import Zygote  # noqa: E402


@dataclass
class Spec:
    """How to run one command and judge its destination.

    Attributes:
        name: command name.
        argv: arguments after ``lotavec`` (``force_argv`` when the destination exists).
        dest: the destination file or folder.
        watch: folders where temporary files appear; ``patterns`` their name patterns.
        old: ``state_of`` the old content; ``put_old()`` restores it.
        new: acceptable ``state_of`` values of a complete new destination.
        content: optional function giving a content key for files whose bytes vary (train).
        cache_check: optional function returning problems with the Hub cache (pull).
        reset: optional function run before each killed run (pull: empties the Hub cache).
    """

    name: str
    argv: list[str]
    force_argv: list[str]
    dest: Path
    watch: list[Path]
    patterns: tuple[str, ...]
    put_old: Callable[[], None]
    old: str | None = None
    new: set[str] = field(default_factory=set)
    content: Callable[[Path], str] | None = None
    cache_check: Callable[[], list[str]] | None = None
    reset: Callable[[], None] | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None


def ticket_content(path: Path) -> str:
    """Hash of a ticket's decoded tensors and base identity (not provenance: training timings vary)."""
    import hashlib

    from lotavec.format import TicketFile

    h = hashlib.sha256()
    with TicketFile(path) as tf:
        tf.verify()
        h.update(repr(sorted(tf.manifest.base.items())).encode())
        for e in tf.manifest.tensors:
            h.update(f"{e.name}{e.shape}{e.dtype}{e.values}{e.base_sample}".encode())
            for start, idx, pl in tf.iter_chunks(e.name):
                h.update((idx + start).tobytes())
                h.update(pl.tobytes())
    return "ticket:" + h.hexdigest()


# --- the four commands ---------------------------------------------------------------------


def spec_extract(work: Path, base: Path, ft: Path) -> Spec:
    out = work / "extract_out"
    out.mkdir(exist_ok=True)
    dest = out / "ticket.safetensors"
    old = work / "extract_old.safetensors"
    if not old.exists():
        from lotavec.extraction import extract

        extract(base, ft, old, density=0.05)

    def put_old():
        shutil.copyfile(old, dest)

    argv = ["extract", str(base), str(ft), "-o", str(dest), "--density", "0.2", "-q"]
    return Spec("extract", argv, argv, dest, [out], (".lotavec-spool-*", ".lotavec-ticket-*"), put_old,
                old="file:" + file_sha(old))


def spec_merge(work: Path, base: Path, ft: Path) -> Spec:
    from lotavec.extraction import extract

    tk = work / "merge_ticket.safetensors"
    if not tk.exists():
        extract(base, ft, tk, density=0.2)
    out = work / "merge_out"
    out.mkdir(exist_ok=True)
    dest = out / "merged"
    old = work / "merge_old"
    if not old.exists():
        shutil.copytree(base, old)

    def put_old():
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(old, dest)

    argv = ["merge", str(base), str(tk), "-o", str(dest), "-q"]
    return Spec("merge", argv, argv + ["--force"], dest, [out], (".merged.tmp-*", ".merged.old-*"), put_old,
                old=state_of(old))


def spec_train(work: Path, base: Path, ft: Path) -> Spec:
    data = write_jsonl(work / "train.jsonl", 16)
    out = work / "train_out"
    out.mkdir(exist_ok=True)
    dest = out / "ticket.safetensors"
    old = work / "train_old.safetensors"
    if not old.exists():
        from lotavec.extraction import extract

        extract(base, ft, old, density=0.01)

    def put_old():
        shutil.copyfile(old, dest)

    argv = ["train", str(base), "--data", str(data), "-o", str(dest), "--density", "0.5", "--calibration-steps", "1",
            "--steps", "1", "--batch-size", "2", "--max-length", "16", "--seed", "0", "-q"]
    return Spec("train", argv, argv, dest, [out], (".lotavec-spool-*", ".lotavec-ticket-*"), put_old,
                old="file:" + file_sha(old), content=ticket_content)


def spec_pull(work: Path, base: Path, ft: Path, hub) -> Spec:
    from lotavec.extraction import extract

    tk = work / "pull_ticket.safetensors"
    if not tk.exists():
        extract(base, ft, tk, density=1.0, values="raw")  # the largest ticket of this pair
    data = tk.read_bytes()
    hub.add_files("campaign/kill", {"ticket.lotavec.safetensors": data})
    home = work / "pull_home"
    out = work / "pull_out"
    out.mkdir(exist_ok=True)
    dest = out / "ticket.lotavec.safetensors"
    old = work / "extract_old.safetensors" if (work / "extract_old.safetensors").exists() else None
    old_bytes = old.read_bytes() if old else b"old ticket bytes\n"
    new_sha = file_sha(tk)

    def put_old():
        dest.write_bytes(old_bytes)

    cache = home / "hub" / "models--campaign--kill"

    def cache_check() -> list[str]:
        bad = []
        for p in (cache / "snapshots").glob("*/*") if cache.is_dir() else []:
            if p.exists() and file_sha(p) != new_sha:
                bad.append(f"snapshot file {p.name} is incomplete ({p.stat().st_size} B)")
        return bad

    def reset():
        shutil.rmtree(cache / "snapshots", ignore_errors=True)
        for b in (cache / "blobs").glob("*") if (cache / "blobs").is_dir() else []:
            if not b.name.endswith(".incomplete"):
                b.unlink()  # complete blobs go (forces a download); partial ones stay (resume)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({"HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_fake_read_token",
                "HF_HUB_ETAG_TIMEOUT": "5"})
    argv = ["pull", "campaign/kill", "-o", str(dest), "--force"]
    import hashlib

    return Spec("pull", argv, argv, dest, [out, cache / "blobs"], (".*.tmp", "*.incomplete", "*.lock"), put_old,
                old="file:" + hashlib.sha256(old_bytes).hexdigest(), new={"file:" + new_sha},
                cache_check=cache_check, reset=reset, env=env)


# --- one kill ------------------------------------------------------------------------------


def _temp_present(spec: Spec) -> bool:
    for d in spec.watch:
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        if any(fnmatch.fnmatch(n, p) for n in names for p in spec.patterns):
            return True
    return False


def _alive(pid: int) -> bool:
    """Whether a (not yet reaped) child is still running: not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _leftovers(spec: Spec) -> dict[str, int]:
    found = {}
    for d in spec.watch:
        if d.is_dir():
            for n in os.listdir(d):
                if any(fnmatch.fnmatch(n, p) for p in spec.patterns):
                    found[str(d / n)] = du([d / n])
    return found


class Runner:
    """Runs a spec's command in the zygote (or as a fresh console-script process)."""

    def __init__(self, spec: Spec, zygote: Zygote, logdir: Path):
        self.spec, self.zygote, self.logdir = spec, zygote, logdir
        self.n = 0

    def _log(self) -> Path:
        self.n += 1
        return self.logdir / f"{self.spec.name}-{self.n}.log"

    def full(self, exists: bool) -> tuple[int, float, float | None, Path]:
        """Run to completion: (status, seconds, seconds from the first temp file to the end, log)."""
        log = self._log()
        argv = self.spec.force_argv if exists else self.spec.argv
        t0 = time.perf_counter()
        self.zygote.start(argv, self.spec.cwd or self.logdir, log)
        # Watch for the first temporary file while waiting (the write window).
        first = None
        import threading

        done = threading.Event()

        def watch():
            nonlocal first
            while not done.is_set():
                if first is None and _temp_present(self.spec):
                    first = time.perf_counter()
                time.sleep(0.0005)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        st = self.zygote.finish(kill=False)
        t1 = time.perf_counter()
        done.set()
        th.join()
        return st, t1 - t0, (t1 - first) if first else None, log

    def killed(self, exists: bool, mode: str, total: float, window: float, rng: random.Random,
               exec_mode: bool = False) -> tuple[int, str, float]:
        """Run and kill: (status, mode actually used, seconds after start of the kill)."""
        log = self._log()
        argv = self.spec.force_argv if exists else self.spec.argv
        if exec_mode:
            fh = open(log, "w")
            p = subprocess.Popen([LOTAVEC, *argv], stdout=fh, stderr=fh, cwd=self.spec.cwd or self.logdir,
                                 env=self.spec.env)
            alive = lambda: p.poll() is None  # noqa: E731
            kill = p.kill
        else:
            pid = self.zygote.start(argv, self.spec.cwd or self.logdir, log)
            alive, kill = (lambda: _alive(pid)), None
        t0 = time.perf_counter()
        if mode == "uniform":
            deadline = t0 + rng.uniform(0, total)
            while time.perf_counter() < deadline and alive():
                time.sleep(0.0005)
        else:
            limit = t0 + 10 * total + 30
            while not _temp_present(self.spec) and time.perf_counter() < limit and alive():
                time.sleep(0.0003)
            deadline = time.perf_counter() + rng.uniform(0, window)
            while time.perf_counter() < deadline and alive():
                time.sleep(0.0003)
        at = time.perf_counter() - t0
        if exec_mode:
            kill()
            st = p.wait()
            fh.close()
        else:
            st = self.zygote.finish(kill=True)
        return st, mode, at


def judge(spec: Spec, before: str | None) -> tuple[str, str | None]:
    """Classify the destination: old / absent / new / TORN (with detail)."""
    now = state_of(spec.dest)
    if now == before:
        return ("absent" if now is None else "old"), None
    if now in spec.new:
        return "new", None
    if spec.content is not None and now is not None and now.startswith("file:"):
        try:
            if "content:" + spec.content(spec.dest) in spec.new:
                return "new", None
        except Exception as e:  # noqa: BLE001 - a torn ticket fails to decode
            return "TORN", f"{type(e).__name__}: {e}"
    return "TORN", f"state {now} is neither the old {before} nor a complete new one"


def campaign(spec: Spec, zygote: Zygote, kills: int, seed: int, logdir: Path, exec_kills: int = 0,
             calibration: int = 2) -> Row:
    """Kill ``spec``'s command ``kills`` times; the row."""
    rng = random.Random(seed)
    runner = Runner(spec, zygote, logdir)
    # Calibration: complete runs (two by default) from an existing destination give the new content and timings.
    times, windows = [], []
    for _ in range(calibration):
        spec.put_old()
        if spec.reset:
            spec.reset()
        st, dt, win, log = runner.full(exists=True)
        if st != 0:
            return Row(f"kill -9: {spec.name}", f"calibration run failed with status {st}: {log.read_text()[-800:]}", False)
        times.append(dt)
        windows.append(win or 0.0)
        cur = state_of(spec.dest)
        spec.new.add(cur)
        if spec.content is not None:
            spec.new.add("content:" + spec.content(spec.dest))
    if spec.content is None and len(spec.new) > 1:
        return Row(f"kill -9: {spec.name}", f"two complete runs gave different outputs: {spec.new}", False)
    total, window = 0.95 * min(times), 0.9 * (min(windows) or min(times) / 4)
    outcomes: Counter = Counter()
    problems: list[str] = []
    killed = completed = 0
    kill_times = []
    leftover_seen: dict[str, int] = {}
    rerun_cleaned = rerun_left = reruns = reruns_ok = 0
    it = 0
    while killed < kills + exec_kills and it < 4 * (kills + exec_kills) + 10:
        exec_mode = killed >= kills
        exists = it % 2 == 0
        if exists:
            spec.put_old()
        elif spec.dest.exists():
            shutil.rmtree(spec.dest) if spec.dest.is_dir() else spec.dest.unlink()
        if spec.reset:
            spec.reset()
        before = state_of(spec.dest)
        mode = "uniform" if (it // 2) % 2 == 0 else "trigger"  # every (old present?, mode) pairing in turn
        if exec_mode:
            mode = "trigger"
        st, mode, at = runner.killed(exists, mode, total, window, rng, exec_mode=exec_mode)
        it += 1
        if st == -9:
            killed += 1
            kill_times.append(at)
        elif st == 0:
            completed += 1
        else:
            problems.append(f"run exited {st} before the kill ({runner.n})")
            continue
        verdict, why = judge(spec, before)
        outcomes[f"{mode}:{verdict}"] += 1
        if verdict == "TORN":
            problems.append(f"iteration {it}: torn destination after kill at {at:.3f} s ({why})")
        if spec.cache_check:
            problems += [f"iteration {it}: {b}" for b in spec.cache_check()]
        left = _leftovers(spec)
        fresh = [k for k in left if k not in leftover_seen]
        for k, v in left.items():
            leftover_seen[k] = v
        st2, _, _, log = runner.full(exists=spec.dest.exists())
        reruns += 1
        if st2 != 0:
            problems.append(f"iteration {it}: rerun failed with status {st2}: {log.read_text()[-400:]}")
            continue
        verdict2, why2 = judge(spec, "never")
        if verdict2 != "new":
            problems.append(f"iteration {it}: rerun output is not the new content ({why2})")
        else:
            reruns_ok += 1
        after = _leftovers(spec)
        rerun_cleaned += sum(1 for k in fresh if k not in after)
        rerun_left += sum(1 for k in fresh if k in after)
    final = _leftovers(spec)
    ok = not problems and killed >= kills + exec_kills
    kinds = Counter(next(p for p in spec.patterns if fnmatch.fnmatch(Path(k).name, p)) for k in leftover_seen)
    text = (f"{killed} kills ({kills} in forked CLI children, {exec_kills} of the console script; "
            f"{completed} runs finished before their kill); run {total:.2f} s, write window {window:.2f} s; "
            f"kill moments {min(kill_times):.3f}–{max(kill_times):.3f} s; destination after kill: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + f"; reruns: {reruns_ok}/{reruns} succeeded with the new content; "
            f"leftover temp entries after kills: {len(leftover_seen)} ({du(leftover_seen)/1e6:.1f} MB; "
            f"{dict(kinds)}), removed by the next rerun: {rerun_cleaned}, left by it: {rerun_left}; "
            f"still present at the end: {len(final)} ({du(final)/1e6:.1f} MB) in "
            f"{sorted({str(Path(k).parent) for k in final}) or '-'}")
    if problems:
        text += "; PROBLEMS: " + " | ".join(problems[:5])
    return Row(f"kill -9: {spec.name}", text, ok, {"outcomes": dict(outcomes), "problems": problems[:20],
                                                    "leftovers": final})


def run(commands: list[str], kills: int, work: Path, *, size: str = "mid", seed: int = 20260701,
        exec_kills: int = 0, pair: tuple[Path, Path] | None = None, calibration: int = 2) -> list[Row]:
    """Run the kill campaign for ``commands``; the rows. ``pair``: (base, fine-tuned) folders to use.

    One zygote serves every command; when ``pull`` is among them it is started with the fake Hub's
    environment (local paths never reach the Hub, so the other commands are unaffected).
    """
    base, ft = pair or tiny_pair(work, size=size)
    logdir = fresh_dir(work / "logs")
    rows = []
    hub = None
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    specs = []
    try:
        if "pull" in commands:
            from fakehub import FakeHub

            hub = FakeHub().start()
            hub._server.handle_error = lambda request, address: None  # killed clients reset connections
            pull = spec_pull(work, base, ft, hub)
            env = dict(pull.env, TOKENIZERS_PARALLELISM="false")
        for c in commands:
            spec = pull if c == "pull" else {"extract": spec_extract, "merge": spec_merge, "train": spec_train}[c](work, base, ft)
            spec.env = env
            specs.append(spec)
        with Zygote(env) as z:
            for spec in specs:
                rows.append(campaign(spec, z, kills, seed, logdir, exec_kills, calibration))
    finally:
        if hub is not None:
            hub.stop()
    if hub is not None and hub.unknown:
        rows.append(Row("kill -9: pull (fake Hub strictness)", f"unknown routes hit: {hub.unknown[:5]}", False))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--exec-kills", type=int, default=0)
    ap.add_argument("--commands", default="extract,merge,train,pull")
    ap.add_argument("--size", choices=["tiny", "mid"], default="mid")
    ap.add_argument("--seed", type=int, default=20260701)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    cmds = [c for c in args.commands.split(",") if c]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return finish(run(cmds, args.kills, args.workdir, size=args.size, seed=args.seed, exec_kills=args.exec_kills))
    with tempfile.TemporaryDirectory(prefix="lotavec-kill-") as td:
        return finish(run(cmds, args.kills, Path(td), size=args.size, seed=args.seed, exec_kills=args.exec_kills))


if __name__ == "__main__":
    sys.exit(main())
