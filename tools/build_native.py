"""Rebuild one compiled kernel library in place while developing: ``python tools/build_native.py codec``.

``pip install -e .`` builds them all (setup.py); this rebuilds one quickly with the same flags.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

root = Path(__file__).resolve().parent.parent
for name in sys.argv[1:] or ["codec", "select"]:
    src = root / "lotavec" / "_csrc" / f"{name}.c"
    out = root / "lotavec" / f"_c{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = ["cc", "-O3", "-std=c99", "-fno-strict-aliasing", "-shared", "-fPIC",
           f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True)
    print(out)
