"""Helpers for the Hub tests: subprocess runners with a fake-Hub environment, and real tickets.

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE... when it is imported, and the root
conftest sets HF_HUB_OFFLINE=1 for the whole session, so everything that talks to the fake Hub runs
in a subprocess with its own environment: the ``lotavec`` CLI (:func:`run_cli`) or one library call
(:func:`run_api`, through ``_api_call.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fakehub import WRITE_TOKEN, FakeHub

HERE = Path(__file__).parent

# The project's `lotavec` group; push/pull are added if cli/main.py does not register them yet.
_CLI = (
    "from lotavec_cli.cmd_hub import pull, push\n"
    "from lotavec_cli.main import cli\n"
    "for c in (push, pull):\n"
    "    cli.commands.setdefault(c.name, c)\n"
    "cli(prog_name='lotavec')\n"
)


def hub_env(hub: FakeHub | None, home: Path, *, token: str | None = WRITE_TOKEN, offline: bool = False) -> dict[str, str]:
    """Environment for a subprocess talking to ``hub`` with its cache under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update({
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",  # Xet's CAS cannot be emulated; tests only
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "PYTHONWARNINGS": "ignore",
    })
    env["HF_ENDPOINT"] = hub.endpoint if hub is not None else "http://127.0.0.1:9"
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``lotavec ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-c", _CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def run_api(fn: str, env: dict[str, str], *args, **kwargs) -> dict:
    """Call ``lotavec.hub.<fn>`` (or ``load_ticket``) in a subprocess; ``{"ok": ...}`` or ``{"error", "message"}``."""
    return run_api_batch([(fn, args, kwargs)], env)[0]


def run_api_batch(calls: list[tuple[str, tuple, dict]], env: dict[str, str]) -> list[dict]:
    """Several :func:`run_api` calls in one subprocess (one interpreter start), in order."""
    payload = json.dumps([[fn, list(args), kwargs] for fn, args, kwargs in calls])
    p = subprocess.run([sys.executable, str(HERE / "_api_call.py"), payload], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_ticket(path: Path, *, seed: int, base_repo: str = "base-org/tiny-base", n: int = 3) -> Path:
    """Write a small real ticket (BF16, ulpdiff) whose content depends on ``seed``."""
    from lotavec.ticket import Ticket, TicketTensor

    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(n):
        shape = (16, 24)
        base = rng.integers(0x3C00, 0x4000, size=shape, dtype=np.uint16)
        ft = base.copy()
        idx = np.sort(rng.choice(base.size, size=40, replace=False)).astype(np.int64)
        ft.reshape(-1)[idx] += 3
        tensors.append(TicketTensor.from_finetuned(f"model.layers.{i}.mlp.up_proj.weight", base, ft, idx, "BF16"))
    t = Ticket(tensors, base={"repo_id": base_repo, "revision": "b" * 40, "license": "apache-2.0"},
               provenance={"selection": {"rule": "global", "density": 0.1}, "training": {"steps": 10, "lr": 1e-4}})
    t.save(path)
    return path


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
