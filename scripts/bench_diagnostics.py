"""Overhead of the diagnostics on training time, with the default settings.

    python scripts/bench_diagnostics.py                        # cnn and the 50-block resnet
    python scripts/bench_diagnostics.py --models cnn --repeats 5 --cnn-steps 100

For each model the same training (``data=synthetic``, batch 128, same seed, so the same weights
and batches) runs with ``diagnostics.enabled`` true and false, alternately (on/off, then off/on,
...), so that the load of other work on a shared machine falls on both arms alike. Data, model,
initialization and optimizer are built outside the timed part; the timed part is the trainer's
epoch loop of a fixed number of steps (the cnn: 100, so it logs gradient norms at steps 0 and 50,
the default rate of one in ``grad_every=50``). Each distribution recording (the one at
initialization, and one per chosen epoch) is timed apart, in the same processes.

Two figures per model:

- *measured*: loop time with diagnostics / without, per pair of runs, median and range. On a
  busy machine the range can be wider than the overhead itself.
- *default run*: the cost of a default CIFAR-10 run (10 epochs of 391 steps; gradient norms every
  50 steps; distributions at initialization and after epochs 1, 5 and 10), from the parts:
  ``(steps * (t_plain + t_step_overhead) + 4 * t_record) / (steps * t_plain)``, where the
  per-step overhead (the on-device finiteness check on every step, the gradient-norm rows on
  one step in 50) is timed in isolation, many times over, rather than read off the noisy
  difference of two loops.

The last line holds the default-run ratios, ``diagnostics/plain``; the goal is at most 1.05.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from initbench.app import compose_config
from initbench.train import Trainer

CIFAR_TRAIN = 50_000
GOAL = 1.05


def make_trainer(model_overrides: list[str], steps: int, batch: int, enabled: bool,
                 run_dir: Path) -> Trainer:  # fmt: skip
    """A trainer with data, model and optimizer built, ready for one epoch of ``steps``."""
    cfg = compose_config([
        *model_overrides, "data=synthetic", f"data.num_train={steps * batch}",
        "data.num_test=64", f"train.batch_size={batch}", "train.epochs=10",
        "train.progress=false", "train.checkpoint=false", "data.augment=true",
        f"diagnostics.enabled={str(enabled).lower()}",
    ])  # fmt: skip
    trainer = Trainer(cfg, run_dir)
    trainer.stop = threading.Event()
    trainer.setup()
    trainer.load_data()
    trainer.build_model()
    trainer.build_optimizer()
    return trainer


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def step_overhead(trainer: Trainer, calls: int) -> tuple[float, float]:
    """Seconds the diagnostics add to an ordinary step and to a logging step, timed in
    isolation on the gradients the last training step left."""
    diagnostics = trainer.diagnostics
    loss = torch.tensor(1.0, device=trainer.device)
    grad_every = diagnostics.cfg.grad_every
    ordinary = []
    for index in range(calls):
        step = index * grad_every + 1  # never a logging step
        wall, _ = timed(lambda step=step: (diagnostics.after_backward(step, 0, loss),
                                           diagnostics.after_step(step, 0)))  # fmt: skip
        ordinary.append(wall)
    logging_steps = []
    for index in range(max(3, calls // 20)):
        step = (index + 1000) * grad_every
        wall, _ = timed(lambda step=step: (diagnostics.after_backward(step, 0, loss),
                                           diagnostics.after_step(step, 0)))  # fmt: skip
        logging_steps.append(wall)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return statistics.median(ordinary), statistics.median(logging_steps)


def bench_model(name: str, overrides: list[str], steps: int, batch: int, repeats: int,
                root: Path) -> dict:  # fmt: skip
    loops = {True: [], False: []}
    records, per_step, per_log, plain_steps = [], [], [], []
    for repeat in range(repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for enabled in order:
            run_dir = root / f"{name}-{repeat}-{'on' if enabled else 'off'}"
            run_dir.mkdir()
            trainer = make_trainer(overrides, steps, batch, enabled, run_dir)
            if enabled:  # the recording at initialization, as Trainer.loop does it
                records.append(timed(trainer.diagnostics.on_start)[0])
            loop = timed(lambda trainer=trainer: trainer.train_epoch(None))
            loops[enabled].append(loop)
            if enabled:
                records.append(timed(lambda t=trainer: t.diagnostics.on_epoch_end(1, steps))[0])
                ordinary, logging_step = step_overhead(trainer, calls=200)
                per_step.append(ordinary)
                per_log.append(logging_step)
            else:
                plain_steps.append(loop[0] / steps)
            trainer.close_tables()
            logging.info("%s repeat %d diagnostics=%s: loop %.2f s wall, %.2f s CPU", name,
                         repeat, "on" if enabled else "off", *loop)  # fmt: skip
    pairs = [on[0] / off[0] for on, off in zip(loops[True], loops[False], strict=True)]
    cpu_pairs = [on[1] / off[1] for on, off in zip(loops[True], loops[False], strict=True)]
    t_plain = statistics.median(plain_steps)
    t_record = statistics.median(records)
    overhead = statistics.median(per_step) + statistics.median(per_log) / 50
    default_steps = 10 * -(-CIFAR_TRAIN // batch)
    projected = (default_steps * (t_plain + overhead) + 4 * t_record) / (default_steps * t_plain)
    return {
        "name": name, "steps": steps, "batch": batch, "repeats": repeats,
        "loop_on": [round(wall, 2) for wall, _ in loops[True]],
        "loop_off": [round(wall, 2) for wall, _ in loops[False]],
        "measured": statistics.median(pairs), "measured_range": (min(pairs), max(pairs)),
        "measured_cpu": statistics.median(cpu_pairs),
        "t_plain": t_plain, "t_step": statistics.median(per_step),
        "t_log": statistics.median(per_log), "t_record": t_record,
        "projected": projected, "default_steps": default_steps,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"],
                        choices=["cnn", "resnet"])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cnn-steps", type=int, default=100)
    parser.add_argument(
        "--resnet-steps",
        type=int,
        default=4,
        help="the 50-block resnet is slow on a CPU; its loop logs at step 0",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("initbench").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = {"cnn": (["model=cnn"], args.cnn_steps),
                "resnet": (["model=resnet"], args.resnet_steps)}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="initbench-bench-diag-") as root:
        for name in args.models:
            overrides, steps = settings[name]
            results.append(bench_model(name, overrides, steps, args.batch, args.repeats,
                                       Path(root)))  # fmt: skip

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__} on {device}; batch {args.batch}; defaults: grad_every=50, "
          "bins=64, activation_batch=256")  # fmt: skip
    for r in results:
        low, high = r["measured_range"]
        print(
            f"{r['name']}: {r['steps']} steps x {r['repeats']} pairs; loop seconds with "
            f"diagnostics {r['loop_on']}, without {r['loop_off']}"
        )
        print(
            f"  measured loop ratio {r['measured']:.3f} (range {low:.3f}-{high:.3f}; CPU-time "
            f"ratio {r['measured_cpu']:.3f}); the loop includes a gradient-norm log at step 0"
        )
        print(
            f"  plain step {r['t_plain'] * 1e3:.1f} ms; diagnostics add "
            f"{r['t_step'] * 1e3:.3f} ms to an ordinary step, {r['t_log'] * 1e3:.1f} ms to a "
            f"logging step; one distribution recording {r['t_record']:.2f} s"
        )
        print(
            f"  default run ({r['default_steps']} steps, 4 recordings): "
            f"{r['projected']:.4f} x the plain run"
        )
    verdict = "within" if all(r["projected"] <= GOAL for r in results) else "OVER"
    print("diagnostics/plain (default run): "
          + " ".join(f"{r['name']}={r['projected']:.4f}" for r in results)
          + " | measured loops: "
          + " ".join(f"{r['name']}={r['measured']:.3f}" for r in results)
          + f" | {verdict} the {GOAL:.2f} goal")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
