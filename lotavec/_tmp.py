"""Temporary files and folders that a killed process leaves behind are reaped by the next run.

Temporary names carry the writer's process id: ``<prefix><pid>-<random>``. Before creating one, a
writer removes siblings with the same prefix whose process no longer exists (a live process with
that id, possibly unrelated, keeps its files: reaping errs on the side of keeping).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def tagged(prefix: str) -> str:
    """``prefix`` followed by this process's id and a dash."""
    return f"{prefix}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def reap_stale(directory: str | os.PathLike, prefix: str) -> int:
    """Remove ``<prefix><pid>-*`` entries of ``directory`` whose process is gone. Returns how many."""
    n = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        pid, _, _ = e.name[len(prefix):].partition("-")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
            n += 1
        except OSError:
            pass
    return n


def reap_and_tag(directory: str | os.PathLike, prefix: str) -> str:
    """Reap stale entries of ``prefix`` in ``directory``; return the tagged prefix for a new one."""
    reap_stale(Path(directory), prefix)
    return tagged(prefix)
