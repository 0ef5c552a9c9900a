"""Overhead of the diagnostics on training time, with the default settings.

    python scripts/bench_diagnostics.py                        # cnn and the 50-block resnet
    python scripts/bench_diagnostics.py --models cnn --pairs 10 --threads 1

For each model, two trainers train the same configuration (``data=synthetic``, batch 128, same
seed: the same weights and batches), one with ``diagnostics.enabled`` and one without. After two
untimed warm-up steps each, they train in alternating blocks of steps (on/off, then off/on, ...:
the cnn 60 pairs of 5-step blocks, the resnet 12 pairs of single steps), so that the load of
other work on a shared machine falls on both alike. Data, model, initialization and optimizer
are built outside the timed part; the distribution recordings (at initialization and at an
epoch end) are timed apart.

Two figures per model:

- *measured*: block time with diagnostics / without, the median over pairs (robust to bursts of
  other work), with its quartiles, the same in CPU time, and the ratio of the summed times.
- *default run*: the cost of a default CIFAR-10 run (10 epochs of 391 steps; gradient norms every
  50 steps; distributions at initialization and after epochs 1, 5 and 10), from its parts:
  ``(steps * (t_plain + t_added) + 4 * t_record) / (steps * t_plain)``. ``t_plain`` is the
  median plain step; ``t_added`` is what the diagnostics' calls took inside the timed training
  loop (every call is timed there), an ordinary step's plus a fiftieth of the extra of a logging
  step; ``t_record`` is one distribution recording. What the calls leave behind (colder caches
  for the next kernels) is not in ``t_added``; the measured ratio includes it, with the noise.

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


def time_calls(diagnostics, spent: dict[str, list[float]]) -> None:
    """Time every call of the diagnostics inside the training loop, by kind of step: this is
    what the loop pays for them, with the caches as training leaves them."""
    after_backward, after_step = diagnostics.after_backward, diagnostics.after_step
    seconds = {"step": None, "time": 0.0}

    def timed_backward(step, epoch, loss=None):
        started = time.perf_counter()
        after_backward(step, epoch, loss)
        seconds.update(step=step, time=time.perf_counter() - started)

    def timed_step(step, epoch):
        started = time.perf_counter()
        after_step(step, epoch)
        total = seconds["time"] + time.perf_counter() - started
        spent["logging" if diagnostics.logs(step) else "ordinary"].append(total)

    diagnostics.after_backward, diagnostics.after_step = timed_backward, timed_step


def isolated_logging_step(trainer: Trainer, calls: int = 5) -> float:
    """Seconds of a logging step's diagnostics, on the gradients the last step left."""
    diagnostics = trainer.diagnostics
    loss = torch.tensor(1.0, device=trainer.device)
    seconds = []
    for index in range(calls):
        step = (index + 1000) * diagnostics.grad_every
        seconds.append(timed(lambda step=step: (diagnostics.after_backward(step, 0, loss),
                                                diagnostics.after_step(step, 0)))[0])  # fmt: skip
    return statistics.median(seconds)


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
    spent: dict[str, list[float]] = {"ordinary": [], "logging": []}
    time_calls(with_diagnostics.diagnostics, spent)
    blocks: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for pair in range(pairs):
        for enabled in (True, False) if pair % 2 == 0 else (False, True):
            blocks[enabled].append(timed(lambda t=trainers[enabled]: train_block(t, block)))
        if (pair + 1) % max(1, pairs // 6) == 0:
            logging.info("%s: %d/%d pairs of blocks", name, pair + 1, pairs)
    records.append(timed(lambda: with_diagnostics.diagnostics.on_epoch_end(
        1, with_diagnostics.step))[0])  # fmt: skip
    steps = block * pairs
    on, off = blocks[True], blocks[False]
    wall_ratios = sorted(a[0] / b[0] for a, b in zip(on, off, strict=True))
    cpu_ratios = sorted(a[1] / b[1] for a, b in zip(on, off, strict=True))
    t_plain = statistics.median(wall for wall, _ in off) / block
    t_ordinary = statistics.mean(spent["ordinary"])
    logged = len(spent["logging"])
    # a loop too short to reach a logging step: time some apart
    t_logging = statistics.mean(spent["logging"]) if spent["logging"] else (
        isolated_logging_step(with_diagnostics))  # fmt: skip
    for trainer in trainers.values():
        trainer.close_tables()
    t_record = statistics.median(records)
    default_steps = 10 * -(-CIFAR_TRAIN // batch)
    added = t_ordinary + (t_logging - t_ordinary) / DEFAULT_GRAD_EVERY
    projected = (default_steps * (t_plain + added) + 4 * t_record) / (default_steps * t_plain)
    quartile = max(1, pairs // 4)
    return {
        "name": name, "steps": steps, "block": block, "pairs": pairs,
        "logged": logged,
        "wall_on": sum(wall for wall, _ in on), "wall_off": sum(wall for wall, _ in off),
        "measured": statistics.median(wall_ratios), "measured_cpu": statistics.median(cpu_ratios),
        "measured_sum": sum(w for w, _ in on) / sum(w for w, _ in off),
        "quartiles": (wall_ratios[quartile - 1], wall_ratios[-quartile]),
        "t_plain": t_plain, "t_ordinary": t_ordinary, "t_logging": t_logging,
        "t_record": t_record, "projected": projected, "default_steps": default_steps,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"],
                        choices=["cnn", "resnet"])  # fmt: skip
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="alternating pairs of blocks (default: cnn 60, resnet 12)",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cnn-block", type=int, default=5, help="steps per cnn block")
    parser.add_argument(
        "--resnet-block",
        type=int,
        default=1,
        help="steps per resnet block (50 blocks of convolutions: slow on a CPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("initbench").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = {"cnn": (["model=cnn"], args.cnn_block, args.pairs or 60),
                "resnet": (["model=resnet"], args.resnet_block, args.pairs or 12)}  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="initbench-bench-diag-") as root:
        for name in args.models:
            overrides, block, pairs = settings[name]
            results.append(bench_model(name, overrides, block, pairs, args.batch, Path(root)))

    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} ({device}); batch {args.batch}; default diagnostics: "
          f"grad_every={DEFAULT_GRAD_EVERY}, bins=64, activation_batch=256")  # fmt: skip
    for r in results:
        low, high = r["quartiles"]
        print(
            f"{r['name']}: {r['pairs']} pairs of {r['block']}-step blocks; "
            f"{r['wall_on']:.1f} s with diagnostics, {r['wall_off']:.1f} s without"
        )
        print(
            f"  measured ratio, median over pairs: {r['measured']:.3f} (quartiles "
            f"{low:.3f}-{high:.3f}; CPU time {r['measured_cpu']:.3f}; summed wall "
            f"{r['measured_sum']:.3f}); logging steps timed: {r['logged']} of {r['steps']}"
        )
        print(
            f"  plain step {r['t_plain'] * 1e3:.1f} ms; in the loop the diagnostics take "
            f"{r['t_ordinary'] * 1e3:.2f} ms of an ordinary step and "
            f"{r['t_logging'] * 1e3:.1f} ms of a logging step; one distribution recording "
            f"takes {r['t_record']:.2f} s"
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
