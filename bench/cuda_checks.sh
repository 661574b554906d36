#!/usr/bin/env bash
# Every check lotavec runs on a CUDA machine, as one script (run from the repository root):
#
#     bash bench/cuda_checks.sh            # logs and JSON go to $OUT (default bench/out/cuda)
#
# 1. builds the compiled kernels in place and imports this checkout (the machine's torch and
#    transformers are used; wheels in .whl/, if any, are installed first, for packages the machine
#    lacks, e.g. zstandard);
# 2. runs the tests marked `cuda` (pytest -m cuda): off-mask exactness of sparse training with bf16
#    weights and autocast, lotavec.train / LoTTO / LotaTrainer / `lotavec train --device cuda`
#    end to end, apply/unapply on CUDA tensors;
# 3. runs bench/cuda_train_check.py (full vs sparse step time and memory on a SmolLM2-shaped model,
#    off-mask exactness) with its default settings.
# Exit status: 0 when both passed, else the first failure's.
set -uo pipefail
OUT=${OUT:-bench/out/cuda}
mkdir -p "$OUT" /tmp/lv_site
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lv_site/deps .whl/*.whl || exit 3
fi
# the checkout itself is imported (python puts the working directory first on sys.path)
$PY tools/build_native.py >"$OUT/build.log" 2>&1 || echo "compiled kernels not built (build.log): numpy fallbacks"
mkdir -p /tmp/lv_site/cli && ln -sfn "$PWD/cli" /tmp/lv_site/cli/lotavec_cli
export PYTHONPATH=$PWD:/tmp/lv_site/cli:/tmp/lv_site/deps${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L 2>&1 | tee "$OUT/device.txt"
$PY - <<'EOF' 2>&1 | tee -a "$OUT/device.txt"
import sys, torch, transformers, lotavec, lotavec.native as n
print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "lotavec", lotavec.__version__, "from", lotavec.__file__, "compiled kernels", n.kernels("codec") is not None)
EOF
rc=0
$PY -m pytest -q -rs -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_cuda.log"
rc=${PIPESTATUS[0]}
$PY bench/cuda_train_check.py --profile --json "$OUT/cuda_train_check.json" 2>&1 | tee "$OUT/cuda_train_check.log"
rc2=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && exit "$rc"
exit "$rc2"
