#!/usr/bin/env bash
# Check initbench's CUDA paths on a machine with a GPU, in under 5 minutes.
#
#   bash scripts/gpu_check.sh                      # from anywhere inside the checkout
#   CIFAR=/data/cifar10-jpeg.tar.gz bash scripts/gpu_check.sh
#   PYTHON=/opt/venv/bin/python bash scripts/gpu_check.sh
#
# 1. puts the checkout on PYTHONPATH, and installs with pip only what is missing (the package's
#    dependencies, pytest);
# 2. runs the CUDA-marked tests (tests/test_cuda.py and any other @pytest.mark.cuda test):
#    bf16 autocast, channels-last, data on the GPU, no synchronization on ordinary steps,
#    torch.compile, the determinism flag;
# 3. runs scripts/bench.py on the GPU for the CNN and the deep ResNet: floor, runner and
#    classic loop, their peak memory, and the ratios on each run's last line.
# Without a CIFAR-10 copy (CIFAR unset and none beside the checkout) the benchmark uses 50,000
# synthetic images: the same shapes through the same pipelines. Exits non-zero on the first
# failure. Every stage has its own time limit: with the dependencies already installed they add
# up to under 5 minutes (30 + 100 + 80 + 50 s, plus seconds for the checks in between).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
started=$SECONDS
stage() { printf '\n=== %s (%ds elapsed)\n' "$1" $((SECONDS - started)); }

stage "environment"
timeout 30 "$PYTHON" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s, built for CUDA %s)"
             % (torch.__version__, torch.version.cuda))
print("torch", torch.__version__, "CUDA", torch.version.cuda, "|",
      torch.cuda.get_device_name(0), "|", torch.cuda.device_count(), "device(s)")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader || true

stage "install"
# The checkout itself is importable this way; pip is needed only for missing dependencies.
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import initbench.cli, initbench.train, torchvision" 2>/dev/null; then
    # online: the package and its dependencies; offline, with the dependencies present but the
    # package not installed: the package alone, without fetching a build backend
    timeout 60 "$PYTHON" -m pip install -q -e . \
        || timeout 30 "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$PYTHON" -c "import pytest" 2>/dev/null || timeout 30 "$PYTHON" -m pip install -q pytest
"$PYTHON" -c "import initbench.cli, initbench.train, torchvision, pytest"
echo "initbench from $("$PYTHON" -c 'import initbench; print(initbench.__path__[0])')"

stage "CUDA tests"
# Only the files that hold CUDA tests are collected: an optional dependency of another test
# file (scipy, say) missing here must not stop the check. pyproject's addopts ask for
# pytest-timeout; they are replaced, so that its absence is no error either.
mapfile -t cuda_files < <(grep -l "mark.cuda" tests/test_*.py)
pytest_args=(-q -ra -m cuda -o addopts= -p no:cacheprovider)
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    pytest_args+=(--timeout=90)
fi
timeout 100 "$PYTHON" -m pytest "${pytest_args[@]}" "${cuda_files[@]}"

CIFAR=${CIFAR:-${INITBENCH_CIFAR_ARCHIVE:-$(pwd)/../shared/data/cifar10-jpeg.tar.gz}}
if [[ -e "$CIFAR" ]]; then data=$CIFAR; else data=synthetic; fi

stage "benchmark: cnn (data: $data)"
# 20 steps of the real run for its peak memory; 5 rounds of 200 steps per method
timeout 80 "$PYTHON" scripts/bench.py --device cuda --model cnn --batch-size 128 \
    --steps 200 --rounds 5 --memory-steps 20 --data "$data"

stage "benchmark: resnet (data: $data)"
timeout 50 "$PYTHON" scripts/bench.py --device cuda --model resnet --batch-size 128 \
    --steps 40 --rounds 3 --memory-steps 0 --data "$data"

stage "done"
echo "gpu_check: all stages passed in $((SECONDS - started)) s"
