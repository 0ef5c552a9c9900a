"""Typed configuration schemas, registered with Hydra's ConfigStore.

The YAML files in ``initbench/configs/`` extend these schemas through their defaults lists
(``/schema/<group>/<name>@_here_``), so a value of the wrong type stops at composition, before a
run directory exists. Range checks that a type cannot express live in :func:`validate`.

Initializer configs are the exception: each initializer takes its own options, so the ``init``
node is a plain mapping that :func:`initbench.inits.registry.check_init_config` validates against
the initializer's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "selu", "gelu", "linear")


# ----------------------------------------------------------------------------- models


@dataclass
class ModelConfig:
    name: str = MISSING
    activation: str = "relu"


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    depth: int = 3  # hidden layers
    width: int = 512


@dataclass
class CNNConfig(ModelConfig):
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    hidden: int = 512


@dataclass
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    blocks: list[int] = field(default_factory=lambda: [17, 17, 16])  # per stage
    width: int = 16  # channels of the first stage; doubled at each later stage
    norm: str = "batch"  # batch | none


@dataclass
class LSTMConfig(ModelConfig):
    name: str = "lstm"
    activation: str = "tanh"
    layers: int = 1
    hidden: int = 128


@dataclass
class PlainCNNConfig(ModelConfig):
    name: str = "plain_cnn"
    activation: str = "tanh"
    depth: int = 32  # convolutions at full resolution after the stem
    width: int = 64
    kernel_size: int = 3


# ----------------------------------------------------------------------------- optimizer


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adam | adamw | rmsprop
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99  # rmsprop smoothing
    schedule: str = "none"  # none | cosine | step
    step_epochs: int = 30  # step schedule: decay every this many epochs
    gamma: float = 0.1  # step schedule: decay factor
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs (fractions allowed)


# ----------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | synthetic
    # A folder or .tar.gz: torchvision's cifar-10-batches-py, or train/<class>/*, test/<class>/*.
    # Relative paths mean the directory the command was started from.
    root: str = "data"
    download: bool = True  # torchvision download when root holds no copy
    cache_dir: str | None = None  # decoded-tensor cache; default <root>/.initbench-cache
    augment: bool = True  # random crop with padding + horizontal flip, on the device
    crop_padding: int = 4
    normalize: bool = True  # per-channel mean/std of the training split
    train_subset: int | None = None  # first N training images (class-balanced), for quick runs
    test_subset: int | None = None
    # synthetic data only
    num_train: int = 2048
    num_test: int = 512
    num_classes: int = 10


# ----------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    max_steps: int | None = None  # stop after this many optimizer steps in all
    eval_every: int = 1  # epochs
    eval_batch_size: int = 1000
    log_every: int = 20  # steps between rows of steps.csv
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    channels_last: bool = True  # convolutional models on CUDA and the CPU
    compile: bool = False  # torch.compile the model (CUDA)
    deterministic: bool = False  # deterministic kernels on CUDA (slower)
    threads: int | None = None  # CPU threads; default: all cores, or cores / jobs in a sweep
    progress: bool = True
    checkpoint: bool = True  # checkpoint.pt at every epoch end, for resume


@dataclass
class DiagnosticsConfig:
    enabled: bool = True
    grad_every: int = 50  # steps between rows of grad_norms.csv (step 0 always)
    # epochs at which weight/activation histograms are taken, besides initialization;
    # null means the first, the middle and the last epoch
    distribution_epochs: list[int] | None = None
    bins: int = 64
    activation_batch: int = 256  # images used to record activation histograms


@dataclass
class Config:
    model: ModelConfig = MISSING
    init: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    seed: int = 0
    # what to do when the run directory already holds a run:
    # auto: skip a completed run, resume an interrupted or failed one; never: refuse;
    # force: move the old files aside (never deleted) and start again
    resume: str = "auto"


MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "mlp": MLPConfig,
    "cnn": CNNConfig,
    "resnet": ResNetConfig,
    "lstm": LSTMConfig,
    "plain_cnn": PlainCNNConfig,
}


def register_configs() -> None:
    """Store the schemas under ``schema/`` so that the YAML files can extend them."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=name, node=schema)
    store.store(group="schema/optimizer", name="optimizer", node=OptimizerConfig)
    store.store(group="schema/data", name="data", node=DataConfig)


register_configs()


# ----------------------------------------------------------------------------- validation


class ConfigError(ValueError):
    """A configuration that composes but cannot be run; the message says what to change."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    _require(
        value in allowed,
        f"{key}={value!r} is not a valid choice; choose one of: {', '.join(allowed)}.",
    )


def validate(cfg: DictConfig) -> None:
    """Check the values that types cannot: ranges and names. Raises :class:`ConfigError`."""
    from initbench.inits.registry import check_init_config
    from initbench.models import check_model_config

    check_model_config(cfg.model)
    check_init_config(cfg.init, cfg.model)

    opt = cfg.optimizer
    _one_of("optimizer.name", opt.name, ("sgd", "adam", "adamw", "rmsprop"))
    _require(
        0 < opt.lr < float("inf"), f"optimizer.lr={opt.lr} must be a positive number, e.g. 0.01."
    )
    _require(
        len(opt.betas) == 2 and all(0 <= beta < 1 for beta in opt.betas),
        f"optimizer.betas={list(opt.betas)} must be two numbers in [0, 1), e.g. [0.9,0.999].",
    )
    _require(opt.weight_decay >= 0, f"optimizer.weight_decay={opt.weight_decay} must be >= 0.")
    _require(0 <= opt.momentum < 1, f"optimizer.momentum={opt.momentum} must be in [0, 1).")
    _one_of("optimizer.schedule", opt.schedule, ("none", "cosine", "step"))
    _require(opt.warmup_epochs >= 0, f"optimizer.warmup_epochs={opt.warmup_epochs} must be >= 0.")
    _require(opt.step_epochs >= 1, f"optimizer.step_epochs={opt.step_epochs} must be >= 1.")

    data = cfg.data
    _one_of("data.name", data.name, ("cifar10", "synthetic"))
    for key in ("train_subset", "test_subset"):
        value = data[key]
        _require(value is None or value >= 1, f"data.{key}={value} must be >= 1 or null.")
    _require(data.crop_padding >= 0, f"data.crop_padding={data.crop_padding} must be >= 0.")
    _require(data.num_train >= 1 and data.num_test >= 1, "data.num_train/num_test must be >= 1.")
    _require(data.num_classes >= 2, f"data.num_classes={data.num_classes} must be >= 2.")

    train = cfg.train
    _require(train.epochs >= 1, f"train.epochs={train.epochs} must be a whole number >= 1.")
    _require(train.batch_size >= 1, f"train.batch_size={train.batch_size} must be >= 1.")
    _require(
        train.max_steps is None or train.max_steps >= 1,
        f"train.max_steps={train.max_steps} must be >= 1 or null (no budget).",
    )
    _require(train.eval_every >= 1, f"train.eval_every={train.eval_every} must be >= 1.")
    _require(train.eval_batch_size >= 1, "train.eval_batch_size must be >= 1.")
    _require(train.log_every >= 1, f"train.log_every={train.log_every} must be >= 1.")
    _one_of("train.precision", train.precision, ("auto", "fp32", "bf16", "fp16"))
    _require(
        train.device in ("auto", "cpu", "cuda", "mps") or str(train.device).startswith("cuda:"),
        f"train.device={train.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps.",
    )
    if str(train.device).startswith("cuda") or train.device == "mps":
        import torch

        available = (torch.cuda.is_available() if train.device != "mps"
                     else torch.backends.mps.is_available())  # fmt: skip
        _require(available, f"train.device={train.device} but this machine has no such device; "
                 "use train.device=auto (CUDA, then MPS, then CPU) or cpu.")  # fmt: skip
    _require(train.threads is None or train.threads >= 1, "train.threads must be >= 1 or null.")

    diag = cfg.diagnostics
    _require(diag.grad_every >= 1, f"diagnostics.grad_every={diag.grad_every} must be >= 1.")
    _require(diag.bins >= 2, f"diagnostics.bins={diag.bins} must be >= 2.")
    _require(diag.activation_batch >= 1, "diagnostics.activation_batch must be >= 1.")
    _one_of("resume", cfg.resume, ("auto", "never", "force"))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore
