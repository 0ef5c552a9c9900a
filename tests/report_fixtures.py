"""Run directories for the reporter's tests, written with initbench.record's own writers.

``write_run`` builds one run from a few numbers, so that a test can compute by hand what the
report must say about it. Everything not given gets a small, plausible default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from initbench import record

BASE_CONFIG: dict[str, Any] = {
    "model": {"name": "mlp", "activation": "relu", "depth": 3, "width": 64},
    "init": {"name": "kaiming_normal", "gain": 1.0},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "data": {"name": "synthetic", "root": "data", "num_train": 256},
    "train": {"epochs": 4, "batch_size": 64, "threads": None},
    "diagnostics": {"enabled": True, "grad_every": 10, "bins": 8},
    "seed": 0,
    "resume": "auto",
}
LAYERS = ["layers.0", "layers.1", "layers.2", "head"]
PARAMETERS = [
    "layers.0.weight",
    "layers.0.bias",
    "norm.weight",
    "layers.1.weight",
    "layers.2.weight",
    "head.weight",
    "head.bias",
]


def config(init: str = "kaiming_normal", seed: int = 0, **dotted: Any) -> dict[str, Any]:
    """BASE_CONFIG with ``init.name`` and ``seed`` set and ``dotted`` keys overridden, written
    with ``__`` for the dot: ``config(optimizer__lr=0.01)``."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["init"]["name"] = init
    cfg["seed"] = seed
    for key, value in dotted.items():
        node = cfg
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return cfg


def write_run(
    run_dir: Path,
    cfg: Mapping[str, Any],
    *,
    accuracies: Sequence[float] = (0.3, 0.5, 0.7, 0.8),
    losses: Sequence[float] | None = None,
    status: str | None = "completed",
    summary: Mapping[str, Any] | None = None,
    grad_gain: float = 1.0,
    diagnostics: bool = True,
    probe: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """One run. ``accuracies``: test accuracy per epoch (metrics.csv); ``status``: the final
    summary's status, or None for a run that wrote no summary.json at all; ``summary``: keys
    to override in summary.json; ``grad_gain``: grad norm ratio from one layer to the next;
    ``probe``: (activation_std, grad_std) per layer, which makes it a probe run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / record.CONFIG).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    losses = (
        list(losses) if losses is not None else [2.0 / (e + 1) for e in range(len(accuracies))]
    )

    if probe is not None:
        writer = record.TableWriter(run_dir / "probe.csv", record.PROBE_COLUMNS)
        writer.write(
            {
                "layer": LAYERS[i],
                "kind": "linear",
                "depth": i,
                "fan_in": 64,
                "fan_out": 64,
                "weight_mean": 0.0,
                "weight_std": 0.1,
                "activation_mean": 0.0,
                "activation_std": act,
                "grad_std": grad,
            }
            for i, (act, grad) in enumerate(probe)
        )
        writer.close()
        payload = {"kind": "probe", "status": status, "seed": cfg["seed"]}
        record.atomic_write_json(run_dir / record.SUMMARY, payload | dict(summary or {}))
        return run_dir

    metrics = record.TableWriter(run_dir / "metrics.csv", record.METRICS_COLUMNS)
    metrics.write(
        {
            "epoch": e + 1,
            "step": 4 * (e + 1),
            "train_loss": loss,
            "train_acc": acc,
            "test_loss": loss,
            "test_acc": acc,
            "lr": 0.1,
            "epoch_seconds": 2.0 + e % 2,
            "images_per_second": 128.0,
        }
        for e, (acc, loss) in enumerate(zip(accuracies, losses, strict=True))
    )
    metrics.close()
    if diagnostics:
        _write_diagnostics(run_dir, len(accuracies), grad_gain)

    if status is not None:
        finite = [a for a in accuracies if not math.isnan(a)]
        payload = {
            "kind": "train",
            "status": status,
            "error": None,
            "started_at": "2025-01-02T10:00:00+00:00",
            "finished_at": None if status == "running" else "2025-01-02T10:05:00+00:00",
            "total_seconds": 10.0,
            "epochs_completed": len(accuracies),
            "steps": 4 * len(accuracies),
            "final_test_acc": accuracies[-1] if accuracies else None,
            "best_test_acc": max(finite) if finite else None,
            "best_epoch": accuracies.index(max(finite)) + 1 if finite else None,
            "final_train_loss": losses[-1] if losses else None,
            "images_per_second": 128.0,
            "device": "cpu",
            "torch_version": "2.14.1",
            "cuda_version": None,
            "git_revision": "abc1234",
            "seed": cfg["seed"],
            "model": cfg["model"]["name"],
            "init": cfg["init"]["name"],
            "optimizer": cfg["optimizer"]["name"],
            "lr": cfg["optimizer"]["lr"],
            "divergence": None,
        }
        if status == "running":
            for key in (
                "final_test_acc",
                "best_test_acc",
                "best_epoch",
                "final_train_loss",
                "total_seconds",
            ):
                payload[key] = None
        record.atomic_write_json(run_dir / record.SUMMARY, payload | dict(summary or {}))
    return run_dir


def _write_diagnostics(run_dir: Path, epochs: int, grad_gain: float) -> None:
    norms = record.TableWriter(run_dir / "grad_norms.csv", record.GRAD_NORM_COLUMNS)
    for step in range(0, 4 * epochs, 2):  # epoch = epochs completed, as the runner writes it
        norms.write(
            {
                "step": step,
                "epoch": step // 4,
                "layer": name,
                "grad_norm": grad_gain ** (len(PARAMETERS) - i) / (1 + step),
                "weight_norm": 1.0,
                "update_ratio": 0.01,
            }
            for i, name in enumerate(PARAMETERS)
        )
    norms.close()
    moments = record.TableWriter(run_dir / "distributions.csv", record.DISTRIBUTION_COLUMNS)
    histograms = record.TableWriter(run_dir / "histograms.csv", record.HISTOGRAM_COLUMNS)
    for epoch in (0, epochs):
        for depth, layer in enumerate(LAYERS):
            for tensor in ("weight", "activation"):
                std = 0.1 * (depth + 1) * (1 + epoch)
                moments.write(
                    [
                        {
                            "epoch": epoch,
                            "step": 4 * epoch,
                            "layer": layer,
                            "tensor": tensor,
                            "mean": 0.0,
                            "std": std,
                            "min": -3 * std,
                            "max": 3 * std,
                            "zero_fraction": 0.0,
                            "saturated_fraction": None,
                        }
                    ]
                )
                edges = [-3 * std + 6 * std * i / 8 for i in range(9)]
                counts = [1, 4, 10, 20, 20, 10, 4, 1]
                histograms.write(
                    {
                        "epoch": epoch,
                        "step": 4 * epoch,
                        "layer": layer,
                        "tensor": tensor,
                        "bin_low": edges[i],
                        "bin_high": edges[i + 1],
                        "count": counts[i],
                    }
                    for i in range(8)
                )
    moments.close()
    histograms.close()
