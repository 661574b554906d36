"""Every ```python block of README.md and docs/*.md runs, in order, in a folder with tiny models
(``base/``, ``finetuned/``, ``task_a.jsonl``, ``task_b.jsonl``, ``math.lotavec.safetensors``)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "concepts.md", ROOT / "docs" / "api.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _task(path: Path, seed: int, op: str) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(24):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            ans = a + b if op == "+" else a * b
            f.write(json.dumps({"prompt": f"{a}{op}{b}=", "completion": str(ans)}) + "\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_pair):
    import shutil

    d = tmp_path_factory.mktemp("docs")
    base, ft = tiny_pair
    shutil.copytree(base, d / "base")
    shutil.copytree(ft, d / "finetuned")
    _task(d / "task_a.jsonl", 0, "+")
    _task(d / "task_b.jsonl", 1, "*")
    from lotavec.extraction import extract

    extract(d / "base", d / "finetuned", d / "math.lotavec.safetensors", density=0.1)
    return d


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_blocks_run(doc: Path, workdir: Path, tmp_path: Path):
    blocks = BLOCK.findall(doc.read_text())
    assert blocks, f"{doc} has no python example"
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir)
    script = "\n\n".join(blocks)
    (run_dir / "examples.py").write_text(script)
    proc = subprocess.run([sys.executable, "examples.py"], cwd=run_dir, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"{doc.name} examples failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_cli_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_docs.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
