"""Model builders: one per entry of ``configs/model/``, each a plain ``nn.Module``.

Every model maps a normalized float batch (N, 3, 32, 32) to logits (N, num_classes), names its
last layer ``classifier``, and carries two attributes the initializers read: ``activation``
(the name in :data:`initbench.config.ACTIVATIONS`, which sets the default gain) and
``is_convolutional``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from initbench.config import ACTIVATIONS, MODEL_SCHEMAS, ConfigError
from initbench.models.cnn import CNN
from initbench.models.lstm import LSTMClassifier
from initbench.models.mlp import MLP, make_activation
from initbench.models.plain_cnn import PlainCNN
from initbench.models.resnet import NORMS, ResidualBlock, ResNet

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "LSTMClassifier",
    "PlainCNN",
    "ResNet",
    "ResidualBlock",
    "build_model",
    "check_model_config",
    "make_activation",
    "model_options",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "lstm": LSTMClassifier,
    "plain_cnn": PlainCNN,
}

# Each max-pool (cnn) or stride-2 stage (resnet) halves a 32-pixel side; past 5 halvings the
# feature map is gone.
_MAX_HALVINGS = 5


def _as_dict(model_cfg: Any) -> dict[str, Any]:
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(model_cfg, Mapping):
        return {
            key: list(value) if isinstance(value, ListConfig) else value
            for key, value in model_cfg.items()
        }
    raise TypeError(
        f"model config must be a mapping (DictConfig or dict), got {type(model_cfg).__name__}."
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(cfg: dict[str, Any], key: str, minimum: int = 1) -> None:
    value = cfg[key]
    _require(
        _is_int(value) and value >= minimum,
        f"model.{key}={value!r} must be a whole number >= {minimum} (model {cfg['name']}).",
    )


def _int_list(cfg: dict[str, Any], key: str, max_length: int) -> None:
    value = cfg[key]
    _require(
        isinstance(value, (list, tuple))
        and 1 <= len(value) <= max_length
        and all(_is_int(item) and item >= 1 for item in value),
        f"model.{key}={value!r} must be a list of 1 to {max_length} whole numbers >= 1 "
        f"(model {cfg['name']}).",
    )


def model_options(model_cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict, schema defaults filled in; unknown names or keys raise."""
    cfg = _as_dict(model_cfg)
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(
            f"model.name={name!r} is not a model; choose one of: {', '.join(MODELS)}."
        )
    schema = MODEL_SCHEMAS[name]
    fields = {field.name: field for field in dataclasses.fields(schema)}
    unknown = sorted(set(cfg) - set(fields))
    _require(
        not unknown,
        f"model {name} has no option {', '.join(map(repr, unknown))}; "
        f"its options are: {', '.join(fields)}.",
    )
    defaults = dataclasses.asdict(schema())
    return {**defaults, **cfg}


def check_model_config(model_cfg: Any) -> None:
    """Check a model config's name, activation and sizes; raise :class:`ConfigError` if wrong."""
    cfg = model_options(model_cfg)
    name = cfg["name"]
    _require(
        cfg["activation"] in ACTIVATIONS,
        f"model.activation={cfg['activation']!r} is not known; "
        f"choose one of: {', '.join(ACTIVATIONS)}.",
    )
    if name == "mlp":
        _positive_int(cfg, "depth")
        _positive_int(cfg, "width")
    elif name == "cnn":
        _int_list(cfg, "channels", _MAX_HALVINGS)
        _positive_int(cfg, "hidden")
    elif name == "resnet":
        _int_list(cfg, "blocks", _MAX_HALVINGS + 1)
        _positive_int(cfg, "width")
        _require(
            cfg["norm"] in NORMS,
            f"model.norm={cfg['norm']!r} is not known; choose one of: {', '.join(NORMS)}.",
        )
    elif name == "lstm":
        _require(
            cfg["activation"] == "tanh",
            f"model.activation={cfg['activation']!r} does not apply to model=lstm: the LSTM "
            "cell's nonlinearities are fixed (sigmoid gates, tanh cell), so the activation "
            "stays tanh. To change the scale the initializers use, set init.gain (e.g. "
            "init=xavier_uniform init.gain=1.0); for a ReLU network, choose model=mlp or cnn.",
        )
        _positive_int(cfg, "layers")
        _positive_int(cfg, "hidden")
    elif name == "plain_cnn":
        _positive_int(cfg, "depth")
        _positive_int(cfg, "width")
        _positive_int(cfg, "kernel_size")
        _require(
            cfg["kernel_size"] <= 32,
            f"model.kernel_size={cfg['kernel_size']} is larger than the 32x32 image.",
        )


def build_model(model_cfg: Any, num_classes: int = 10) -> nn.Module:
    """Build the model a config names, with PyTorch's default initialization.

    The caller seeds the global RNG first when PyTorch's initialization must be reproducible;
    :func:`initbench.inits.initialize` then overwrites the weights from its own generators.
    """
    check_model_config(model_cfg)
    options = model_options(model_cfg)
    name = options.pop("name")
    return MODELS[name](num_classes=num_classes, **options)
