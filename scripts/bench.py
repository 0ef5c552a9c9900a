"""Training throughput on CIFAR-10: the bare step, initbench's runner, and the classic loop.

    python scripts/bench.py --model cnn                  # 2-7 minutes on 2 shared CPU cores
    python scripts/bench.py --model cnn --threads 1      # steadier when other processes run
    python scripts/bench.py --model resnet --memory-steps 0
    python scripts/bench.py --model cnn --device cuda    # scripts/gpu_check.sh runs this

One model object (one architecture, initialization, optimizer, batch size, precision, memory
format and thread count), trained three ways in turn and timed over the same number of steps:

    floor     forward, backward and optimizer step on one ready batch (normalized, already on
              the device, no augmentation): the most any data pipeline can reach;
    runner    initbench's own ``Trainer.train_epoch``, as ``initbench run`` runs it: batches
              sliced from the uint8 dataset on the device, cropped, flipped and normalized
              there, the learning-rate schedule, steps.csv every ``train.log_every`` steps, the
              progress bar (off, as in any run whose output is not a terminal), and the
              diagnostics at their defaults; then once more with the diagnostics switched off;
    classic   the textbook loop: a CIFAR-10 Dataset in torchvision's layout over the same uint8
              images, per-image PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
              ToTensor, Normalize), a DataLoader with worker processes, ``loss.item()`` on every
              step. Only the data path differs: precision and memory format are the runner's.
              Its workers are started once and kept (``persistent_workers``): each start forks
              this process, after which every page that any method writes first takes a
              copy-on-write fault, a cost that would otherwise land on whichever method ran
              next.

The machine may be shared, so the methods take turns: in every round each runs one chunk of
``--steps`` steps, in an order that rotates from round to round. Each ratio is taken within a
round, between chunks that saw the same background load, and the median over the rounds is
reported, with a distribution-free 95% confidence interval (order statistics of the rounds): on
a shared machine a median of 25 rounds still moves by a few percent from one run to the next.
A chunk of the classic loop takes ``--classic-warmup`` untimed steps first, so that
it does not profit from batches its workers prepared while another method was being timed (they
prepare ``2 x num_workers`` ahead, then wait). Chunks of the runner are whole calls of
``train_epoch`` (a fresh permutation each, as an epoch would start).

All methods run in this one process, after ``Trainer.setup``; so all of them get its host
settings (threads, and on Linux with glibc, freed memory kept for reuse: see
``initbench.train.keep_freed_host_memory``). Since the methods train one and the same model,
no method pays for bringing another model's weights back into the caches.

Memory: the peak of each method (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the resident
set of this process, whose high-water mark is reset before each chunk), and the peak resident
set of a real ``initbench run model=cnn`` on the same data (``--memory-steps`` steps, then the
evaluation and the epoch-end diagnostics), read from the kernel's accounting of that child.

The last line holds the ratios ``runner/floor`` and ``runner/classic``. On a CPU that other
processes share, two threads of one parallel region wait for each other whenever one of them
is descheduled, and step times jump many-fold from one second to the next; the table's
``cpu/wall`` column and the load averages show how much of the machine the bench had, and a
warning says when the figures are not to be trusted. One thread (``--threads 1``) is far
steadier there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(
    os.environ.get(
        "INITBENCH_CIFAR_ARCHIVE", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    )
)
# Steps per chunk and rounds, by device and model. Chunks close in time see the same background
# load, so they are short; but each chunk of the runner is a call of train_epoch and pays an
# epoch's start (a fresh permutation of 50,000 indices: about 8 ms on this CPU, once per 782
# steps in a real run), so they are long enough for that to stay under 0.5% of a chunk. The
# runner's periodic work (a steps.csv row every 20 steps, gradient norms every 50) falls in
# some chunks more than others; the mean of the paired ratios is printed beside their median.
CHUNK = {
    ("cpu", "cnn"): (40, 25),
    ("cpu", "resnet"): (3, 7),
    ("cuda", "cnn"): (400, 7),
    ("cuda", "resnet"): (100, 7),
}
METHODS = ("floor", "runner", "runner, diagnostics off", "classic")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cnn", help="a model config: cnn, resnet, ...")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of this process (default: torch's, one per core)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per chunk")
    parser.add_argument("--rounds", type=int, default=None, help="chunks per method")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps of every method before the first round "
                             "(default: 3 on the CPU, 30 on CUDA, where compilation and "
                             "cuDNN autotuning happen then)")  # fmt: skip
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="data.root of a CIFAR-10 copy, or 'synthetic' (50,000 generated "
                             "images, for a machine without one)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (classic)")
    parser.add_argument(
        "--classic-warmup",
        type=int,
        default=4,
        help="untimed steps at the start of each classic chunk",
    )
    parser.add_argument(
        "--transforms",
        choices=("v1", "v2"),
        default="v1",
        help="torchvision.transforms (v1) or transforms.v2 for the classic loop",
    )
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=50,
        help="steps of the real CNN run whose peak RSS is measured (0: skip)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every method, e.g. train.compile=true",
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------- device helpers


def synchronize(device: torch.device) -> None:
    # GPU kernels run asynchronously: without this, a timer measures the launches only
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        # Linux: "5" resets VmHWM, the resident high-water mark, to the current resident size
        Path("/proc/self/clear_refs").write_text("5")


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if found:
            return int(found.group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def autocast(trainer):
    return torch.autocast(trainer.device.type, dtype=trainer.dtype,
                          enabled=trainer.dtype != torch.float32)  # fmt: skip


# ----------------------------------------------------------------------------- the three methods


def make_trainer(overrides: list[str], run_dir: Path):
    """A Trainer ready for its loop: the stages ``Trainer.run`` performs before ``loop``."""
    from initbench.app import compose_config
    from initbench.config import validate
    from initbench.train import Trainer

    cfg = compose_config(overrides)
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir)
    trainer.stop = threading.Event()  # run() installs the signal flag; no signals here
    trainer.setup()
    trainer.load_data()
    trainer.build_model()
    trainer.build_optimizer()
    return trainer


class Floor:
    """Forward, backward, step on one normalized batch that never changes."""

    def __init__(self, trainer, batch_size: int):
        from initbench.data import normalize

        self.trainer = trainer
        images = trainer.data.train_images[:batch_size]
        self.inputs = trainer.to_memory_format(normalize(images, trainer.mean, trainer.std))
        self.labels = trainer.data.train_labels[:batch_size]

    def start(self) -> None:
        pass

    def run(self, steps: int) -> None:
        trainer, optimizer, scaler = self.trainer, self.trainer.optimizer, self.trainer.scaler
        for _ in range(steps):
            with autocast(trainer):
                loss = F.cross_entropy(trainer.forward(self.inputs).float(), self.labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():  # fp16 only; the runner pays for the scaler too
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

    def stop(self) -> None:
        pass


class Runner:
    """initbench's training loop; each chunk is one call of ``Trainer.train_epoch``, with the
    trainer's diagnostics on (as configured) or off."""

    def __init__(self, trainer, diagnostics: bool = True):
        self.trainer = trainer
        self.diagnostics = diagnostics and trainer.diagnostics.enabled
        # the progress bar of a run whose output is not a terminal, as here: none (its cost on
        # a terminal is a fraction of a microsecond per step)
        with contextlib.redirect_stderr(io.StringIO()):
            self.progress = trainer.progress_bar()

    def start(self) -> None:
        pass

    def run(self, steps: int) -> None:
        trainer = self.trainer
        trainer.total_steps = trainer.step + steps  # train_epoch stops at the step budget
        configured, trainer.diagnostics.enabled = trainer.diagnostics.enabled, self.diagnostics
        try:
            if trainer.train_epoch(self.progress) is None:
                raise RuntimeError(
                    f"the runner stopped early (divergence?); see {trainer.run_dir}"
                )
        finally:
            trainer.diagnostics.enabled = configured

    def stop(self) -> None:
        pass


class ClassicCIFAR10(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's layout and ``__getitem__``: one (H, W, C) uint8 array,
    and a PIL image made per item for the per-image transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def classic_transform(version: str, mean: list[float], std: list[float]):
    if version == "v2":
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                           v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(mean, std)])  # fmt: skip
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(32, padding=4),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])  # fmt: skip


class Classic:
    """DataLoader with worker processes, per-image transforms, a host read every step."""

    def __init__(self, trainer, batch_size: int, workers: int, warmup: int, version: str):
        self.trainer = trainer
        self.warmup = warmup
        dataset = ClassicCIFAR10(trainer.data.train_images, trainer.data.train_labels,
                                 classic_transform(version, trainer.mean.tolist(),
                                                   trainer.std.tolist()))  # fmt: skip
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
            pin_memory=trainer.device.type == "cuda", drop_last=True,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(trainer.cfg.seed),
        )  # fmt: skip
        self.batches = None
        self.running_loss = 0.0

    def start(self) -> None:
        if self.batches is None:
            self.batches = iter(self.loader)  # starts the workers, once
        self.run(self.warmup)

    def run(self, steps: int) -> None:
        trainer, optimizer, device = self.trainer, self.trainer.optimizer, self.trainer.device
        for _ in range(steps):
            try:
                images, labels = next(self.batches)
            except StopIteration:  # an epoch ended: the classic loop starts the next one
                self.batches = iter(self.loader)
                images, labels = next(self.batches)
            inputs = trainer.to_memory_format(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            with autocast(trainer):
                loss = F.cross_entropy(trainer.forward(inputs).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.running_loss += loss.item()  # the per-step host read of the textbook loop

    def stop(self) -> None:
        pass

    def close(self) -> None:
        # the loader holds its persistent iterator: dropping both shuts the workers down
        self.batches = self.loader = None


def timed(method, steps: int, device: torch.device) -> tuple[float, float, float]:
    """Wall seconds for ``steps`` steps of ``method``, the CPU seconds of this process's threads
    meanwhile (DataLoader workers are other processes), and the peak memory in MiB."""
    method.start()
    synchronize(device)
    reset_peak(device)
    cpu_started, started = time.process_time(), time.perf_counter()
    method.run(steps)
    synchronize(device)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    peak = peak_mib(device)
    method.stop()
    return seconds, cpu_seconds, peak


# ----------------------------------------------------------------------------- a real run's memory


def real_run_peak_rss(data_overrides: list[str], steps: int, threads: int, device: str,
                      scratch: Path) -> tuple[float, int]:  # fmt: skip
    """Peak resident set (MiB) of ``initbench run model=cnn`` for ``steps`` steps on the data,
    and the batch size that run used (the default of its config)."""
    log_path = scratch / "memory-run.log"
    command = [sys.executable, "-m", "initbench.cli", "run", "model=cnn",
               f"train.max_steps={steps}", "train.progress=false", f"train.threads={threads}",
               f"train.device={device}", f"hydra.run.dir={scratch / 'memory-run'}",
               "resume=force", *data_overrides]  # fmt: skip
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        # wait4 reports this child's own resource use, ru_maxrss among it (KiB on Linux)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError("the memory run failed:\n  " + " ".join(command) + "\n" +
                           "\n".join(tail))  # fmt: skip
    from omegaconf import OmegaConf

    used = OmegaConf.load(scratch / "memory-run" / "config.yaml")
    return usage.ru_maxrss / 1024, int(used.train.batch_size)


# ----------------------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    from initbench.train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = resolve_device(args.device)
    default_steps, default_rounds = CHUNK.get((device.type, args.model), (20, 5))
    steps = args.steps or default_steps
    rounds = args.rounds or default_rounds
    warmup = args.warmup if args.warmup is not None else (30 if device.type == "cuda" else 3)
    if args.data == "synthetic":
        data = ["data=synthetic", "data.num_train=50000", "data.num_test=10000"]
    else:
        data = [f"data.root={Path(args.data).resolve()}", "data.download=false"]
    common = [f"model={args.model}", f"train.batch_size={args.batch_size}",
              f"train.device={device}", f"train.threads={threads}", "train.checkpoint=false",
              *data, *args.override]  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="initbench-bench-") as scratch_name:
        scratch = Path(scratch_name)
        memory = None
        if args.memory_steps:
            memory, memory_batch = real_run_peak_rss(
                data + args.override, args.memory_steps, threads, str(device), scratch
            )

        runner = make_trainer(common, scratch / "runner")
        methods = {
            # all four train the one model of the runner
            "floor": Floor(runner, args.batch_size),
            "runner": Runner(runner),
            "runner, diagnostics off": Runner(runner, diagnostics=False),
            "classic": Classic(runner, args.batch_size, args.workers, args.classic_warmup,
                               args.transforms),
        }  # fmt: skip
        print_header(args, runner, device, threads, steps, rounds, warmup)
        if memory is not None:
            print(f"memory: initbench run model=cnn, {args.memory_steps} steps of batch "
                  f"{memory_batch} + evaluation on {runner.summary['data_source']}"
                  f": peak RSS {memory:.0f} MiB ({memory / 1024:.2f} GiB)")  # fmt: skip
        sys.stdout.flush()

        for name in METHODS:  # compilation, autotuning, caches, first allocations
            timed(methods[name], warmup, device)
        seconds: dict[str, list[float]] = {name: [] for name in METHODS}
        cpu: dict[str, list[float]] = {name: [] for name in METHODS}
        peaks: dict[str, float] = dict.fromkeys(METHODS, 0.0)
        for round_index in range(rounds):
            shift = round_index % len(METHODS)
            for name in METHODS[shift:] + METHODS[:shift]:
                took, cpu_took, peak = timed(methods[name], steps, device)
                seconds[name].append(took)
                cpu[name].append(cpu_took)
                peaks[name] = max(peaks[name], peak)
        methods["classic"].close()
        runner.close_tables()

    print(f"load average at the end (1, 5, 15 min): {load_average()}")
    report(seconds, cpu, peaks, steps * args.batch_size, steps, device)
    return 0


def report(seconds, cpu, peaks, images: int, steps: int, device: torch.device) -> None:
    """The table per method, the paired ratios per round, and the last line."""
    threads = torch.get_num_threads()
    memory = "peak MiB alloc" if device.type == "cuda" else "peak MiB RSS"
    print(f"{'method':<24} {'images/s':>9} {'min-max over rounds':>20} {'ms/step':>8} "
          f"{'cpu/wall':>8} {memory:>15}")  # fmt: skip
    for name in METHODS:
        rates = [images / s for s in seconds[name]]
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        share = statistics.median(c / w for c, w in zip(cpu[name], seconds[name], strict=True))
        print(f"{name:<24} {statistics.median(rates):>9.1f} {spread:>20} "
              f"{1000 * statistics.median(seconds[name]) / steps:>8.2f} {share:>8.2f} "
              f"{peaks[name]:>15.0f}")  # fmt: skip
    print(
        "(images/s and ms/step: medians over rounds; cpu/wall: CPU seconds of this process per "
        "second, below the thread count when other processes took the cores)"
    )
    share = statistics.median(c / w for c, w in zip(cpu["floor"], seconds["floor"], strict=True))
    if device.type == "cpu" and share < 0.8 * threads:
        # Threads of one parallel region wait for each other: when another process holds a
        # core, every region can wait a whole time slice, and step times jump many-fold.
        print(f"warning: the floor got {share:.2f} CPU-seconds per second of its {threads} "
              "threads: other processes held the cores, so the wall-clock figures are noisy "
              "(--threads 1 or a quiet machine gives steadier ones)")  # fmt: skip

    quiet = "runner, diagnostics off"
    ratios = {}
    for label, name in (("", "runner"), ("diagnostics off: ", quiet)):
        for other in ("floor", "classic"):
            # within each round: both chunks ran under the same background load
            pairs = zip(seconds[name], seconds[other], strict=True)
            paired = [theirs / ours for ours, theirs in pairs]
            best = min(seconds[other]) / min(seconds[name])  # each at its least disturbed
            ratios[f"{label}runner/{other}"] = statistics.median(paired)
            rounds = " ".join(f"{value:.2f}" for value in paired)
            low, high = median_interval(paired)
            # with fewer than 6 rounds no pair of order statistics reaches 95%: say what it is
            interval = "95% CI" if len(paired) >= 6 else "min-max"
            line = (f"{label + 'runner/' + other:<32} per round: {rounds}; "
                    f"median {statistics.median(paired):.3f} ({interval} {low:.3f}-{high:.3f}), "
                    f"mean {statistics.fmean(paired):.3f}, fastest chunks {best:.3f}")  # fmt: skip
            if other == "floor":
                # Both run in this process alone: their CPU time is the work done, whatever
                # share of the cores other processes took (the classic loop's workers are other
                # processes, so it has no such figure).
                by_cpu = [theirs / ours for ours, theirs in
                          zip(cpu[name], cpu[other], strict=True)]  # fmt: skip
                line += f", by CPU time {statistics.median(by_cpu):.3f}"
            print(line)
    print(
        f"ratios (median of {len(paired)} paired rounds): "
        + " ".join(f"{label}={value:.3f}" for label, value in ratios.items())
    )


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the k-th smallest and k-th
    largest value, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2. With too few
    values for that level (n < 6 at 95%), the smallest and the largest."""
    ordered, n = sorted(values), len(values)
    k, below = 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) = k), summed: P(< k + 1)
        if below > (1 - level) / 2:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def load_average() -> str:
    # the other processes' share of this machine, for reading the figures
    with contextlib.suppress(OSError, AttributeError):
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    return "n/a"


def print_header(args, trainer, device, threads, steps, rounds, warmup) -> None:
    name = trainer.env.get("device_name") or platform.machine()
    cfg = trainer.cfg
    print(f"bench: model={args.model} ({trainer.summary['parameters']:,} parameters) "
          f"batch={args.batch_size} optimizer={cfg.optimizer.name} device={device} ({name}) "
          f"threads={threads} torch={torch.__version__}")  # fmt: skip
    print(f"       precision={str(trainer.dtype).replace('torch.', '')} "
          f"channels_last={trainer.channels_last} compile={cfg.train.compile} "
          f"cudnn.benchmark={torch.backends.cudnn.benchmark} "
          f"data={trainer.summary['data_source']}")  # fmt: skip
    print(
        f"       {rounds} rounds of {steps} timed steps per method after {warmup} warm-up "
        f"steps; classic: transforms {args.transforms}, DataLoader num_workers={args.workers} "
        f"(1 thread each), {args.classic_warmup} untimed steps per chunk"
    )
    print(f"       load average at the start (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
