"""Overhead of the diagnostics on training time, with the default settings.

    python scripts/bench_diagnostics.py                        # cnn and the 50-block resnet
    python scripts/bench_diagnostics.py --models cnn --pairs 10 --threads 1

For each model, two trainers train the same configuration (``data=synthetic``, batch 128, same
seed: the same weights and batches), one with ``diagnostics.enabled`` and one without. After
two untimed warm-up steps each, they train in alternating blocks of steps (on/off, then off/on,
...; the cnn: 6 pairs of 50-step blocks, so the timed steps hold gradient-norm logs at the
default rate, one in ``grad_every=50``), so that the load of other work on a shared machine falls
on both alike. Data, model, initialization and optimizer are built outside the timed part. The
distribution recordings (at initialization and at an epoch end) are timed apart.

Two figures per model:

- *measured*: the summed block times with diagnostics / without, and the range over pairs. On a
  busy machine the range can be wider than the overhead itself.
- *default run*: the cost of a default CIFAR-10 run (10 epochs of 391 steps; gradient norms every
  50 steps; distributions at initialization and after epochs 1, 5 and 10), from the parts:
  ``(steps * (t_plain + t_added) + 4 * t_record) / (steps * t_plain)``, where ``t_added`` (the
  on-device tracking of every step, plus a fiftieth of a logging step) is timed in isolation,
  hundreds of times over, rather than read off the noisy difference of two loops.

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
DEFAULT_GRAD_EVERY = 50
WARM_UP = 2  # untimed steps per trainer before the blocks
GOAL = 1.05


def make_trainer(model_overrides: list[str], block: int, batch: int, enabled: bool,
                 run_dir: Path) -> Trainer:  # fmt: skip
    """A trainer with data, model and optimizer built; each epoch is one block of steps."""
    cfg = compose_config([
        *model_overrides, "data=synthetic", f"data.num_train={block * batch}",
        "data.num_test=64", f"train.batch_size={batch}", "train.epochs=10",
        "train.progress=false", "train.checkpoint=false",
        f"diagnostics.enabled={str(enabled).lower()}",
    ])  # fmt: skip
    run_dir.mkdir()
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


def train_block(trainer: Trainer, steps: int) -> None:
    """``steps`` more training steps (the same batches each time: the epoch does not advance)."""
    trainer.total_steps = trainer.step + steps
    trainer.train_epoch(None)


def step_overhead(trainer: Trainer, calls: int) -> tuple[float, float]:
    """Seconds the diagnostics add to an ordinary step and to a logging step, timed in
    isolation on the gradients the last training step left."""
    diagnostics = trainer.diagnostics
    loss = torch.tensor(1.0, device=trainer.device)
    grad_every = diagnostics.grad_every

    def one_step(step: int) -> float:
        wall, _ = timed(lambda: (diagnostics.after_backward(step, 0, loss),
                                 diagnostics.after_step(step, 0)))  # fmt: skip
        return wall

    ordinary = [one_step(index * grad_every + 1) for index in range(calls)]
    logging_steps = [one_step((index + 1000) * grad_every) for index in range(max(3, calls // 20))]
    return statistics.median(ordinary), statistics.median(logging_steps)


def bench_model(name: str, overrides: list[str], block: int, pairs: int, batch: int,
                root: Path) -> dict:  # fmt: skip
    """Two trainers, one with diagnostics and one without, trained block by block in
    alternation (on/off, off/on, ...)."""
    trainers = {enabled: make_trainer(overrides, block, batch, enabled,
                                      root / f"{name}-{'on' if enabled else 'off'}")
                for enabled in (True, False)}  # fmt: skip
    with_diagnostics = trainers[True]
    records = [timed(with_diagnostics.diagnostics.on_start)[0]]  # as Trainer.loop does
    for trainer in trainers.values():  # untimed: first calls build caches, for both alike
        train_block(trainer, WARM_UP)
    loops: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for pair in range(pairs):
        for enabled in (True, False) if pair % 2 == 0 else (False, True):
            loops[enabled].append(timed(lambda t=trainers[enabled]: train_block(t, block)))
        logging.info("%s pair %d/%d: with %.2f s, without %.2f s (wall)", name, pair + 1,
                     pairs, loops[True][-1][0], loops[False][-1][0])  # fmt: skip
    records.append(timed(lambda: with_diagnostics.diagnostics.on_epoch_end(
        1, with_diagnostics.step))[0])  # fmt: skip
    ordinary, logging_step = step_overhead(with_diagnostics, calls=200)
    for trainer in trainers.values():
        trainer.close_tables()

    steps = block * pairs
    wall = {enabled: sum(w for w, _ in loops[enabled]) for enabled in loops}
    cpu = {enabled: sum(c for _, c in loops[enabled]) for enabled in loops}
    pair_ratios = [on[0] / off[0] for on, off in zip(loops[True], loops[False], strict=True)]
    t_plain = wall[False] / steps
    t_record = statistics.median(records)
    default_steps = 10 * -(-CIFAR_TRAIN // batch)
    added = ordinary + logging_step / DEFAULT_GRAD_EVERY
    projected = (default_steps * (t_plain + added) + 4 * t_record) / (default_steps * t_plain)
    return {
        "name": name, "steps": steps, "block": block, "pairs": pairs,
        "logged": sum(step % DEFAULT_GRAD_EVERY == 0 for step in range(WARM_UP, WARM_UP + steps)),
        "wall_on": wall[True], "wall_off": wall[False],
        "measured": wall[True] / wall[False], "measured_cpu": cpu[True] / cpu[False],
        "pair_range": (min(pair_ratios), max(pair_ratios)),
        "t_plain": t_plain, "t_step": ordinary, "t_log": logging_step, "t_record": t_record,
        "projected": projected, "default_steps": default_steps,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"],
                        choices=["cnn", "resnet"])  # fmt: skip
    parser.add_argument("--pairs", type=int, default=6, help="alternating pairs of blocks")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cnn-block", type=int, default=50, help="steps per cnn block")
    parser.add_argument(
        "--resnet-block",
        type=int,
        default=3,
        help="steps per resnet block (50 blocks of convolutions: slow on a CPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("initbench").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = {"cnn": (["model=cnn"], args.cnn_block),
                "resnet": (["model=resnet"], args.resnet_block)}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="initbench-bench-diag-") as root:
        for name in args.models:
            overrides, block = settings[name]
            results.append(bench_model(name, overrides, block, args.pairs, args.batch,
                                       Path(root)))  # fmt: skip

    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} ({device}); batch {args.batch}; default diagnostics: "
          f"grad_every={DEFAULT_GRAD_EVERY}, bins=64, activation_batch=256")  # fmt: skip
    for r in results:
        low, high = r["pair_range"]
        print(
            f"{r['name']}: {r['pairs']} pairs of {r['block']}-step blocks; "
            f"{r['wall_on']:.1f} s with diagnostics, {r['wall_off']:.1f} s without"
        )
        print(
            f"  measured ratio {r['measured']:.3f} (pairs {low:.3f}-{high:.3f}; CPU time "
            f"{r['measured_cpu']:.3f}); gradient-norm logs in the timed steps: "
            f"{r['logged']} of {r['steps']}"
        )
        print(
            f"  plain step {r['t_plain'] * 1e3:.1f} ms; diagnostics add "
            f"{r['t_step'] * 1e3:.3f} ms to an ordinary step and {r['t_log'] * 1e3:.1f} ms "
            f"to a logging step; one distribution recording takes {r['t_record']:.2f} s"
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
