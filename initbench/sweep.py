"""Sweep bookkeeping, as a Hydra callback: resources per job, a summary, the best trial.

Hydra calls the callback in the launching process at the start and end of a sweep, and in the
process that runs each job (the same process for the basic launcher; a joblib worker; a
submitit job) at the start and end of every job. So the decisions that depend on the whole
sweep (how many jobs run at once) are taken once, at the start, and travel with the callback
to the jobs, which apply them where they run:

- CPU threads: the cores this process may use, divided by the jobs running at once, so that
  parallel jobs never oversubscribe the cores. ``train.threads`` or an ``INITBENCH_THREADS``
  set by hand win. Under SLURM, the job's own ``SLURM_CPUS_PER_TASK``.
- GPUs: with several CUDA devices visible, ``train.device=auto`` and jobs running side by side,
  each job takes a device no other running job holds (a lock file per device), or, with more
  jobs than devices, shares one in turn.

At the end, ``sweep_summary.csv`` in the sweep directory lists every run below it (this
sweep's and those of earlier attempts at the same sweep) with its status and, for failures,
why; after an Optuna search, the best trial is logged and kept in :data:`last_sweep`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from initbench import record

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["run", "status", "final_test_acc", "best_test_acc", "total_seconds", "error"]
THREADS_VARIABLE = "INITBENCH_THREADS"  # read by train.configure_backends
DEVICE_VARIABLE = "INITBENCH_DEVICE"  # read by train.resolve_device for train.device=auto
last_sweep: dict[str, Any] = {}


class SweepSummary(Callback):
    """Per-job threads and GPU, then ``sweep_summary.csv`` and the best trial of a search."""

    def __init__(self) -> None:
        self.concurrent = 1  # jobs running at once on one machine
        self.threads: int | None = None  # per job; None leaves torch's default alone

    # --- in the launching process ----------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.concurrent = concurrent_jobs(config)
        if self.concurrent > 1 and THREADS_VARIABLE not in os.environ:
            self.threads = max(1, available_cores() // self.concurrent)
            log.info("sweep: up to %d jobs at once, %d CPU threads each", self.concurrent,
                     self.threads)  # fmt: skip

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        last_sweep.clear()
        last_sweep.update(dir=str(sweep_dir), rows=rows)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        log.info("sweep finished in %s: %s", sweep_dir, tally or "no runs")
        for row in rows:
            if row["status"] == "failed":
                log.error("  failed: %s: %s", row["run"], row["error"])
        if is_search(config):
            best = best_trial(sweep_dir)
            if best is not None:
                last_sweep["best"] = best
                log.info("best trial: %s = %.4f with %s (run %s)", SEARCH_METRIC, best["value"],
                         " ".join(f"{k}={v}" for k, v in best["params"].items()),
                         best.get("run") or "not found")  # fmt: skip

    # --- in the process that runs the job --------------------------------------------------
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._saved_env = {name: os.environ.get(name)
                           for name in (THREADS_VARIABLE, DEVICE_VARIABLE)}  # fmt: skip
        self._device_lock = None
        # Set here, never in the launching process, and undone at the job's end: a value
        # present now was set by hand, and wins. Without one, torch would count the machine's
        # cores, not this job's share of them or its SLURM allocation.
        threads = None if THREADS_VARIABLE in os.environ else slurm_cpus() or self.threads
        if threads:
            os.environ[THREADS_VARIABLE] = str(threads)
        if self.concurrent > 1 and OmegaConf.select(config, "train.device") == "auto":
            claimed = claim_gpu(OmegaConf.select(config, "hydra.job.num") or 0)
            if claimed is not None:
                os.environ[DEVICE_VARIABLE], self._device_lock = claimed

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        for name, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        lock = getattr(self, "_device_lock", None)
        if lock is not None:
            lock.close()  # closing the file releases its lock
            self._device_lock = None


# ----------------------------------------------------------------------------- run directories

DIRNAME_LIMIT = 200  # bytes; file systems refuse names over 255


def short_dirname(name: str, limit: int = DIRNAME_LIMIT) -> str:
    """``name`` when it fits in a directory name, else its start and a hash of the whole.

    Run directories are named by their overrides so that a re-run finds them; an Optuna trial's
    full-precision floats, or many overrides, can pass the 255-byte limit of a file name. The
    hash keeps the shortened name unique and the same on every re-run; the full overrides are
    in the run's ``.hydra/overrides.yaml``.
    """
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
    return f"{name.encode()[: limit - len(digest) - 1].decode(errors='ignore')}~{digest}"


OmegaConf.register_new_resolver("initbench.dirname", short_dirname, replace=True)


# ----------------------------------------------------------------------------- resources


def available_cores() -> int:
    """The cores this process may run on (a cgroup or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def concurrent_jobs(config: DictConfig) -> int:
    """How many jobs of this sweep run at the same time on one machine."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    if launcher.endswith("SlurmLauncher"):
        return 1  # each job on an allocation of its own
    batch = batch_size(config)
    if launcher.endswith("JoblibLauncher"):
        n_jobs = int(OmegaConf.select(config, "hydra.launcher.n_jobs") or 1)
        if n_jobs < 0:  # joblib: -1 all cores, -2 all but one, ...
            n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
        return max(1, min(n_jobs, batch or n_jobs))
    if launcher.endswith("LocalLauncher"):
        return max(1, batch or 1)  # submitit's local executor starts a whole batch at once
    return 1


def batch_size(config: DictConfig) -> int | None:
    """Jobs the sweeper hands to the launcher at once, when it can be known up front."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if sweeper.endswith("BasicSweeper"):
        from initbench.app import sweep_combinations

        overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        count = len(sweep_combinations(overrides, config))
        limit = OmegaConf.select(config, "hydra.sweeper.max_batch_size")
        return min(count, limit) if limit else count
    if "optuna" in sweeper.lower():
        return int(OmegaConf.select(config, "hydra.sweeper.n_jobs") or 1)
    return None


def claim_gpu(job_num: int) -> tuple[str, Any] | None:
    """A CUDA device for this job and the open lock file that reserves it, or None.

    None when fewer than two devices are visible (nothing to choose). The lock files live in
    the temporary folder, so jobs of different sweeps on one machine also keep apart.
    """
    import fcntl

    import torch

    count = torch.cuda.device_count()
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    names = visible if len(visible) == count else [str(k) for k in range(count)]
    folder = Path(tempfile.gettempdir()) / f"initbench-gpu-locks-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    first = job_num % count
    for index in itertools.chain(range(first, count), range(first)):
        handle = open(folder / f"cuda-{names[index]}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        log.info("job %d: cuda:%d", job_num, index)
        return f"cuda:{index}", handle
    log.warning("job %d: all %d GPUs are taken by running jobs; sharing cuda:%d", job_num,
                count, first)  # fmt: skip
    return f"cuda:{first}", None


# ----------------------------------------------------------------------------- Optuna search

SEARCH_METRIC = "best_test_acc"


def is_search(config: DictConfig) -> bool:
    """Whether an Optuna sweeper runs this sweep (``config``: the whole or Hydra's node)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_") or \
        OmegaConf.select(config, "sweeper._target_")  # fmt: skip
    return "optuna" in str(target or "").lower()


def search_value(summary: dict[str, Any]) -> float:
    """The number an Optuna trial reports: the run's best test accuracy.

    A diverged run scores 0, the worst accuracy, so that the search learns to avoid its
    neighbourhood. A failed run has no score: NaN, which Optuna records as a failed trial.
    """
    if summary.get("status") == "diverged":
        return 0.0
    value = summary.get(SEARCH_METRIC)
    if summary.get("status") != "completed" or value is None:
        return math.nan
    return float(value)


def best_trial(sweep_dir: Path) -> dict[str, Any] | None:
    """The best trial from Optuna's ``optimization_results.yaml``, with its run directory."""
    path = sweep_dir / "optimization_results.yaml"
    if not path.exists():
        return None
    results = OmegaConf.to_container(OmegaConf.load(path))
    if "best_params" not in results:  # a multi-objective study has a front, not one best
        return None
    best = {"params": results["best_params"], "value": results["best_value"], "run": None}
    wanted = {key: str(value) for key, value in results["best_params"].items()}
    for run_dir in record.find_runs([sweep_dir]):
        overrides = run_dir / ".hydra" / "overrides.yaml"
        if not overrides.exists():
            continue
        given = dict(item.split("=", 1) for item in OmegaConf.load(overrides) if "=" in item)
        if all(given.get(key) == value for key, value in wanted.items()):
            best["run"] = str(run_dir)
            break
    return best


# ----------------------------------------------------------------------------- the summary


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``sweep_summary.csv`` for the runs below ``sweep_dir`` and return its rows."""
    rows = []
    for run_dir in record.find_runs([sweep_dir]):
        summary = record.read_summary(run_dir) or {}
        rows.append({
            "run": str(run_dir.relative_to(sweep_dir.resolve())),
            "status": summary.get("status", "unknown"),
            "final_test_acc": summary.get("final_test_acc"),
            "best_test_acc": summary.get("best_test_acc"),
            "total_seconds": summary.get("total_seconds"),
            "error": summary.get("error") or "",
        })  # fmt: skip
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / ".sweep_summary.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sweep_dir / "sweep_summary.csv")
    return rows
