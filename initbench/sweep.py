"""Sweep bookkeeping, as a Hydra callback: thread budgets per job, and a summary at the end.

``sweep_summary.csv`` in the sweep directory lists every run below it (this sweep's and those of
earlier attempts at the same sweep), with its status and, for failures, why.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from initbench import record

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["run", "status", "final_test_acc", "best_test_acc", "total_seconds", "error"]
last_sweep: dict[str, Any] = {}


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = OmegaConf.select(config, "hydra.launcher.n_jobs")
        if jobs and jobs > 0 and "INITBENCH_THREADS" not in os.environ:
            # Parallel jobs share the cores; without this each would start one thread per core.
            threads = max(1, (os.cpu_count() or 1) // int(jobs))
            os.environ["INITBENCH_THREADS"] = str(threads)
            log.info("sweep: %s parallel jobs, %d CPU threads each", jobs, threads)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        last_sweep.clear()
        last_sweep.update(dir=str(sweep_dir), rows=rows)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        log.info("sweep finished in %s: %s", sweep_dir,
                 ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs")
        for row in rows:
            if row["status"] == "failed":
                log.error("  failed: %s: %s", row["run"], row["error"])


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
