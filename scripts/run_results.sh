#!/usr/bin/env bash
# The convergence experiment on the local CIFAR-10 copy, and its report: results/convergence/.
#
#   bash scripts/run_results.sh                        # the committed results (see the budget)
#   OUT=/tmp/smoke TRAIN_SUBSET=500 EPOCHS=1 bash scripts/run_results.sh data.test_subset=500
#                                                      # a smoke test of this script, ~3 min
#
# What runs: experiment=convergence, i.e. the small CNN under xavier_uniform, xavier_normal,
# kaiming_uniform, kaiming_normal, orthogonal and uniform(+-0.01), Adam at 1e-3, seeds 0, 1, 2:
# 18 runs. Budget for a 2-core CPU without a GPU: each run trains on TRAIN_SUBSET (5,000,
# class-balanced: 500 per class) of the 50,000 training images for EPOCHS (4) epochs, with
# the usual augmentation, and is evaluated on the full 10,000-image test set after every
# epoch. JOBS (2) runs at a time through hydra/launcher=parallel, one CPU thread each. About
# 15-20 minutes on 2 otherwise idle cores.
#
# Arguments are passed on to `initbench run` as overrides. Running the script again skips the
# runs that finished and redoes the failed or interrupted ones; `--force` as the first argument
# runs everything again (earlier files move into each run's _previous-* folder).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath -m "${DATA:-$repo/../shared/data/cifar10-jpeg.tar.gz}")
out=${OUT:-$repo/results/convergence}
train_subset=${TRAIN_SUBSET:-5000}
epochs=${EPOCHS:-4}
jobs=${JOBS:-2}

if [[ ! -e $data ]]; then
    echo "run_results: no CIFAR-10 copy at $data; set DATA=... (a .tar.gz or folder)" >&2
    exit 2
fi
mkdir -p "$out"
command=(initbench run -m "$@" experiment=convergence "data.root=$data" data.download=false
    "data.train_subset=$train_subset" "train.epochs=$epochs" train.progress=false
    hydra/launcher=parallel "hydra.launcher.n_jobs=$jobs" "hydra.sweep.dir=$out/runs")

started=$(date +%s)
"${command[@]}"
status=$?
seconds=$(($(date +%s) - started))

# What produced these numbers, beside them.
{
    echo "command: ${command[*]}"
    echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ) after ${seconds} s (exit status $status)"
    echo "machine: $(nproc) CPU cores, $(uname -srm)"
    python -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}")'
    echo "git revision: $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
} >"$out/run_info.txt"

initbench report "$out/runs" --out "$out" || status=$?
echo "run_results: ${seconds} s; report in $out (exit status $status)" >&2
exit "$status"
