"""A pre-imported ``lotavec`` CLI that forks one child per command, for fast kill -9 tests.

Start-up of the real console script (Python, torch, transformers imports) takes seconds and is
no part of what a kill tests: a child forked from this process runs exactly
``lotavec_cli.main.cli`` with the given arguments (the console script's code path after its
imports), in its own working folder, with stdout/stderr to a log file.

Protocol (JSON lines on stdin/stdout): the zygote prints ``{"ready": true}``; for each
``{"argv": [...], "cwd": ..., "log": ..., "threads": n}`` it forks and prints ``{"pid": P}``; the
controller then sends ``"kill"`` (SIGKILL now) or ``"wait"``, and the zygote prints
``{"pid": P, "status": S}`` (exit code, or minus the signal number). The zygote reaps its
children itself, so a pid is never killed after it could have been reused.

Used by ``campaign/kill.py`` and ``tests/reliability``; start it with the environment the
commands need (e.g. ``HF_ENDPOINT``, ``HF_HOME``: huggingface_hub reads them at import time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

PRELOAD = ("lotavec_cli.main", "lotavec_cli.cmd_hub", "lotavec.extraction", "lotavec.merge", "lotavec.hub",
           "lotavec.train.pipeline", "transformers", "transformers.models.llama.modeling_llama",
           "huggingface_hub")


def _child(job: dict) -> None:
    code = 1
    try:
        os.chdir(job["cwd"])
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if job.get("threads"):
            import torch

            torch.set_num_threads(int(job["threads"]))
        from lotavec_cli.cmd_hub import pull, push
        from lotavec_cli.main import cli

        for c in (push, pull):  # registered here in case cli/main.py does not list them
            cli.commands.setdefault(c.name, c)
        try:
            cli.main(args=list(job["argv"]), prog_name="lotavec", standalone_mode=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported through the exit status and the log
        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The zygote's main loop (stdin commands, stdout replies)."""
    import importlib

    for m in os.environ.get("LOTAVEC_ZYGOTE_PRELOAD", ",".join(PRELOAD)).split(","):
        if m:
            importlib.import_module(m)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        cmd = json.loads(sys.stdin.readline())
        if cmd == "kill":
            os.kill(pid, signal.SIGKILL)  # still our unreaped child: safe even if it has exited
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"pid": pid, "status": rc}) + "\n")
        out.flush()


class Zygote:
    """Controller side: start the zygote, run commands, kill them at chosen moments.

    Args:
        env: environment of the zygote (and so of every command).
        preload: modules imported once up front.
    """

    def __init__(self, env: dict[str, str] | None = None, preload: tuple[str, ...] = PRELOAD):
        e = dict(os.environ if env is None else env)
        e["LOTAVEC_ZYGOTE_PRELOAD"] = ",".join(preload)
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=e, bufsize=1)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("zygote failed to start (see stderr)")

    def start(self, argv: list[str], cwd: str | os.PathLike, log: str | os.PathLike, threads: int | None = None) -> int:
        """Fork a child running ``lotavec ARGV``; returns its pid (then call :meth:`finish`)."""
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log), "threads": threads}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def finish(self, kill: bool) -> int:
        """Kill the running child now (``kill``) or wait for it; its status (−9 when killed)."""
        self.proc.stdin.write(json.dumps("kill" if kill else "wait") + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["status"]

    def run(self, argv: list[str], cwd: str | os.PathLike, log: str | os.PathLike, threads: int | None = None) -> int:
        """Run a command to completion; its exit status."""
        self.start(argv, cwd, log, threads)
        return self.finish(kill=False)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    serve()
