"""Benchmark models and measured subprocess runs (shared by bench_extract.py and bench_merge.py).

Models, built once and cached under ``bench/out/models`` (git-ignored):

* ``smollm2``: the real SmolLM2-135M-Instruct bf16 folder (:func:`lotavec.realmodel.ensure_smollm2`)
  and two synthetic fine-tunes of it (seeds 1 and 2);
* ``llama1b``: a random ~1.1B-parameter Llama (TinyLlama-1.1B's shape, bf16, 2 GB shards, from
  :func:`lotavec.testing.make_synthetic_model`) and two synthetic fine-tunes of it.

Every synthetic fine-tune changes about 10 % of the entries of every extraction candidate (the
attention and MLP matrices of the blocks) by Gaussian noise of std 0.01 (rounded to bf16 and
nudged one ulp where rounding swallowed it), and nothing else
(:func:`lotavec.testing.make_finetuned`).

Tickets for the merge benchmark are extracted with ``--all-changed`` from those fine-tunes, so each
holds exactly the changed entries (density 10.0 % ± 0.01 %) and the fine-tuned folders are exactly
the equivalent dense models mergekit needs.

:func:`run_measured` runs a Python snippet or a command in a fresh child and returns its wall time
(whole process and, when the child reports one, the timed section) and its peak resident set
(``ru_maxrss``: anonymous memory *and* mapped file pages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
MODELS = OUT / "models"
TICKETS = OUT / "tickets"
PY = sys.executable

MODEL_KINDS = ("smollm2", "llama1b")
FT_DENSITY = 0.1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_dir(kind: str) -> Path:
    """The base model folder of ``kind`` (built on first use)."""
    if kind == "smollm2":
        from lotavec.realmodel import ensure_smollm2

        return ensure_smollm2()
    if kind == "llama1b":
        path = MODELS / "llama1b-base"
        if not (path / "config.json").is_file():
            from lotavec.testing import LLAMA_1B, make_synthetic_model

            log(f"building {path} (~2.2 GB, a few minutes)")
            make_synthetic_model("llama", path, seed=0, max_shard_size="2GB", **LLAMA_1B)
        _add_architectures(path)
        return path
    raise ValueError(f"unknown model kind {kind!r}; one of {MODEL_KINDS}")


def finetuned_dir(kind: str, seed: int) -> Path:
    """Synthetic fine-tune number ``seed`` of ``kind``'s base (about 10 % of candidates changed)."""
    path = MODELS / f"{kind}-ft{seed}"
    if not (path / "config.json").is_file():
        from lotavec.testing import make_finetuned

        log(f"building {path}")
        make_finetuned(base_dir(kind), path, density=FT_DENSITY, seed=seed)
    _add_architectures(path)
    return path


def _add_architectures(folder: Path) -> None:
    """Name the model class in config.json, as ``save_pretrained`` does (mergekit requires it;
    ``make_synthetic_model`` leaves it out)."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if not cfg.get("architectures"):
        cfg["architectures"] = ["LlamaForCausalLM"] if cfg.get("model_type") == "llama" else cfg.get("architectures")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def ticket_path(kind: str, seed: int) -> Path:
    """Lossless ticket of fine-tune ``seed`` (every changed entry: ``--all-changed``)."""
    path = TICKETS / f"{kind}-ft{seed}.lota"
    if not path.is_file():
        from lotavec.extraction import extract

        log(f"building {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        extract(base_dir(kind), finetuned_dir(kind, seed), path, all_changed=True)
    return path


def folder_bytes(path: Path) -> int:
    """Bytes of the safetensors files of a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def warm(paths: list[Path]) -> float:
    """Read every safetensors file of the folders (or files) once, so the page cache holds them.

    Returns:
        Seconds taken (close to memcpy speed when they were cached already).
    """
    import time

    t = time.perf_counter()
    buf = bytearray(64 << 20)
    for p in paths:
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    return time.perf_counter() - t


def page_cache_fraction(paths: list[Path]) -> float:
    """Fraction of the bytes of these safetensors files resident in the page cache (``mincore``)."""
    import ctypes
    import mmap

    import numpy as np

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    resident = total = 0
    for p in paths:
        for f in sorted(p.glob("*.safetensors")) if p.is_dir() else [p]:
            size = f.stat().st_size
            if size == 0:
                continue
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(pages)
            with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = np.frombuffer(mm, dtype=np.uint8)
                rc = libc.mincore(ctypes.c_void_p(view.__array_interface__["data"][0]), size, vec)
                del view
            if rc != 0:
                return float("nan")
            resident += int(np.count_nonzero(np.frombuffer(vec.raw, dtype=np.uint8) & 1))
            total += pages
    return resident / total if total else 1.0


@dataclass
class Measured:
    """One measured child: ``wall`` (process), ``work`` (timed section, or None), ``peak_rss`` bytes."""

    wall: float
    work: float | None
    peak_rss: int
    base_rss: int | None
    extra: dict


# Runs argv as a child of a small wrapper, so RUSAGE_CHILDREN is exactly that child's peak.
_WRAPPER = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("@@")]
    print(json.dumps({"rc": p.returncode, "wall": wall, "maxrss": ru.ru_maxrss * 1024,
                      "report": json.loads(last[-1][2:]) if last else {}}))
""")


def run_measured(argv: list[str], *, env: dict | None = None) -> Measured:
    """Run ``argv`` in a fresh process and measure it.

    The child may print one line ``@@{json}`` with ``"work"`` (seconds of its timed section),
    ``"base_rss"`` (its resident set before the timed section) and anything else to pass back.

    Raises:
        RuntimeError: the child failed (its stderr is shown).
    """
    p = subprocess.run([PY, "-c", _WRAPPER, *argv], stdout=subprocess.PIPE, text=True,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"measured run failed: {argv}")
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    if doc["rc"] != 0:
        raise RuntimeError(f"measured run exited with {doc['rc']}: {' '.join(map(str, argv))}")
    rep = dict(doc["report"])
    return Measured(doc["wall"], rep.pop("work", None), doc["maxrss"], rep.pop("base_rss", None), rep)


def python_snippet(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter.

    The code may call ``rss()`` (resident bytes now), ``start_sampler()`` (poll RssAnon/RssFile
    every 5 ms from then on) and ``report(**kw)`` (prints the ``@@`` line, with the sampled peaks
    ``peak_anon``/``peak_file`` and ``anon_before``/``file_before``, their values when sampling
    started).
    """
    prelude = textwrap.dedent("""
        import json, os, sys, threading, time
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        def _status():
            out = {}
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "RssFile:")):
                        out[line.split(":")[0]] = int(line.split()[1]) * 1024
            return out
        _peaks = {"RssAnon": 0, "RssFile": 0}
        _before = _status()
        def _sample():
            while True:
                for k, v in _status().items():
                    _peaks[k] = max(_peaks[k], v)
                time.sleep(0.005)
        def start_sampler():
            global _before
            _before = _status()
            threading.Thread(target=_sample, daemon=True).start()
        def report(**kw):
            kw.update(peak_anon=_peaks["RssAnon"], peak_file=_peaks["RssFile"], anon_before=_before["RssAnon"],
                      file_before=_before["RssFile"])
            print("@@" + json.dumps(kw), flush=True)
    """)
    return [PY, "-c", prelude + textwrap.dedent(code)]


def fmt_mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:,.0f} MB"
