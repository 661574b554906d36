"""``lotavec.format`` must import and work with torch unavailable (ARCHITECTURE: format never imports torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from format_helpers import ROOT, VALID

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name!r})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    import lotavec.format as fmt
    from lotavec.format import TicketFile, TicketFileWriter

    out = sys.argv[1]
    with TicketFileWriter(out, chunk_elements=64, threads=1) as w:
        w.add("w", (10, 10), "BF16", np.array([1, 50, 99]), "raw", np.array([0x3F80, 0x4000, 0xBF80], "<u2"))
    with TicketFile(out) as tf:
        idx, pl = tf.read_tensor("w")
        assert idx.tolist() == [1, 50, 99] and pl.tolist() == [0x3F80, 0x4000, 0xBF80]
    with TicketFile(sys.argv[2]) as tf:
        tf.verify()
    assert "torch" not in sys.modules, "torch got imported"
    print("ok", len(fmt.__all__))
    """
)


def test_format_imports_and_round_trips_with_torch_blocked(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "t.safetensors"), str(VALID / "mask_codecs.safetensors")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")


def test_blocker_really_blocks_torch():
    """The meta-path finder must make ``import torch`` fail, or the test above proves nothing."""
    code = SCRIPT.split("import numpy as np")[0] + "\ntry:\n    import torch\nexcept ImportError:\n    print('blocked')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "blocked", r.stderr
