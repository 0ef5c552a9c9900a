"""Time ``initbench report`` on a sweep of fake but realistic runs.

    python scripts/bench_report.py                       # 10 initializers x 20 seeds, timed
    python scripts/bench_report.py --inits 6 --seeds 3 --keep /tmp/fake --mixed
                                                         # a small sweep to look at, kept

The runs are written with initbench.record's own writers, as the runner writes them: a
ResNet-like model (3 stages of ``--blocks`` basic blocks, so 6 * blocks + 2 weighted layers and
their batch-norm parameters), one grad_norms.csv row per parameter tensor every 100 steps of
391, weight and activation histograms at epochs 0, 1, the middle and the last. Each
initializer has its own final accuracy, convergence speed and gradient gain per layer
(vanishing below 1, exploding above). ``--mixed`` adds what a real sweep has too: a diverged
run, a run still going, a run whose summary.json is corrupt, and probe runs.

The goal is a report of 200 runs in under 30 seconds; the script prints the time and the ratio.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import yaml

from initbench import record

# name: (final test accuracy, epochs to close 63% of the gap, gradient gain per layer,
#        activation gain per layer)
INITIALIZERS = {
    "kaiming_normal": (0.93, 3.0, 1.00, 1.00),
    "xavier_normal": (0.915, 4.0, 0.985, 0.97),
    "orthogonal": (0.932, 2.8, 1.00, 1.00),
    "normal_0.01": (0.62, 9.0, 0.93, 0.90),
    "normal_0.1": (0.45, 6.0, 1.06, 1.08),
    "lsuv": (0.935, 2.5, 1.00, 1.00),
    "default": (0.92, 3.4, 0.99, 0.985),
    "kaiming_uniform": (0.928, 3.2, 1.00, 0.995),
    "xavier_uniform": (0.912, 4.2, 0.985, 0.97),
    "fixup": (0.925, 3.5, 1.01, 1.005),
    "delta_orthogonal": (0.929, 2.9, 1.00, 1.00),
    "spectral": (0.921, 3.3, 0.995, 0.99),
}
STEPS_PER_EPOCH = 391
GRAD_EVERY = 100
BINS = 64


def layer_names(blocks: int) -> tuple[list[str], list[str]]:
    """(weighted modules, parameter tensors) of a CIFAR ResNet with ``blocks`` per stage."""
    modules, params = ["conv1"], ["conv1.weight", "bn1.weight", "bn1.bias"]
    for stage in (1, 2, 3):
        for block in range(blocks):
            for conv in (1, 2):
                name = f"layer{stage}.{block}.conv{conv}"
                modules.append(name)
                params += [
                    f"{name}.weight",
                    f"layer{stage}.{block}.bn{conv}.weight",
                    f"layer{stage}.{block}.bn{conv}.bias",
                ]
    modules.append("fc")
    params += ["fc.weight", "fc.bias"]
    return modules, params


def config(init: str, seed: int, epochs: int, blocks: int, lr: float) -> dict:
    return {
        "model": {
            "name": "resnet",
            "activation": "relu",
            "blocks": [blocks] * 3,
            "width": 16,
            "norm": "batch",
        },
        "init": {"name": init, "gain": 1.0},
        "optimizer": {
            "name": "sgd",
            "lr": lr,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup_epochs": 0.0,
        },
        "data": {"name": "cifar10", "root": "data", "augment": True, "normalize": True},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "device": "cuda",
            "precision": "auto",
            "log_every": 20,
            "threads": None,
            "progress": False,
        },
        "diagnostics": {"enabled": True, "grad_every": GRAD_EVERY, "bins": BINS},
        "seed": seed,
        "resume": "auto",
    }


def write_run(
    run_dir: Path,
    init: str,
    seed: int,
    *,
    epochs: int,
    blocks: int,
    lr: float = 0.1,
    diverge_at: int | None = None,
    stop_at: int | None = None,
) -> None:
    """One training run. ``diverge_at``: the loss becomes NaN in that epoch; ``stop_at``: the
    run is still going after that many epochs."""
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(zlib.crc32(f"{init}/{seed}".encode()))
    final_acc, tau, grad_gain, act_gain = INITIALIZERS[init]
    tau *= (0.1 / lr) ** 0.5  # a smaller learning rate learns more slowly
    modules, params = layer_names(blocks)
    cfg = config(init, seed, epochs, blocks, lr)
    (run_dir / record.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = {
        "kind": "train",
        "status": "running",
        "started_at": "2025-01-02T10:00:00+00:00",
        "device": "cuda:0 (NVIDIA H100 80GB HBM3)",
        "torch_version": "2.5.1",
        "cuda_version": "12.4",
        "git_revision": "3f2c1ab",
        "seed": seed,
        "model": "resnet",
        "init": init,
        "optimizer": "sgd",
        "lr": lr,
    }
    record.atomic_write_json(run_dir / record.SUMMARY, summary)
    tables = {
        name: record.TableWriter(run_dir / f"{name}.csv", columns)
        for name, columns in record.TABLES.items()
        if name != "probe"
    }

    last = min(epochs, stop_at or epochs, diverge_at or epochs)
    write_distributions(tables, modules, 0, 0, act_gain, rng, trained=0.0)
    seconds, best, best_epoch = 0.0, 0.0, None
    for epoch in range(1, last + 1):
        progress = 1 - math.exp(-epoch / tau)
        diverged = diverge_at == epoch
        epoch_seconds = 11.0 * (1.6 if epoch == 1 else 1.0) * rng.lognormal(0, 0.03)
        seconds += epoch_seconds
        loss = 2.3 * (1 - progress) + (1 - final_acc) * 0.9 * progress + rng.normal(0, 0.01)
        acc = 0.1 + (final_acc - 0.1) * progress + rng.normal(0, 0.006)
        if diverged:
            loss, acc = math.nan, 0.1
        step = epoch * STEPS_PER_EPOCH
        tables["metrics"].write(
            [
                {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": loss,
                    "train_acc": acc + 0.02,
                    "test_loss": loss * 1.1,
                    "test_acc": acc,
                    "lr": lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs)),
                    "epoch_seconds": epoch_seconds,
                    "images_per_second": 50000 / epoch_seconds,
                }
            ]
        )
        if acc > best:
            best, best_epoch = acc, epoch
        tables["steps"].write(
            {
                "step": s,
                "epoch": epoch,
                "train_loss": loss + rng.normal(0, 0.05),
                "lr": lr,
                "seconds": seconds - epoch_seconds * (1 - (s % STEPS_PER_EPOCH) / STEPS_PER_EPOCH),
            }
            for s in range(step - STEPS_PER_EPOCH + 20, step + 1, 20)
        )
        first = (epoch - 1) * STEPS_PER_EPOCH
        for record_step in range(first + (-first % GRAD_EVERY), step, GRAD_EVERY):
            blowup = math.inf if diverged and record_step > step - 2 * GRAD_EVERY else 1.0
            # grad_norms' epoch counts the epochs completed, as the runner writes it
            write_grad_norms(
                tables,
                params,
                record_step,
                epoch - 1,
                grad_gain,
                record_step / (epochs * STEPS_PER_EPOCH),
                rng,
                blowup,
            )
        if epoch in (1, max(1, (epochs + 1) // 2), epochs) and not diverged:
            write_distributions(tables, modules, epoch, step, act_gain, rng, epoch / epochs)
    for table in tables.values():
        table.close()

    if stop_at is not None and stop_at < epochs:
        return  # still running: summary.json stays "running"
    status = "diverged" if diverge_at else "completed"
    summary.update(
        status=status,
        error=None,
        finished_at="2025-01-02T11:00:00+00:00",
        total_seconds=round(seconds + 4.0, 3),
        epochs_completed=last,
        steps=last * STEPS_PER_EPOCH,
        final_test_acc=acc,
        best_test_acc=best,
        best_epoch=best_epoch,
        final_train_loss=loss,
        images_per_second=50000 / 11.0,
        divergence={
            "step": last * STEPS_PER_EPOCH - 37,
            "epoch": last - 1,
            "where": "gradient",
            "layer": params[1],
        }
        if diverge_at
        else None,
    )
    record.atomic_write_json(run_dir / record.SUMMARY, summary)


def write_grad_norms(tables, params, step, epoch, gain, fraction, rng, blowup) -> None:
    depth = len(params)
    # gradients shrink (gain < 1) or grow (gain > 1) from the output back to the input;
    # training pulls the gain toward 1
    effective = gain ** (1 - 0.6 * fraction)
    scale = 0.5 * (1 - 0.5 * fraction)
    rows = []
    for index, name in enumerate(params):
        from_output = (depth - 1 - index) / 3
        grad = scale * effective**from_output * rng.lognormal(0, 0.15) * blowup
        if name.endswith("bias"):
            grad *= 0.3
        weight = 3.0 + rng.normal(0, 0.1)
        rows.append(
            {
                "step": step,
                "epoch": epoch,
                "layer": name,
                "grad_norm": grad,
                "weight_norm": weight,
                "update_ratio": 0.1 * grad / weight,
            }
        )
    tables["grad_norms"].write(rows)


def write_distributions(tables, modules, epoch, step, act_gain, rng, trained) -> None:
    moments, histograms = [], []
    scale = 0.12 * act_gain**8  # weights that shrink activations are small ones
    for depth, layer in enumerate(modules):
        weight_std = scale * (1 + 0.4 * trained) * (1.3 if depth == 0 else 1.0)
        act_std = act_gain ** (depth * (1 - 0.7 * trained)) * (1 + 0.2 * trained)
        for tensor, std in (("weight", weight_std), ("activation", act_std)):
            if tensor == "weight":
                values = rng.normal(0, std, 2000)
                values[: int(200 * trained)] *= 3  # training grows heavy tails
            else:
                values = rng.normal(0.3 * std, std, 2000)
            low, high = values.min(), values.max()
            counts, edges = np.histogram(values, bins=BINS, range=(low, high))
            moments.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": layer,
                    "tensor": tensor,
                    "mean": values.mean(),
                    "std": values.std(),
                    "min": low,
                    "max": high,
                    "zero_fraction": 0.0,
                    "saturated_fraction": math.nan,
                }
            )
            histograms.extend(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": layer,
                    "tensor": tensor,
                    "bin_low": edges[i],
                    "bin_high": edges[i + 1],
                    "count": int(c),
                }
                for i, c in enumerate(counts)
            )
    tables["distributions"].write(moments)
    tables["histograms"].write(histograms)


def write_probe(run_dir: Path, init: str, seed: int, blocks: int) -> None:
    run_dir.mkdir(parents=True)
    _, _, grad_gain, act_gain = INITIALIZERS[init]
    modules, _ = layer_names(blocks)
    cfg = config(init, seed, 1, blocks, 0.1)
    (run_dir / record.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    rng = np.random.default_rng(seed)
    writer = record.TableWriter(run_dir / "probe.csv", record.PROBE_COLUMNS)
    depth = len(modules)
    writer.write(
        {
            "layer": name,
            "kind": "linear" if name == "fc" else "conv2d",
            "depth": index,
            "fan_in": 144,
            "fan_out": 16,
            "weight_mean": 0.0,
            "weight_std": 0.1,
            "activation_mean": 0.0,
            "activation_std": act_gain**index * rng.lognormal(0, 0.05),
            "grad_std": 1e-3 * grad_gain ** (depth - 1 - index) * rng.lognormal(0, 0.05),
        }
        for index, name in enumerate(modules)
    )
    writer.close()
    record.atomic_write_json(
        run_dir / record.SUMMARY,
        {
            "kind": "probe",
            "status": "completed",
            "seed": seed,
            "init": init,
            "model": "resnet",
            "device": "cpu",
            "torch_version": "2.5.1",
        },
    )


def generate(root: Path, *, inits: int, seeds: int, epochs: int, blocks: int, mixed: bool,
             lrs: list[float]) -> None:  # fmt: skip
    names = list(INITIALIZERS)[:inits]
    sweep = root / "multirun" / "2025-01-02" / "10-00-00"
    for lr in lrs:
        for name in names:
            for seed in range(seeds):
                diverge = 3 if mixed and name == "normal_0.1" and seed == 1 else None
                stop = epochs // 2 if mixed and name == names[0] and seed == seeds - 1 else None
                write_run(sweep / f"init={name},optimizer.lr={lr},seed={seed}", name, seed,
                          epochs=epochs, blocks=blocks, lr=lr, diverge_at=diverge,
                          stop_at=stop)  # fmt: skip
    if mixed:
        corrupt = sweep / f"init={names[1]},seed={seeds}"
        write_run(corrupt, names[1], seeds, epochs=epochs, blocks=blocks, lr=lrs[0])
        (corrupt / record.SUMMARY).write_text('{"status": "compl')
        for name in names:
            for seed in range(2):
                write_probe(root / "probes" / f"init={name},seed={seed}", name, seed, blocks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inits", type=int, default=10, help="initializers (at most 12)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=9, help="basic blocks per stage")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1], help="a setting each")
    parser.add_argument("--mixed", action="store_true", help="add diverged/running/corrupt runs")
    parser.add_argument("--keep", type=Path, help="write the runs and the report here, keep them")
    parser.add_argument("--reuse", action="store_true", help="time a report of --keep's runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.reuse and args.keep is None:
        parser.error("--reuse times a report of existing runs: give their folder with --keep")
    if not 1 <= args.inits <= len(INITIALIZERS):
        parser.error(f"--inits={args.inits} must be between 1 and {len(INITIALIZERS)}")

    from initbench.report import make_report

    root = args.keep or Path(tempfile.mkdtemp(prefix="initbench-bench-"))
    try:
        if not args.reuse:
            if root.exists() and any(root.iterdir()):
                parser.error(f"--keep {root} is not empty; give a new folder or add --reuse")
            started = time.perf_counter()
            generate(
                root,
                inits=args.inits,
                seeds=args.seeds,
                epochs=args.epochs,
                blocks=args.blocks,
                mixed=args.mixed,
                lrs=args.lrs,
            )
            logging.info("wrote runs in %.1f s under %s", time.perf_counter() - started, root)
        started, cpu = time.perf_counter(), time.process_time()
        result = make_report([root], root / "report")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    goal = 30.0
    # CPU seconds too: on a shared machine the wall clock also counts other people's work
    print(
        f"report of {result['runs']} runs: {seconds:.2f} s wall, {cpu:.2f} s CPU "
        f"({seconds / goal:.2f} of the {goal:.0f} s goal)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
