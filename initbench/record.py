"""The run directory: what a run writes, how, and how it is read back.

This module is the contract between the runner and the reporter. Both sides use the column
lists below; the README's "Files a run writes" section mirrors them.

    <run dir>/
      config.yaml        the resolved configuration
      run.log            the log, as printed
      metrics.csv        one row per epoch                          METRICS_COLUMNS
      steps.csv          one row every train.log_every steps        STEPS_COLUMNS
      grad_norms.csv     per parameter tensor, every N steps        GRAD_NORM_COLUMNS
      distributions.csv  moments per layer at chosen epochs         DISTRIBUTION_COLUMNS
      histograms.csv     histogram counts per layer at those epochs HISTOGRAM_COLUMNS
      init.csv           what the initializer did, per layer
      probe.csv          (probe runs) signal propagation per layer  PROBE_COLUMNS
      checkpoint.pt      state at the last epoch end, for resume
      summary.json       status and headline figures; written first as "running", rewritten
                         atomically at the end

``epoch`` means the same in every table: the number of epochs completed. A metrics row with
``epoch=1`` closes the first epoch; a gradient-norm row taken during the first epoch has
``epoch=0``; ``steps.csv`` gives it as a fraction (0.5 = half-way through the first epoch);
distributions at ``epoch=0, step=0`` are taken at initialization.

Tables are appended row by row (and flushed), so a crash leaves every finished row on disk.
``summary.json`` and ``checkpoint.pt`` are replaced atomically (temporary file, then rename), so
a reader never sees half of one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

METRICS_COLUMNS = [
    "epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
    "epoch_seconds", "images_per_second",
]  # fmt: skip
STEPS_COLUMNS = ["step", "epoch", "train_loss", "lr", "seconds"]
GRAD_NORM_COLUMNS = ["step", "epoch", "layer", "grad_norm", "weight_norm", "update_ratio"]
DISTRIBUTION_COLUMNS = [
    "epoch", "step", "layer", "tensor", "mean", "std", "min", "max",
    "zero_fraction", "saturated_fraction",
]  # fmt: skip
HISTOGRAM_COLUMNS = ["epoch", "step", "layer", "tensor", "bin_low", "bin_high", "count"]
PROBE_COLUMNS = [
    "layer", "kind", "depth", "fan_in", "fan_out", "weight_mean", "weight_std",
    "activation_mean", "activation_std", "grad_std",
]  # fmt: skip

TABLES = {
    "metrics": METRICS_COLUMNS,
    "steps": STEPS_COLUMNS,
    "grad_norms": GRAD_NORM_COLUMNS,
    "distributions": DISTRIBUTION_COLUMNS,
    "histograms": HISTOGRAM_COLUMNS,
    "probe": PROBE_COLUMNS,
}

SUMMARY = "summary.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"

# A run's life: running -> completed | diverged | failed | interrupted.
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Strict JSON: a non-finite number (a diverged run's loss) is written as the string
    ``"nan"``, ``"inf"`` or ``"-inf"``, which ``float()`` reads back, since JSON has no NaN."""
    text = json.dumps(_finite(payload), indent=2, sort_keys=False, default=_json_default,
                      allow_nan=False) + "\n"  # fmt: skip
    atomic_write_bytes(path, text.encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _finite(value.item())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None when there is none (yet) or it cannot be parsed.

    initbench only ever replaces the file whole, so an unparsable one was cut short by
    something else (a copy, a full disk); it is no result, and never read as one.
    """
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


class TableWriter:
    """Appends rows to one CSV table of a run directory, header first, flushed per call."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._handle, fieldnames=columns, extrasaction="raise")
        if new:
            self._writer.writeheader()
            self._handle.flush()

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow({key: _format(row.get(key)) for key in self.columns})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _format(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def truncate_table(path: Path, keep: int, key: str, columns: list[str]) -> None:
    """Keep only the rows whose ``key`` column is <= ``keep`` (used when a run resumes from a
    checkpoint: rows written after the checkpoint are dropped and recomputed)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as handle:
        # a row cut short by a crash (missing fields read as None) is dropped with the rest
        rows = [
            row
            for row in csv.DictReader(handle)
            if None not in row.values() and row.get(key) and float(row[key]) <= keep
        ]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()  # the same dialect as TableWriter, so appended rows match
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


# Keys that change how a run is executed, not what it computes: they never split a group of
# runs in a report.
EXECUTION_KEYS = frozenset({
    "resume", "train.progress", "train.threads", "train.checkpoint",
    "data.root", "data.cache_dir", "data.download",
})  # fmt: skip
# What may change between an interrupted run and its resumption (another machine, another copy
# of the data) without making it another run.
RESUMABLE_CHANGES = EXECUTION_KEYS | {"train.device"}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"name": "mlp"}}`` -> ``{"model.name": "mlp"}``. Lists become JSON text, so
    that every value can be compared and grouped on."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, Mapping)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def config_differences(run_dir: Path, config: Mapping[str, Any]) -> list[str]:
    """The settings (dotted keys) in which ``config`` differs from the run recorded in
    ``run_dir``, resumable changes aside; empty when they agree or nothing is recorded."""
    import yaml

    path = Path(run_dir) / CONFIG
    try:
        recorded = yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return []
    old, new = flatten(recorded), flatten(config)
    return sorted(key for key in old.keys() | new.keys()
                  if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key))  # fmt: skip


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / SUMMARY).exists() or (path / CONFIG).exists()


def find_runs(roots: Iterable[Path]) -> list[Path]:
    """Every run directory at or below the given paths, sorted, each once."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if is_run_dir(root):
            found.add(root.resolve())
        for marker in (SUMMARY, CONFIG):
            for path in root.rglob(marker):
                if ".hydra" in path.parts or "_previous" in path.parent.name:
                    continue
                found.add(path.parent.resolve())
    return sorted(found)
