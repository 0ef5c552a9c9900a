"""One training run: ``run(cfg, run_dir) -> summary``.

The loop holds the whole dataset on the device as uint8, slices batches from a permutation,
augments and normalizes them there, and reads nothing back to the host except at logging
points (every ``train.log_every`` steps and at epoch ends). Randomness is split in three: the
initial weights depend on ``seed`` and the initializer only; data order and augmentation come
from a generator seeded by ``seed`` and the epoch number, so a run resumed at an epoch boundary
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from initbench import record
from initbench.data import Dataset, augment, load_dataset, normalization_affine, normalize

log = logging.getLogger(__name__)

DATA_SEED_OFFSET = 1_000_003  # keeps the data stream apart from the weight stream


class Interrupted(KeyboardInterrupt):
    """Raised after an interrupted run has written its record."""


class RunDirTaken(FileExistsError):
    """The run directory belongs to another run (resume=never) or another process; nothing in
    it was touched, so nothing about this attempt may be written there either."""


# ----------------------------------------------------------------------------- device and setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            # a sweep's jobs running side by side each get a GPU of their own (initbench.sweep)
            return torch.device(os.environ.get("INITBENCH_DEVICE") or "cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available; use auto or cpu.")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def use_channels_last(requested: bool, device: torch.device, is_convolutional: bool) -> bool:
    """Whether model and inputs go channels-last (NHWC): convolutional models on CUDA, where
    cuDNN's fastest kernels (tensor cores under bf16) want that layout, and on the CPU, where
    oneDNN's do too. Measured on the 2-core CPU, a training step at batch 64 takes 15-25% less
    time for the CNN, 15-18% for the ResNet and 7% for the plain CNN. Off on other devices
    (not measured) and for models without convolutions (nothing to gain)."""
    return bool(requested) and device.type in ("cuda", "cpu") and bool(is_convolutional)


def configure_backends(cfg: DictConfig, device: torch.device) -> None:
    threads = cfg.train.threads or int(os.environ.get("INITBENCH_THREADS", 0)) or None
    if threads:
        torch.set_num_threads(threads)
    deterministic = bool(cfg.train.deterministic)
    if deterministic:
        # cuBLAS reads this when it creates its handle, i.e. at the first matmul on the device:
        # set here, before the model exists, it takes effect (unless an earlier run in this
        # process already used cuBLAS; for a sweep, export it before starting).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cpu":
        keep_freed_host_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic  # autotuning picks kernels by timing
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Set either way, so that one run of a sweep does not leave the mode on for the next.
    # warn_only: torch.histc (diagnostics) and AdaptiveAvgPool2d's backward (resnet, plain_cnn)
    # have no deterministic CUDA kernel and would stop the run; both only add exact counts or
    # one contribution per element, so they do not change the result from run to run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# glibc's own environment variables for the same parameters: a user who set one has chosen
_MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                     "MALLOC_TOP_PAD_")  # fmt: skip
_host_memory_kept: bool | None = None


def keep_freed_host_memory() -> bool:
    """Ask the C allocator to keep freed memory for reuse instead of returning it to the kernel.

    A training step on the CPU frees and reallocates the same activation and gradient buffers,
    megabytes each. glibc's malloc serves blocks above its mmap threshold (128 KiB, raised as
    blocks are freed, to 32 MiB at most) with a fresh ``mmap`` and gives them back on ``free``,
    and trims the top of its heap; every step then faults its buffers in again, page by page,
    and the kernel zeroes each page. Measured on the 2-core CPU with the CNN: 240,000 minor
    faults per 40 steps at batch 64 and 1,000,000 at batch 256, which cost 10% and 35% of the
    throughput. With mmap off and trimming off, the faults stop; the resident size stays at its
    peak, which is no higher than before.

    Process-wide, and applied once. Nothing is changed when the C library is not glibc, or
    when the user chose these parameters already (``MALLOC_MMAP_MAX_`` and friends,
    ``GLIBC_TUNABLES`` with malloc settings, or another allocator preloaded). Returns whether
    the setting is in force.
    """
    global _host_memory_kept
    if _host_memory_kept is None:
        _host_memory_kept = _set_malloc_parameters()
    return _host_memory_kept


def _set_malloc_parameters() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _MALLOC_VARIABLES) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") \
            or "malloc" in os.environ.get("LD_PRELOAD", ""):  # fmt: skip
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the order matters only if the second one fails
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))


def data_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * DATA_SEED_OFFSET + epoch + 1)
    return generator


def make_optimizer(model: torch.nn.Module, opt_cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                               nesterov=opt_cfg.nesterov and opt_cfg.momentum > 0,
                               weight_decay=opt_cfg.weight_decay)  # fmt: skip
    if opt_cfg.name in ("adam", "adamw"):
        kind = torch.optim.Adam if opt_cfg.name == "adam" else torch.optim.AdamW
        return kind(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                    weight_decay=opt_cfg.weight_decay)  # fmt: skip
    if opt_cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=opt_cfg.lr,
            alpha=opt_cfg.alpha,
            eps=opt_cfg.eps,
            momentum=opt_cfg.momentum,
            weight_decay=opt_cfg.weight_decay,
        )
    raise ValueError(f"optimizer.name={opt_cfg.name!r}; choose sgd, adam, adamw or rmsprop.")


def make_schedule(optimizer, opt_cfg, steps_per_epoch: int, total_steps: int):
    """Per-step multiplier of the learning rate: linear warm-up, then none / cosine / step."""
    warmup = int(round(opt_cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if opt_cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if opt_cfg.schedule == "step":
            return opt_cfg.gamma ** (step // (opt_cfg.step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- the run directory


def prepare_run_dir(run_dir: Path, mode: str, cfg: DictConfig | None = None
                    ) -> tuple[str, dict | None]:  # fmt: skip
    """Decide what to do with ``run_dir``: "fresh", "resume" or "skip".

    A finished run is never overwritten: with ``resume=force`` its files move to a
    ``_previous-<time>/`` folder inside the directory first. A directory whose run was made
    with another configuration is refused rather than skipped or resumed.
    """
    summary = record.read_summary(run_dir)
    has_results = summary is not None or (run_dir / "metrics.csv").exists()
    if not has_results:
        return "fresh", None
    status = (summary or {}).get("status", "unknown")
    differences = [] if cfg is None else record.config_differences(
        run_dir, OmegaConf.to_container(cfg, resolve=True))  # fmt: skip
    if differences and mode != "force":
        raise RunDirTaken(different_run_message(run_dir, status, differences))
    if mode == "never":
        raise RunDirTaken(
            f"{run_dir} already holds a run (status {status}); resume=never refuses to touch it. "
            "Choose another hydra.run.dir, or resume=auto to continue it, or resume=force to "
            "start again (the old files are kept in a _previous-* folder)."
        )
    if mode == "force":
        _move_aside(run_dir)
        return "fresh", None
    if status in record.FINISHED:
        return "skip", summary
    if (run_dir / record.CHECKPOINT).exists():
        return "resume", summary
    _move_aside(run_dir)  # started but never reached an epoch end: keep its files, start again
    return "fresh", None


def different_run_message(run_dir: Path, status: str, differences: list[str]) -> str:
    shown = ", ".join(differences[:8]) + (", ..." if len(differences) > 8 else "")
    return (
        f"{run_dir} holds a run (status {status}) made with another configuration (differs in "
        f"{shown}); it is neither skipped nor resumed. Choose another hydra.run.dir, or "
        "resume=force to start again there (the old files are kept in a _previous-* folder)."
    )


def _move_aside(run_dir: Path) -> None:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target = run_dir / f"_previous-{stamp}"
    target.mkdir()
    for path in run_dir.iterdir():
        if path.name.startswith(("_previous-", ".hydra", "run.log", ".lock")):
            continue
        path.rename(target / path.name)
    log.info("moved the earlier files of %s into %s", run_dir, target.name)


@contextlib.contextmanager
def exclusive(run_dir: Path):
    """Hold ``run_dir/.lock`` so two processes never write into one run directory."""
    import fcntl

    handle = open(run_dir / ".lock", "a")  # noqa: SIM115 - "a": the holder's pid stays readable
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunDirTaken(
            f"another initbench process is writing into {run_dir}; choose another "
            "hydra.run.dir or wait for it to finish."
        ) from None
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT and SIGTERM into a flag the loop checks once per step."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {}

    def handler(signum, frame):
        log.warning("signal %s received: finishing the current step, then stopping",
                    signal.Signals(signum).name)  # fmt: skip
        flag.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "threads": torch.get_num_threads(),
        # whether freed host memory is kept for reuse (keep_freed_host_memory; CPU runs)
        "host_memory_kept": bool(_host_memory_kept),
        "git_revision": git_revision(),
    }
    return info


def git_revision() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], timeout=5,
                             capture_output=True, text=True, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    record.atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- the run


def run(cfg: DictConfig, run_dir: Path | str | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` under ``cfg.init`` and write the run directory; return the summary.

    ``run_dir`` defaults to Hydra's output directory. Raises on failure after recording the
    failure in ``summary.json``; a diverged run is a result, not a failure, and returns.
    """
    from initbench.config import validate

    validate(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(run_dir):
        action, summary = prepare_run_dir(run_dir, cfg.resume, cfg)
        if action == "skip":
            log.info("%s already %s; skipped (resume=force runs it again)", run_dir,
                     summary["status"])  # fmt: skip
            return {**summary, "skipped": True}
        trainer = Trainer(cfg, run_dir, resume=action == "resume")
        return trainer.run()


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, resume: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        self.started = time.time()
        self.summary: dict[str, Any] = {}
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.best_acc, self.best_epoch = math.nan, None
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.divergence: dict[str, Any] | None = None

    # The stages of a run, in order. Each failure is written down before it propagates.
    def run(self) -> dict[str, Any]:
        with stop_on_signals() as self.stop:
            try:
                self.setup()
                self.load_data()
                self.build_model()
                self.build_optimizer()
                self.restore()
                self.loop()
            except BaseException as error:
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                self.finish(status, error=f"{type(error).__name__}: {error}")
                from initbench.config import ConfigError
                from initbench.data import DataError

                if isinstance(error, (ConfigError, DataError)):  # the message says it all
                    log.error("run failed: %s", error)
                elif status == "failed":
                    log.error("run failed: %s\n%s", error, traceback.format_exc())
                raise
            finally:
                self.close_tables()
            if self.stop.is_set():
                self.finish("interrupted", error="stopped by a signal")
                raise Interrupted(f"run in {self.run_dir} interrupted; resume with resume=auto")
        return self.summary

    # --- setup --------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.train.device)
        configure_backends(cfg, self.device)
        self.dtype = resolve_precision(cfg.train.precision, self.device)
        if self.dtype == torch.float16 and self.device.type == "cpu":
            log.warning("train.precision=fp16 on the CPU: there are no fast fp16 kernels here, "
                        "and the CNN trained 20x slower than in fp32; fp32 (the default) or "
                        "bf16 is the CPU's choice.")  # fmt: skip
        # atomic too: config.yaml marks a run directory for the reporter (record.find_runs)
        record.atomic_write_bytes(self.run_dir / record.CONFIG,
                                  OmegaConf.to_yaml(cfg, resolve=True).encode())  # fmt: skip
        self.env = environment(self.device)
        self.summary = self.base_summary()
        self.summary.update(status="running", started_at=_now())
        record.atomic_write_json(self.run_dir / record.SUMMARY, self.summary)
        self.tables: dict[str, record.TableWriter] = {}
        log.info(
            "run: %s | model=%s init=%s optimizer=%s lr=%g seed=%d | device=%s %s",
            self.run_dir,
            cfg.model.name,
            cfg.init.name,
            cfg.optimizer.name,
            cfg.optimizer.lr,
            cfg.seed,
            self.device,
            str(self.dtype).replace("torch.", ""),
        )

    def base_summary(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "kind": "train", "status": "running", "error": None,
            "model": cfg.model.name, "activation": cfg.model.activation, "init": cfg.init.name,
            "optimizer": cfg.optimizer.name, "lr": cfg.optimizer.lr,
            "batch_size": cfg.train.batch_size, "seed": cfg.seed,
            "precision": str(self.dtype).replace("torch.", ""), **self.env,
            "run_dir": str(self.run_dir),
        }  # fmt: skip

    def table(self, name: str) -> record.TableWriter:
        if name not in self.tables:
            self.tables[name] = record.TableWriter(self.run_dir / f"{name}.csv",
                                                   record.TABLES[name])  # fmt: skip
        return self.tables[name]

    def close_tables(self) -> None:
        for writer in getattr(self, "tables", {}).values():
            writer.close()

    # --- data ---------------------------------------------------------------------------
    def load_data(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        base_dir = HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()
        dataset: Dataset = load_dataset(self.cfg.data, base_dir)
        if self.cfg.data.normalize:
            self.mean, self.std = (t.to(self.device) for t in dataset.channel_stats())
        else:  # pixels on the 0..1 scale, as they are
            self.mean, self.std = (
                torch.zeros(3, device=self.device),
                torch.ones(3, device=self.device),
            )
        self.affine = normalization_affine(self.mean, self.std)  # once, not every step
        self.data = dataset.to(self.device)
        self.summary.update(data_source=dataset.source, train_images=len(dataset.train_labels),
                            test_images=len(dataset.test_labels))  # fmt: skip

    def probe_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed batch of training images, chosen by the seed alone (for LSUV, diagnostics)."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        count = len(self.data.train_labels)
        index = torch.randperm(count, generator=generator)[: min(size, count)].to(self.device)
        images = normalize(self.data.train_images[index], self.mean, self.std)
        return images, self.data.train_labels[index]

    def to_memory_format(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # --- model and initialization -------------------------------------------------------
    def build_model(self) -> None:
        from initbench.inits import initialize
        from initbench.models import build_model

        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # PyTorch's own init (init=default) draws from here
        model = build_model(cfg.model, num_classes=self.data.num_classes).to(self.device)
        batch, _ = self.probe_batch(256)
        # initialized in the default layout, so that the weights do not depend on it
        layers = initialize(model, cfg.init, seed=cfg.seed, batch=batch)
        if layers and not self.resume:
            self.write_init_table(layers)
        self.channels_last = use_channels_last(
            cfg.train.channels_last, self.device, getattr(model, "is_convolutional", False)
        )
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if cfg.train.compile else model
        self.summary["parameters"] = sum(p.numel() for p in model.parameters())

    def write_init_table(self, layers: list[dict]) -> None:
        columns = list(dict.fromkeys(key for layer in layers for key in layer))
        writer = record.TableWriter(self.run_dir / "init.csv", columns)
        writer.write(layers)
        writer.close()

    # --- optimizer ----------------------------------------------------------------------
    def build_optimizer(self) -> None:
        from initbench.diagnostics import Diagnostics

        cfg = self.cfg
        count = len(self.data.train_labels)
        self.steps_per_epoch = math.ceil(count / cfg.train.batch_size)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.optimizer = make_optimizer(self.model, cfg.optimizer)
        self.scheduler = make_schedule(self.optimizer, cfg.optimizer, self.steps_per_epoch,
                                       self.total_steps)  # fmt: skip
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)  # fmt: skip
        self.diagnostics = Diagnostics(
            cfg.diagnostics, self.model, self.table, epochs=cfg.train.epochs,
            probe_batch=lambda: self.to_memory_format(
                self.probe_batch(cfg.diagnostics.activation_batch)[0]
            ),
            gradients_may_overflow=self.scaler.is_enabled(),
        )  # fmt: skip

    def restore(self) -> None:
        path = self.run_dir / record.CHECKPOINT
        if not self.resume:
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.diagnostics.load_state_dict(state.get("diagnostics", {}))
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.elapsed_before = state["elapsed"]
        # rows written after the checkpoint belong to the lost epoch: drop them, redo them
        for name in ("metrics", "distributions", "histograms"):
            record.truncate_table(self.run_dir / f"{name}.csv", self.epoch, "epoch",
                                  record.TABLES[name])  # fmt: skip
        # steps.csv counts steps taken; grad_norms.csv the step being taken (0-based), so its
        # row for step == self.step belongs to the lost epoch
        record.truncate_table(self.run_dir / "steps.csv", self.step, "step",
                              record.TABLES["steps"])  # fmt: skip
        record.truncate_table(self.run_dir / "grad_norms.csv", self.step - 1, "step",
                              record.TABLES["grad_norms"])  # fmt: skip
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def checkpoint(self) -> None:
        if not self.cfg.train.checkpoint:
            return
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        save_checkpoint(self.run_dir / record.CHECKPOINT, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "diagnostics": self.diagnostics.state_dict(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
            "epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
            "best_epoch": self.best_epoch, "elapsed": self.elapsed(),
        })  # fmt: skip

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    # --- training loop ------------------------------------------------------------------
    def loop(self) -> None:
        cfg = self.cfg
        if self.epoch == 0:
            self.diagnostics.on_start()
        progress = self.progress_bar()
        self.print_header()
        while self.epoch < cfg.train.epochs and self.step < self.total_steps:
            row = self.train_epoch(progress)
            if row is None:  # diverged or stopped mid-epoch
                break
            self.epoch += 1
            if self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs \
                    or self.step >= self.total_steps:  # fmt: skip
                row.update(self.evaluate())
                if not math.isnan(row["test_acc"]) and not (row["test_acc"] <= self.best_acc):
                    self.best_acc, self.best_epoch = row["test_acc"], self.epoch
            self.table("metrics").write([row])
            self.print_row(row)
            self.diagnostics.on_epoch_end(self.epoch, self.step,
                                          last=self.is_last_epoch())  # fmt: skip
            self.checkpoint()
        if progress is not None:
            progress.close()
        if self.divergence is None and not self.stop.is_set():
            self.finish("completed")

    def is_last_epoch(self) -> bool:
        return self.epoch >= self.cfg.train.epochs or self.step >= self.total_steps

    def train_epoch(self, progress) -> dict[str, Any] | None:
        cfg, data, device = self.cfg, self.data, self.device
        self.model.train()
        generator = data_generator(cfg.seed, self.epoch, device)
        count = len(data.train_labels)
        order = torch.randperm(count, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        # read once: a config lookup costs more than some of the step's small operations
        batch_size, log_every = cfg.train.batch_size, cfg.train.log_every
        padding = cfg.data.crop_padding if cfg.data.augment else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_start = time.perf_counter()
        for start in range(0, count, batch_size):
            if self.step >= self.total_steps or self.stop.is_set():
                break
            index = order[start : start + batch_size]
            # index_select: the same rows as images[index], several times faster on the CPU
            images = data.train_images.index_select(0, index)
            labels = data.train_labels.index_select(0, index)
            if padding is not None:
                images = augment(images, padding, generator)
            inputs = normalize(images, self.mean, self.std, self.channels_last, affine=self.affine)

            with torch.autocast(device.type, dtype=self.dtype,
                                enabled=self.dtype != torch.float32):  # fmt: skip
                logits = self.forward(inputs)
                loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            # true-scale gradients for the diagnostics (and for step); a no-op unless fp16
            self.scaler.unscale_(self.optimizer)
            self.diagnostics.after_backward(self.step, self.epoch, loss)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.diagnostics.after_step(self.step, self.epoch)

            loss = loss.detach()
            loss_sum += loss * len(index)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(index)
            self.step += 1
            if progress is not None:
                progress.update(1)
            if self.step % log_every == 0 or self.step == 1:
                # the one host read of an ordinary stretch of steps
                value = loss.item()
                self.table("steps").write([{
                    "step": self.step, "epoch": self.epoch + seen / count, "train_loss": value,
                    "lr": self.scheduler.get_last_lr()[0], "seconds": self.elapsed(),
                }])  # fmt: skip
                if progress is not None:
                    progress.set_postfix(loss=f"{value:.3f}", refresh=False)
                if not math.isfinite(value):
                    self.diverge(value)
                    return None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - epoch_start
        if seen == 0 or (self.stop.is_set() and seen < count):
            # stopped by a signal: part of an epoch is no row and no checkpoint; a resume
            # redoes the whole epoch from the last checkpoint, with the same data order
            return None
        train_loss = (loss_sum / seen).item()
        if not math.isfinite(train_loss):
            self.diverge(train_loss)
            return None
        return {
            "epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss,
            "train_acc": correct.item() / seen, "test_loss": float("nan"),
            "test_acc": float("nan"), "lr": self.scheduler.get_last_lr()[0],
            "epoch_seconds": seconds, "images_per_second": seen / seconds,
        }  # fmt: skip

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        data, device = self.data, self.device
        self.model.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        count = len(data.test_labels)
        for start in range(0, count, self.cfg.train.eval_batch_size):
            images = data.test_images[start : start + self.cfg.train.eval_batch_size]
            labels = data.test_labels[start : start + self.cfg.train.eval_batch_size]
            inputs = normalize(images, self.mean, self.std, self.channels_last, affine=self.affine)
            with torch.autocast(device.type, dtype=self.dtype,
                                enabled=self.dtype != torch.float32):  # fmt: skip
                logits = self.forward(inputs).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
        self.model.train()
        return {"test_loss": (loss_sum / count).item(), "test_acc": correct.item() / count}

    def diverge(self, value: float) -> None:
        # the diagnostics know the first non-finite step, often before the one that noticed
        self.divergence = {"step": self.step, "epoch": self.epoch, "loss": value,
                           **self.diagnostics.locate_divergence(),
                           "noticed_at_step": self.step}  # fmt: skip
        log.warning("diverged: training loss is %s at step %d; first non-finite at step %s "
                    "(cause=%s), layer: %s", value, self.step, self.divergence["step"],
                    self.divergence.get("cause"), self.divergence.get("layer"))  # fmt: skip
        self.finish("diverged")

    # --- output -------------------------------------------------------------------------
    def progress_bar(self):
        if not self.cfg.train.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            leave=False,
            dynamic_ncols=True,
            desc=f"{self.cfg.model.name}/{self.cfg.init.name}",
            disable=None,  # drawn on a terminal only: in a log file it would run into the table
        )

    COLUMNS = (("epoch", "{:>5d}"), ("train_loss", "{:>10.4f}"), ("train_acc", "{:>9.4f}"),
               ("test_loss", "{:>9.4f}"), ("test_acc", "{:>8.4f}"), ("lr", "{:>9.2e}"),
               ("epoch_seconds", "{:>13.1f}"), ("images_per_second", "{:>17.0f}"))  # fmt: skip

    def print_header(self) -> None:
        widths = [len(fmt.format(0 if "d" in fmt else 0.0)) for _, fmt in self.COLUMNS]
        log.info(" ".join(name.rjust(width) for (name, _), width in zip(self.COLUMNS, widths)))

    def print_row(self, row: dict[str, Any]) -> None:
        log.info(" ".join(fmt.format(row[name]) for name, fmt in self.COLUMNS))

    def finish(self, status: str, error: str | None = None) -> None:
        if not self.summary:  # failed before setup wrote anything
            self.summary = {"kind": "train", "run_dir": str(self.run_dir)}
        metrics = _read_metrics(self.run_dir)
        final = metrics[-1] if metrics else {}
        self.summary.update(
            status=status, error=error, finished_at=_now(),
            total_seconds=round(self.elapsed(), 3),
            epochs_completed=self.epoch, steps=self.step,
            final_test_acc=final.get("test_acc"), final_train_loss=final.get("train_loss"),
            best_test_acc=None if math.isnan(self.best_acc) else self.best_acc,
            best_epoch=self.best_epoch,
            images_per_second=_overall_rate(metrics),
            divergence=self.divergence,
        )  # fmt: skip
        record.atomic_write_json(self.run_dir / record.SUMMARY, self.summary)
        if status in ("completed", "diverged"):
            acc = self.summary["final_test_acc"]
            log.info("%s in %.1f s: final test accuracy %s, best %s; files in %s", status,
                     self.summary["total_seconds"], _pct(acc), _pct(self.summary["best_test_acc"]),
                     self.run_dir)  # fmt: skip


def _read_metrics(run_dir: Path) -> list[dict[str, float]]:
    import csv

    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: float(value) if value not in ("", None) else math.nan
             for key, value in row.items()} for row in rows]  # fmt: skip


def _overall_rate(metrics: list[dict[str, float]]) -> float | None:
    """Training images per second over all epochs: all images over all training seconds (the
    mean of the epochs' rates would count a short epoch as much as a long one)."""
    timed = [(row["images_per_second"] * row["epoch_seconds"], row["epoch_seconds"])
             for row in metrics
             if math.isfinite(row.get("images_per_second", math.nan))
             and math.isfinite(row.get("epoch_seconds", math.nan))
             and row["epoch_seconds"] > 0]  # fmt: skip
    seconds = sum(second for _, second in timed)
    return sum(images for images, _ in timed) / seconds if seconds > 0 else None


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
