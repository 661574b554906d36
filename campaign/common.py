"""Shared helpers of the reliability campaign: paths, result rows, models, hashing, leftovers.

Every campaign script prints one or more result rows (``ROW <check> | <result> | PASS/FAIL``) and
exits non-zero when a check fails. Rows also go, as JSON lines, to ``$LOTAVEC_CAMPAIGN_RESULTS``
when that variable names a file (``campaign/run_all.py`` collects them for docs/RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "campaign"
FIXTURES = ROOT / "fixtures"
FORMAT_TESTS = ROOT / "tests" / "format"
HUB_TESTS = ROOT / "tests" / "hub"
PYTHON = sys.executable
LOTAVEC = str(Path(sys.executable).with_name("lotavec"))

for _p in (FIXTURES, FORMAT_TESTS, HUB_TESTS):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

#: File-name patterns of lotavec's temporary outputs (see hfwriter.atomic_output_dir, format.writer, hub.pull_ticket).
TEMP_PATTERNS = (".lotavec-spool-*", ".lotavec-ticket-*.tmp", ".*.tmp-*", ".*.old-*", ".*.tmp")


@dataclass
class Row:
    """One measured result: what was checked, what was found, and whether it passed."""

    check: str
    result: str
    ok: bool
    details: dict = field(default_factory=dict)

    def emit(self) -> None:
        """Print the row and append it to ``$LOTAVEC_CAMPAIGN_RESULTS`` (JSON lines) when set."""
        print(f"ROW {self.check} | {self.result} | {'PASS' if self.ok else 'FAIL'}", flush=True)
        out = os.environ.get("LOTAVEC_CAMPAIGN_RESULTS")
        if out:
            with open(out, "a") as f:
                f.write(json.dumps({"check": self.check, "result": self.result, "ok": self.ok,
                                    "details": self.details, "time": time.time()}, default=str) + "\n")


def finish(rows: Iterable[Row]) -> int:
    """Emit rows; return the process exit status (1 if any failed)."""
    rows = list(rows)
    for r in rows:
        r.emit()
    return 0 if all(r.ok for r in rows) else 1


def file_sha(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hash(folder: str | os.PathLike) -> str:
    """sha256 over the sorted relative paths and contents of every file in a folder."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + file_sha(p).encode())
    return h.hexdigest()


def state_of(path: str | os.PathLike) -> str | None:
    """Content hash of a file or folder, or None when it does not exist."""
    p = Path(path)
    if p.is_dir():
        return "dir:" + tree_hash(p)
    if p.is_file():
        return "file:" + file_sha(p)
    return None


def leftovers(folder: str | os.PathLike, patterns: Iterable[str] = TEMP_PATTERNS) -> list[str]:
    """Names in ``folder`` matching lotavec's temporary-output patterns (sorted)."""
    import fnmatch

    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted(n for n in os.listdir(d) if any(fnmatch.fnmatch(n, p) for p in patterns))


def du(paths: Iterable[str | os.PathLike]) -> int:
    """Total bytes of files under the given paths."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


# --- models --------------------------------------------------------------------------------


def tiny_pair(work: Path, *, size: str = "tiny") -> tuple[Path, Path]:
    """``(base, finetuned)`` llama folders under ``work`` (built once; reused when present).

    ``size="tiny"``: lotavec.testing's tiny llama (hidden 64). ``size="mid"``: a synthetic llama
    with hidden 512, 4 layers (~12 M parameters, 24 MB), so writes take long enough to be hit.
    """
    from lotavec.testing import make_finetuned, make_synthetic_model, make_tiny_model

    base, ft = work / f"{size}_base", work / f"{size}_ft"
    if not (ft / "config.json").is_file():
        if size == "tiny":
            make_tiny_model("llama", base, seed=0)
        else:
            make_synthetic_model("llama", base, seed=0, hidden_size=512, intermediate_size=1408,
                                 num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
        make_finetuned(base, ft, density=0.2, seed=1)
    return base, ft


def write_jsonl(path: Path, n: int = 32) -> Path:
    """A small prompt/completion training file."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Add {i} and {i + 1}.", "completion": f" {2 * i + 1}"}) + "\n")
    return path


def fresh_dir(path: Path) -> Path:
    """An empty folder (removed first if it exists)."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
