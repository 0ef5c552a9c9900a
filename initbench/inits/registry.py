"""Initializer names, their options, and the one walker that applies them to a model.

An initializer is registered as an :class:`InitializerSpec`: its documented public function
(``fn``), the rule the walker applies to each weight (or gate block), an optional model-level
step (Fixup, LSUV), its options with defaults, and the formula, paper and aliases that
``initbench list`` shows. Every YAML file in ``configs/init/`` lists exactly the common keys
(:data:`COMMON_KEYS`) plus that initializer's options, so that Hydra's struct mode accepts
``init.<option>=...`` overrides.

The walker (:func:`initialize`) knows module kinds, so each rule lives in one place:

* weights of ``nn.Linear``, ``nn.Conv*d`` and ``nn.ConvTranspose*d``: the initializer's rule,
  with the fans of :func:`~initbench.inits.variance_scaling.layer_fans` (groups and
  transposition accounted for);
* weights of ``nn.RNN``/``nn.GRU``/``nn.LSTM``: the rule once per gate block, fans
  (in, hidden);
* biases of all of these: the ``bias`` key (``zeros``, ``default`` = keep PyTorch's, or a
  constant; for recurrent modules the constant goes to ``bias_ih`` and ``bias_hh`` is zeroed,
  since PyTorch adds the two), then ``forget_bias`` for LSTMs;
* normalization layers (batch, group, layer, instance norm): weight 1, bias 0, running
  statistics untouched;
* every other parameter (e.g. the Fixup scalars of a ResNet block, 1-D parameters of custom
  modules) is left alone; empty tensors are skipped.

``default`` leaves every weight as PyTorch drew it (the runner seeds the global RNG before
building the model) and defaults to ``bias: default``, so it changes nothing; with
``init.bias=zeros`` (or a constant) it keeps PyTorch's weights and applies the bias rule.

Determinism: each weight parameter draws from its own ``torch.Generator`` seeded with a stable
hash of (seed, qualified parameter name), so a layer's initial weights do not depend on how
many other layers the model has or in which order they are initialized. Draws happen on the
CPU and are copied, so CPU and GPU runs of a seed start from the same weights.

Gain: ``gain: null`` means the rule in the spec's ``gain`` field: ``activation`` follows the
model's activation (:func:`activation_gain`), ``one`` means 1, ``unused`` means the initializer
has no gain (its scale is an option such as ``std``), and a non-null gain is an error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.utils import parametrize

from initbench.config import ACTIVATIONS, ConfigError
from initbench.inits.fixup import fixup_
from initbench.inits.lsuv import lsuv_
from initbench.inits.orthogonal import centre_tap, delta_orthogonal_, orthogonal_
from initbench.inits.recurrent import (
    gate_blocks,
    irnn_weight_,
    recurrent_weight_,
    recurrent_weights,
    set_forget_bias_,
    set_recurrent_bias_,
)
from initbench.inits.spectral import add_spectral_norm, spectral_scale_
from initbench.inits.variance_scaling import (
    DISTRIBUTIONS,
    MODES,
    kaiming_normal_,
    kaiming_uniform_,
    layer_fans,
    lecun_normal_,
    lecun_uniform_,
    normal_,
    truncated_normal_,
    uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
)
from initbench.models import model_options
from initbench.models.mlp import LEAKY_RELU_SLOPE

logger = logging.getLogger(__name__)

COMMON_KEYS = ("name", "gain", "bias", "spectral_norm", "forget_bias")
BIAS_CHOICES = ("zeros", "default")
GAIN_RULES = ("activation", "one", "unused")

# E[gelu(z)^2] = 0.42522148 for z ~ N(0, 1) (numerical integral; tested): the gain that keeps a
# GELU layer's pre-activation variance, by the same rule that gives √2 for ReLU
# (E[relu(z)^2] = 1/2). torch.nn.init.calculate_gain has no entry for GELU.
GELU_GAIN = 1.5335304411955344

_CONVOLUTIONAL_MODELS = ("cnn", "resnet", "plain_cnn")
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def activation_gain(activation: str) -> float:
    """The gain ``gain: null`` stands for, given the model's activation.

    ``torch.nn.init.calculate_gain`` semantics (relu √2, leaky_relu √(2/(1+0.01²)), tanh 5/3,
    sigmoid and linear 1), with two exceptions: ``selu`` gets 1, the LeCun convention that
    self-normalizing networks are derived for (Klambauer et al., 2017; PyTorch's 3/4 is not
    what they need, as its own docs warn), and ``gelu`` gets :data:`GELU_GAIN`.
    """
    if activation == "selu":
        return 1.0
    if activation == "gelu":
        return GELU_GAIN
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", LEAKY_RELU_SLOPE)
    if activation in ACTIVATIONS:
        return nn.init.calculate_gain(activation)
    raise ValueError(
        f"activation={activation!r} is not known; choose one of: {', '.join(ACTIVATIONS)}."
    )


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Option:
    """One option of an initializer: its default, a one-line help, and what values are valid."""

    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    integer: bool = False
    minimum: float | None = None  # numbers must be > minimum (>= when integer)

    def describe(self) -> str:
        return " | ".join(self.choices) if self.choices else ("int" if self.integer else "float")

    def check(self, initializer: str, key: str, value: Any) -> None:
        where = f"init.{key}={value!r} (init {initializer})"
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(
                    f"{where} is not a valid choice; choose one of: {', '.join(self.choices)}."
                )
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number ({self.help}).")
        if self.integer and not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number.")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite.")
        if self.minimum is not None:
            ok = value >= self.minimum if self.integer else value > self.minimum
            if not ok:
                bound = ">=" if self.integer else ">"
                raise ConfigError(f"{where} must be {bound} {self.minimum}.")


@dataclass
class WeightLayer:
    """A weight the walker initializes: a Linear/Conv weight or a recurrent weight parameter."""

    name: str  # module name; "<module>.<parameter>" for recurrent weights
    parameter: str  # qualified parameter name: the key of its generator
    module: nn.Module
    kind: str  # linear | conv | conv_transpose | recurrent_input | recurrent_hidden | ...
    weight: Tensor
    blocks: tuple[Tensor, ...]  # views: one per gate, or the weight itself
    fan_in: float  # per block
    fan_out: float


@dataclass
class Settings:
    """A validated init config, with defaults filled in and the gain resolved."""

    name: str
    gain: float | None
    bias: str | float
    spectral_norm: bool
    forget_bias: float | None
    options: dict[str, Any]
    batch: Tensor | None = None


Rule = Callable[[Tensor, WeightLayer, Settings, torch.Generator], None]
Finish = Callable[[nn.Module, Settings, list[WeightLayer]], dict[str, dict]]
ModelCheck = Callable[[Settings, dict[str, Any]], None]


@dataclass(frozen=True)
class InitializerSpec:
    """A registered initializer; see the module docstring for how the walker uses it."""

    name: str
    fn: Callable[..., Any] | None  # the documented public function
    summary: str
    formula: str
    paper: str
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    gain: str = "activation"  # one of GAIN_RULES
    bias: str | float = "zeros"
    forget_bias: float | None = None
    rule: Rule | None = None  # None: weights keep their current (PyTorch) values
    finish: Finish | None = None
    models: tuple[str, ...] | None = None  # model names it makes sense for; None: all
    check_model: ModelCheck | None = None
    needs_batch: bool = False


# ----------------------------------------------------------------------------- rules


def _fans(layer: WeightLayer) -> dict[str, float]:
    return {"fan_in": layer.fan_in, "fan_out": layer.fan_out}


def _zeros(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    block.zero_()


def _uniform(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    uniform_(block, s.options["bound"], generator=g)


def _normal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    normal_(block, s.options["std"], generator=g)


def _truncated_normal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    truncated_normal_(block, s.options["std"], s.options["truncation"], generator=g)


def _xavier_uniform(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    xavier_uniform_(block, s.gain, **_fans(layer), generator=g)


def _xavier_normal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    xavier_normal_(block, s.gain, **_fans(layer), generator=g)


def _kaiming_uniform(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    kaiming_uniform_(block, s.gain, s.options["mode"], **_fans(layer), generator=g)


def _kaiming_normal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    kaiming_normal_(block, s.gain, s.options["mode"], **_fans(layer), generator=g)


def _lecun_normal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    lecun_normal_(block, s.gain, **_fans(layer), generator=g)


def _lecun_uniform(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    lecun_uniform_(block, s.gain, **_fans(layer), generator=g)


def _variance_scaling(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    variance_scaling_(
        block,
        s.gain**2 * s.options["scale"],
        s.options["mode"],
        s.options["distribution"],
        **_fans(layer),
        generator=g,
    )


def _orthogonal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    orthogonal_(block, s.gain, generator=g)


def _orthonormal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    orthogonal_(block, 1.0, generator=g)


def _delta_orthogonal(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    if layer.kind == "conv":
        conv = layer.module
        delta_orthogonal_(block, s.gain, groups=conv.groups, centre=centre_tap(conv), generator=g)
    elif layer.kind == "linear":
        # A dense layer is a 1x1 "convolution": delta-orthogonal is plain orthogonal there.
        orthogonal_(block, s.gain, generator=g)
    else:
        raise ValueError(
            f"delta_orthogonal initializes convolutions (and linear layers as orthogonal); "
            f"layer {layer.name!r} is {layer.kind}. Use orthogonal for recurrent and "
            "transposed-convolution layers."
        )


def _spectral(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    base = s.options["base"]
    if base == "normal":
        normal_(block, 1.0, generator=g)
    elif base == "uniform":
        uniform_(block, 1.0, generator=g)
    # spectral_norm reads a transposed conv's (in, out/g, *k) weight along dim 1; so do we.
    spectral_scale_(block, s.gain, dim=1 if layer.kind == "conv_transpose" else 0)


def _irnn(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    irnn_weight_(
        block,
        layer.kind,
        recurrent_scale=s.options["recurrent_scale"],
        input_std=s.options["input_std"],
        generator=g,
    )


def _recurrent(block: Tensor, layer: WeightLayer, s: Settings, g: torch.Generator) -> None:
    recurrent_weight_(block, layer.kind, gain=s.gain, **_fans(layer), generator=g)


def _fixup_finish(model: nn.Module, s: Settings, layers: list[WeightLayer]) -> dict[str, dict]:
    info = fixup_(model)
    logger.info(
        "fixup branches=%d layers_per_branch=%d branch_scale=%.4f",
        info["branches"],
        info["layers_per_branch"],
        info["scale"],
    )
    return {}


def _lsuv_finish(model: nn.Module, s: Settings, layers: list[WeightLayer]) -> dict[str, dict]:
    if s.batch is None:
        raise ValueError(
            "init lsuv needs a batch of normalized training images: "
            "initialize(model, init_cfg, seed=..., batch=images)."
        )
    modules: dict[int, tuple[str, nn.Module]] = {}
    for layer in layers:
        # A recurrent module owns several WeightLayers; LSUV takes the module once.
        module_name = layer.parameter.rsplit(".", 1)[0] if "." in layer.parameter else ""
        modules.setdefault(id(layer.module), (module_name, layer.module))
    return lsuv_(
        model,
        s.batch,
        tolerance=s.options["tolerance"],
        max_tries=s.options["max_tries"],
        layers=list(modules.values()),
    )


# ----------------------------------------------------------------------------- model checks


def _check_fixup(s: Settings, model: dict[str, Any]) -> None:
    if model["norm"] != "none":
        raise ConfigError(
            f"init fixup needs model.norm=none (got model.norm={model['norm']!r}): Fixup "
            "replaces batch normalization. Set model.norm=none, or use kaiming with batch norm."
        )


def _check_delta_orthogonal(s: Settings, model: dict[str, Any]) -> None:
    name = model["name"]
    if name == "cnn":
        widths = [3, *model["channels"]]
    elif name in ("resnet", "plain_cnn"):
        widths = [3, model["width"]]
    else:
        return
    for before, after in zip(widths, widths[1:], strict=False):
        if after < before:
            raise ConfigError(
                f"init delta_orthogonal needs every conv to have out_channels >= in_channels; "
                f"model {name} has a conv {before} -> {after}. Widen the model or use orthogonal."
            )


# ----------------------------------------------------------------------------- the registry

_GAIN_HELP = "null: follow model.activation"
_MODE = Option("fan_in", "fan_in keeps forward variance, fan_out backward", ("fan_in", "fan_out"))

_SPECS = [
    InitializerSpec(
        "zeros",
        nn.init.zeros_,
        "every weight 0: the symmetry counter-example (all units of a layer stay identical)",
        "W = 0",
        "none; the reason initialization must be random (Rumelhart, Hinton & Williams, 1986)",
        aliases=("zero",),
        gain="unused",
    ),
    InitializerSpec(
        "uniform",
        uniform_,
        "fixed-scale uniform, whatever the layer's size",
        "W ~ U(-bound, bound)",
        "none (the pre-2010 default)",
        options={"bound": Option(0.01, "half-width a of U(-a, a)", minimum=0.0)},
        gain="unused",
    ),
    InitializerSpec(
        "normal",
        normal_,
        "fixed-scale Gaussian, whatever the layer's size",
        "W ~ N(0, std^2)",
        "Krizhevsky, Sutskever & Hinton, 2012 (AlexNet: std 0.01)",
        aliases=("gaussian", "random_normal"),
        options={"std": Option(0.01, "standard deviation", minimum=0.0)},
        gain="unused",
    ),
    InitializerSpec(
        "truncated_normal",
        truncated_normal_,
        "Gaussian cut at ±truncation·std; the values' std is smaller than std (0.88x at 2)",
        "W ~ N(0, std^2) truncated to [-truncation·std, truncation·std]",
        "TensorFlow truncated_normal; Devlin et al., 2019 (BERT, std 0.02)",
        aliases=("trunc_normal",),
        options={
            "std": Option(0.02, "std of the normal before truncation", minimum=0.0),
            "truncation": Option(2.0, "cut-off in units of std", minimum=0.0),
        },
        gain="unused",
    ),
    InitializerSpec(
        "default",
        None,
        "PyTorch's own layer initialization, untouched (the runner seeds it)",
        "Linear/Conv: W, b ~ U(±1/√fan_in); RNN: W, b ~ U(±1/√hidden)",
        "PyTorch (kaiming_uniform with a=√5)",
        aliases=("pytorch", "torch"),
        gain="unused",
        bias="default",
    ),
    InitializerSpec(
        "xavier_uniform",
        xavier_uniform_,
        "Glorot: keeps variance forward and backward (compromise) for linear/tanh nets",
        "W ~ U(±gain·√(6/(fan_in+fan_out)))",
        "Glorot & Bengio, 2010",
        aliases=("glorot_uniform", "xavier"),
    ),
    InitializerSpec(
        "xavier_normal",
        xavier_normal_,
        "Glorot, Gaussian",
        "W ~ N(0, gain^2·2/(fan_in+fan_out))",
        "Glorot & Bengio, 2010",
        aliases=("glorot_normal",),
    ),
    InitializerSpec(
        "kaiming_uniform",
        kaiming_uniform_,
        "He: keeps the variance of ReLU nets (gain √2)",
        "W ~ U(±gain·√(3/fan)), fan = fan_in | fan_out",
        "He, Zhang, Ren & Sun, 2015",
        aliases=("he_uniform",),
        options={"mode": _MODE},
    ),
    InitializerSpec(
        "kaiming_normal",
        kaiming_normal_,
        "He, Gaussian",
        "W ~ N(0, gain^2/fan), fan = fan_in | fan_out",
        "He, Zhang, Ren & Sun, 2015",
        aliases=("he_normal", "kaiming", "he"),
        options={"mode": _MODE},
    ),
    InitializerSpec(
        "lecun_normal",
        lecun_normal_,
        "variance 1/fan_in: the SELU (self-normalizing) init",
        "W ~ N(0, gain^2/fan_in), gain 1",
        "LeCun, Bottou, Orr & Müller, 1998; Klambauer et al., 2017",
        aliases=("lecun",),
        gain="one",
    ),
    InitializerSpec(
        "lecun_uniform",
        lecun_uniform_,
        "variance 1/fan_in, uniform",
        "W ~ U(±gain·√(3/fan_in)), gain 1",
        "LeCun, Bottou, Orr & Müller, 1998",
        gain="one",
    ),
    InitializerSpec(
        "variance_scaling",
        variance_scaling_,
        "the parent of Xavier, He and LeCun: choose scale, fan and distribution",
        "Var W = gain^2·scale/n, n = fan_in | fan_out | (fan_in+fan_out)/2; truncated normal "
        "cut at ±2σ' with σ' = σ/0.87962566 so that Var W is exact",
        "Keras VarianceScaling; Glorot & Bengio, 2010; He et al., 2015",
        options={
            "scale": Option(1.0, "variance numerator: 1 LeCun, 2 He (ReLU)", minimum=0.0),
            "mode": Option("fan_in", "which fan n is", MODES),
            "distribution": Option("truncated_normal", "shape of the draws", DISTRIBUTIONS),
        },
        gain="one",
    ),
    InitializerSpec(
        "orthogonal",
        orthogonal_,
        "all singular values equal gain (dynamical isometry of deep linear nets)",
        "W·Wᵀ = gain^2·I (or WᵀW), W read as out × in·∏k; per gate block for RNNs",
        "Saxe, McClelland & Ganguli, 2014",
        aliases=("saxe",),
    ),
    InitializerSpec(
        "delta_orthogonal",
        delta_orthogonal_,
        "convs: only the centre tap, an orthogonal matrix: norm-preserving convolution",
        "W[:, :, centre] = gain·H with HᵀH = I, other taps 0; linear layers orthogonal",
        "Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington, 2018",
        aliases=("convolution_delta_orthogonal", "delta"),
        models=_CONVOLUTIONAL_MODELS,
        check_model=_check_delta_orthogonal,
    ),
    InitializerSpec(
        "spectral",
        spectral_scale_,
        "draw, then rescale each weight so its largest singular value is gain",
        "W ← gain·W/σ_max(W), W drawn from base, read as out × in·∏k",
        "Miyato, Kataoka, Koyama & Yoshida, 2018 (spectral normalization)",
        aliases=("spectral_scaling",),
        options={
            "base": Option(
                "normal", "draws to rescale (default: PyTorch's)", ("normal", "uniform", "default")
            )
        },
        gain="one",
    ),
    InitializerSpec(
        "lsuv",
        lsuv_,
        "orthogonal, then rescale layer by layer to unit output variance on a real batch",
        "W_l orthogonal; then W_l ← W_l/√Var(W_l·x_l) until |Var − 1| ≤ tolerance",
        "Mishkin & Matas, 2016",
        aliases=("layer_sequential_unit_variance",),
        options={
            "tolerance": Option(0.1, "accepted |variance − 1|", minimum=0.0),
            "max_tries": Option(
                10, "rescalings per layer before giving up", integer=True, minimum=1
            ),
        },
        gain="unused",
        finish=_lsuv_finish,
        needs_batch=True,
    ),
    InitializerSpec(
        "irnn",
        irnn_weight_,
        "recurrent weights the identity, other weights N(0, input_std^2), biases 0",
        "W_hh = recurrent_scale·I per gate; W_ih, head ~ N(0, input_std^2); b = 0",
        "Le, Jaitly & Hinton, 2015",
        aliases=("identity_rnn",),
        options={
            "recurrent_scale": Option(1.0, "multiple of the identity", minimum=0.0),
            "input_std": Option(0.001, "std of the non-recurrent weights", minimum=0.0),
        },
        gain="unused",
        models=("lstm",),
    ),
    InitializerSpec(
        "recurrent",
        recurrent_weight_,
        "the LSTM recipe: Xavier inputs, orthogonal recurrence, zero biases, forget bias 1",
        "W_ih per gate ~ U(±gain·√(6/(in+hidden))); W_hh per gate orthogonal·gain; b = 0; "
        "forget-gate b = forget_bias",
        "Jozefowicz, Zaremba & Sutskever, 2015; Saxe et al., 2014; Glorot & Bengio, 2010",
        aliases=("keras_lstm",),
        gain="one",
        forget_bias=1.0,
        models=("lstm",),
    ),
    InitializerSpec(
        "fixup",
        fixup_,
        "ResNet without normalization: zero the branch ends, shrink the branch starts",
        "He init; last layer of each branch 0, the others ×L^(-1/(2m-2)); classifier 0; "
        "scalar biases 0, multiplier 1",
        "Zhang, Dauphin & Ma, 2019",
        options={
            "mode": Option(
                "fan_in", "fan of the He init (the authors' code: fan_out)", ("fan_in", "fan_out")
            )
        },
        models=("resnet",),
        check_model=_check_fixup,
        finish=_fixup_finish,
    ),
]

_RULES: dict[str, Rule] = {
    "zeros": _zeros,
    "uniform": _uniform,
    "normal": _normal,
    "truncated_normal": _truncated_normal,
    "xavier_uniform": _xavier_uniform,
    "xavier_normal": _xavier_normal,
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_normal": _kaiming_normal,
    "lecun_normal": _lecun_normal,
    "lecun_uniform": _lecun_uniform,
    "variance_scaling": _variance_scaling,
    "orthogonal": _orthogonal,
    "delta_orthogonal": _delta_orthogonal,
    "spectral": _spectral,
    "lsuv": _orthonormal,  # LSUV's step 1; the scale is irrelevant, LSUV rescales
    "irnn": _irnn,
    "recurrent": _recurrent,
    "fixup": _kaiming_normal,
}

INITIALIZERS: dict[str, InitializerSpec] = {
    spec.name: replace(spec, rule=_RULES.get(spec.name)) for spec in _SPECS
}
ALIASES: dict[str, str] = {
    alias: spec.name for spec in INITIALIZERS.values() for alias in spec.aliases
}


def _valid_names() -> str:
    aliases = ", ".join(f"{alias} (= {name})" for alias, name in ALIASES.items())
    return f"{', '.join(INITIALIZERS)}; aliases: {aliases}"


def get_initializer(name: str) -> InitializerSpec:
    """The spec registered under ``name`` or one of its aliases."""
    if name in INITIALIZERS:
        return INITIALIZERS[name]
    if name in ALIASES:
        return INITIALIZERS[ALIASES[name]]
    raise ConfigError(
        f"init.name={name!r} is not an initializer; choose one of: {_valid_names()}."
    )


# ----------------------------------------------------------------------------- validation


def _plain(cfg: Any, what: str) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return {k: list(v) if isinstance(v, ListConfig) else v for k, v in cfg.items()}
    raise TypeError(f"{what} must be a mapping (DictConfig or dict), got {type(cfg).__name__}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _settings(init_cfg: Any, activation: str | None) -> tuple[InitializerSpec, Settings]:
    """Validate an init config against its initializer; fill defaults; resolve the gain."""
    cfg = _plain(init_cfg, "init config")
    if "name" not in cfg:
        raise ConfigError(f"init config has no name; choose one of: {_valid_names()}.")
    spec = get_initializer(cfg["name"])
    valid = (*COMMON_KEYS, *spec.options)
    unknown = [key for key in cfg if key not in valid]
    if unknown:
        raise ConfigError(
            f"init {spec.name} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid)}."
        )

    gain = cfg.get("gain")
    if gain is not None:
        if spec.gain == "unused":
            scale = ", ".join(spec.options) or "none"
            raise ConfigError(
                f"init.gain={gain!r}: init {spec.name} has no gain (its scale options: "
                f"{scale}); set init.gain=null."
            )
        if not _is_number(gain) or not math.isfinite(gain) or gain <= 0:
            raise ConfigError(f"init.gain={gain!r} must be a positive number or null.")
    elif spec.gain == "activation":
        if activation is None:
            warnings.warn(
                f"init {spec.name}: the model has no .activation attribute, so gain: null "
                "means 1 (linear); set model.activation or init.gain.",
                stacklevel=3,
            )
            activation = "linear"
        gain = activation_gain(activation)
    elif spec.gain == "one":
        gain = 1.0

    bias = cfg.get("bias", spec.bias)
    if not (bias in BIAS_CHOICES or (_is_number(bias) and math.isfinite(bias))):
        raise ConfigError(
            f"init.bias={bias!r} is not valid; choose one of: {', '.join(BIAS_CHOICES)}, "
            "or a number (a constant)."
        )
    spectral = cfg.get("spectral_norm", False)
    if not isinstance(spectral, bool):
        raise ConfigError(f"init.spectral_norm={spectral!r} must be true or false.")
    if spectral and spec.name == "zeros":
        raise ConfigError(
            "init=zeros with init.spectral_norm=true divides every weight by its largest "
            "singular value, 0, so the first step is NaN; spectral normalization needs weights "
            "that are not all zero: choose another initializer (e.g. init=orthogonal), or "
            "init.spectral_norm=false to watch zeros fail by symmetry alone."
        )
    forget_bias = cfg.get("forget_bias", spec.forget_bias)
    if forget_bias is not None and not (_is_number(forget_bias) and math.isfinite(forget_bias)):
        raise ConfigError(f"init.forget_bias={forget_bias!r} must be a number or null.")

    options = {key: option.default for key, option in spec.options.items()}
    for key, option in spec.options.items():
        if key in cfg:
            option.check(spec.name, key, cfg[key])
            options[key] = cfg[key]
    settings = Settings(
        name=spec.name,
        gain=float(gain) if gain is not None else None,
        bias=bias if isinstance(bias, str) else float(bias),
        spectral_norm=spectral,
        forget_bias=None if forget_bias is None else float(forget_bias),
        options=options,
    )
    return spec, settings


def check_init_config(init_cfg: Any, model_cfg: Any) -> None:
    """Check an init config and its fit with the model; raise :class:`ConfigError` if wrong.

    Catches unknown names (listing names and aliases), unknown option keys (listing that
    initializer's options), bad option values, and initializers that make no sense for the
    model: fixup without a norm-free ResNet, delta_orthogonal without convolutions (or with a
    narrowing conv), irnn/recurrent without a recurrent model, forget_bias without an LSTM.
    """
    model = model_options(model_cfg)
    spec, settings = _settings(init_cfg, model["activation"])
    model_name = model["name"]
    if spec.models is not None and model_name not in spec.models:
        raise ConfigError(
            f"init {spec.name} does not apply to model {model_name!r}; it is for: "
            f"{', '.join(spec.models)}. ({spec.summary})"
        )
    if spec.check_model is not None:
        spec.check_model(settings, model)
    if settings.forget_bias is not None and model_name != "lstm":
        raise ConfigError(
            f"init.forget_bias={settings.forget_bias} applies to model lstm only, not "
            f"{model_name!r}; set init.forget_bias=null."
        )


# ----------------------------------------------------------------------------- the walker


def parameter_generator(seed: int, parameter: str) -> torch.Generator:
    """A CPU generator seeded from (seed, qualified parameter name) by a stable hash.

    blake2b, not Python's ``hash()``, whose value for a string changes with every process.
    """
    digest = hashlib.blake2b(f"{seed}/{parameter}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Every Linear, Conv, ConvTranspose and recurrent weight of ``model``, in module order."""
    layers: list[WeightLayer] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(
                    f"layer {module_name!r} already has a parametrized weight (spectral norm?); "
                    "initialize the model before adding parametrizations."
                )
            weight = module.weight
            if not isinstance(weight, nn.Parameter) or id(weight) in seen:
                continue
            seen.add(id(weight))
            if isinstance(module, nn.Linear):
                kind = "linear"
            else:
                kind = "conv_transpose" if module.transposed else "conv"
            fan_in, fan_out = layer_fans(module)
            layers.append(
                WeightLayer(
                    module_name or type(module).__name__,
                    f"{prefix}weight",
                    module,
                    kind,
                    weight,
                    (weight,),
                    fan_in,
                    fan_out,
                )
            )
        elif isinstance(module, nn.RNNBase):
            for recurrent in recurrent_weights(module):
                if id(recurrent.tensor) in seen:
                    continue
                seen.add(id(recurrent.tensor))
                blocks = gate_blocks(recurrent.tensor, recurrent.gates)
                rows = recurrent.tensor.shape[0] // recurrent.gates
                layers.append(
                    WeightLayer(
                        f"{prefix}{recurrent.name}",
                        f"{prefix}{recurrent.name}",
                        module,
                        recurrent.kind,
                        recurrent.tensor,
                        blocks,
                        recurrent.tensor.shape[1],
                        rows,
                    )
                )
    return layers


def _apply_bias_rules(model: nn.Module, settings: Settings) -> None:
    bias = settings.bias
    found_lstm = False
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            if module.bias is None or module.bias.numel() == 0 or bias == "default":
                continue
            if bias == "zeros":
                module.bias.zero_()
            else:
                module.bias.fill_(bias)
        elif isinstance(module, nn.RNNBase):
            if module.bias and bias != "default":
                set_recurrent_bias_(module, 0.0 if bias == "zeros" else float(bias))
            if settings.forget_bias is not None:
                set_forget_bias_(module, settings.forget_bias)  # raises for GRU/RNN
                found_lstm = True
        elif isinstance(module, _NORM_LAYERS):
            weight, norm_bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if isinstance(weight, Tensor):
                weight.fill_(1.0)
            if isinstance(norm_bias, Tensor):
                norm_bias.zero_()
    if settings.forget_bias is not None and not found_lstm:
        warnings.warn(
            f"init.forget_bias={settings.forget_bias} applies to LSTM layers; "
            f"{type(model).__name__} has none, so it does nothing. Set init.forget_bias=null.",
            stacklevel=3,
        )


def _record(layer: WeightLayer, settings: Settings, extra: dict | None) -> dict[str, Any]:
    weight = layer.weight.detach().float()
    empty = weight.numel() == 0
    record = {
        "name": layer.name,
        "parameter": layer.parameter,
        "kind": layer.kind,
        "shape": list(layer.weight.shape),
        "gates": len(layer.blocks),
        "fan_in": layer.fan_in,
        "fan_out": layer.fan_out,
        "initializer": settings.name,
        "gain": settings.gain,
        "weight_mean": float("nan") if empty else float(weight.mean()),
        "weight_std": float("nan") if empty else float(weight.std(unbiased=False)),
        "spectral_norm": settings.spectral_norm and not layer.kind.startswith("recurrent"),
    }
    if extra:
        record.update(extra)
    return record


def _add_spectral_norm(model: nn.Module, layers: list[WeightLayer], seed: int) -> None:
    # spectral_norm draws its power-iteration vectors from the global RNG; a private seed keeps
    # that from shifting the runner's data-order stream.
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for layer in layers:
            # The stacked gates of a recurrent weight have no single spectral norm worth
            # bounding; orthogonal recurrent blocks already have σ_max = 1.
            if not layer.kind.startswith("recurrent"):
                add_spectral_norm(layer.module)


def initialize(
    model: nn.Module, init_cfg: Any, *, seed: int, batch: Tensor | None = None
) -> list[dict[str, Any]]:
    """Apply the initializer ``init_cfg`` names to every layer of ``model``, in place.

    Args:
        model: any module; ``model.activation`` (a name in ``ACTIVATIONS``) sets the gain of
            initializers whose gain follows the activation.
        init_cfg: a mapping from ``configs/init/<name>.yaml`` (missing keys take defaults).
        seed: the weights depend only on (seed, qualified parameter name).
        batch: normalized training images; ``lsuv`` needs it, the others ignore it.

    Returns one dict per weight (Linear/Conv weight, or recurrent ``weight_ih/hh`` parameter):
    name, parameter, kind, shape, gates, fan_in, fan_out (per gate), initializer, gain,
    weight_mean, weight_std, spectral_norm; ``lsuv`` adds variance, tries, converged, status.

    Parameters keep their identity, dtype, device and ``requires_grad``: an optimizer built
    before still owns them. With ``spectral_norm: true`` the Linear/Conv weights are then
    wrapped by ``torch.nn.utils.parametrizations.spectral_norm`` (same parameter objects; new
    state-dict keys).

    Example::

        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> model.activation = "relu"
        >>> records = initialize(model, {"name": "kaiming_normal", "mode": "fan_out"}, seed=0)
        >>> records[0]["kind"], records[0]["fan_in"], records[0]["fan_out"]
        ('linear', 8, 4)
    """
    spec, settings = _settings(init_cfg, getattr(model, "activation", None))
    settings.batch = batch
    with torch.no_grad():
        layers = weight_layers(model)
        if spec.rule is not None:
            for layer in layers:
                generator = parameter_generator(seed, layer.parameter)
                for block in layer.blocks:
                    if block.numel():
                        spec.rule(block, layer, settings, generator)
        _apply_bias_rules(model, settings)
        extras = spec.finish(model, settings, layers) if spec.finish is not None else {}
        records = [_record(layer, settings, extras.get(layer.name)) for layer in layers]
        if settings.spectral_norm:
            _add_spectral_norm(model, layers, seed)
    logger.info(
        "init name=%s gain=%s bias=%s spectral_norm=%s layers=%d",
        spec.name,
        "none" if settings.gain is None else f"{settings.gain:.4f}",
        settings.bias,
        settings.spectral_norm,
        len(records),
    )
    return records


def describe_initializers() -> list[dict[str, str]]:
    """One row per initializer, for ``initbench list``: name, aliases, formula, paper, ..."""
    rows = []
    for spec in INITIALIZERS.values():
        options = ", ".join(
            f"{key}={option.default} ({option.describe()})" for key, option in spec.options.items()
        )
        rows.append(
            {
                "name": spec.name,
                "aliases": ", ".join(spec.aliases),
                "summary": spec.summary,
                "formula": spec.formula,
                "paper": spec.paper,
                "gain": spec.gain,
                "options": options,
                "models": ", ".join(spec.models) if spec.models else "all",
            }
        )
    return rows
