"""The registry, the walker and the traps: configs, errors, fans, structure of special inits."""

from __future__ import annotations

import doctest
import importlib
import math
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from scipy import integrate, stats
from torch import nn

import initbench.config  # noqa: F401  (registers the schemas Hydra composes with)
from initbench.config import ACTIVATIONS, ConfigError
from initbench.inits import (
    INITIALIZERS,
    activation_gain,
    centre_tap,
    check_init_config,
    delta_orthogonal_,
    describe_initializers,
    get_initializer,
    initialize,
    layer_fans,
    orthogonal_,
    spectral_scale_,
)
from initbench.inits.registry import COMMON_KEYS, GELU_GAIN
from initbench.models import build_model

torch.set_num_threads(1)

INIT_DIR = Path(__file__).resolve().parent.parent / "initbench" / "configs" / "init"
YAML_NAMES = sorted(path.stem for path in INIT_DIR.glob("*.yaml"))
# A model each initializer makes sense for, for the checks that need one.
FITTING_MODEL = {
    "fixup": {"name": "resnet", "norm": "none", "blocks": [1, 1], "width": 4},
    "irnn": {"name": "lstm", "hidden": 8},
    "recurrent": {"name": "lstm", "hidden": 8},
    "delta_orthogonal": {"name": "plain_cnn", "depth": 2, "width": 4},
}
SMALL_CNN = {"name": "cnn", "channels": [4, 8], "hidden": 16}


def fitting_model(name: str) -> dict:
    return FITTING_MODEL.get(name, SMALL_CNN)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", list(INITIALIZERS))
def test_every_initializer_has_a_yaml_listing_every_option(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(INIT_DIR / f"{name}.yaml"))
    spec = INITIALIZERS[name]
    assert list(cfg) == [*COMMON_KEYS, *spec.options]
    assert cfg["name"] == name
    for key, option in spec.options.items():
        assert cfg[key] == option.default, key
    assert cfg["bias"] == spec.bias and cfg["forget_bias"] == spec.forget_bias
    text = (INIT_DIR / f"{name}.yaml").read_text()
    for key in cfg:
        if key != "name":
            line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
            assert "#" in line, f"{name}.yaml: {key} has no comment"


@pytest.fixture(scope="module")
def compose():
    from hydra import compose, initialize_config_module

    with initialize_config_module("initbench.configs", version_base="1.3"):
        yield compose


@pytest.mark.parametrize("yaml_name", YAML_NAMES)
def test_every_init_yaml_composes_through_hydra_and_validates(compose, yaml_name: str) -> None:
    cfg = compose("config", overrides=[f"init={yaml_name}"])
    name = get_initializer(cfg.init.name).name
    model = OmegaConf.create(fitting_model(name))
    check_init_config(cfg.init, model)
    torch.manual_seed(0)
    records = initialize(build_model(model), cfg.init, seed=0, batch=torch.randn(8, 3, 32, 32))
    assert records and all(math.isfinite(r["weight_std"]) for r in records)


def test_hydra_overrides_reach_the_initializer(compose) -> None:
    cfg = compose("config", overrides=["init=kaiming", "init.mode=fan_out", "init.gain=1.5"])
    assert cfg.init.name == "kaiming_normal" and cfg.init.mode == "fan_out"
    model = nn.Sequential(nn.Linear(400, 300))
    records = initialize(model, cfg.init, seed=0)
    assert records[0]["gain"] == 1.5
    assert records[0]["weight_std"] == pytest.approx(1.5 / math.sqrt(300), rel=0.02)


def test_aliases_resolve_to_their_initializer() -> None:
    assert get_initializer("glorot_uniform").name == "xavier_uniform"
    assert get_initializer("glorot_normal").name == "xavier_normal"
    assert get_initializer("he_normal").name == "kaiming_normal"
    assert get_initializer("he_uniform").name == "kaiming_uniform"
    assert get_initializer("xavier").name == "xavier_uniform"
    assert get_initializer("kaiming").name == "kaiming_normal"
    aliases = [alias for spec in INITIALIZERS.values() for alias in spec.aliases]
    assert len(aliases) == len(set(aliases)) and not set(aliases) & set(INITIALIZERS)


def test_describe_initializers_rows() -> None:
    rows = describe_initializers()
    assert [row["name"] for row in rows] == list(INITIALIZERS)
    for row in rows:
        for column in ("name", "aliases", "formula", "paper", "options", "gain"):
            assert column in row
        assert row["formula"] and row["paper"]
    kaiming = next(row for row in rows if row["name"] == "kaiming_normal")
    assert "he_normal" in kaiming["aliases"] and "mode=fan_in" in kaiming["options"]


@pytest.mark.parametrize(
    "module", ["registry", "variance_scaling", "orthogonal", "spectral", "lsuv", "fixup"]
)
def test_docstring_examples_run(module: str) -> None:
    results = doctest.testmod(importlib.import_module(f"initbench.inits.{module}"))
    assert results.attempted > 0 and results.failed == 0


def test_every_public_initializer_has_a_documented_formula_and_paper() -> None:
    for spec in INITIALIZERS.values():
        if spec.fn is None or spec.fn is nn.init.zeros_:
            continue
        doc = spec.fn.__doc__ or ""
        assert doc.splitlines()[0].strip(), spec.name
        assert any(char.isdigit() for char in doc), f"{spec.name}: no paper year"


# ----------------------------------------------------------------------------- errors


def _error(init_cfg: dict, model_cfg: dict | None = None) -> str:
    with pytest.raises(ConfigError) as error:
        check_init_config(init_cfg, model_cfg or SMALL_CNN)
    return str(error.value)


def test_unknown_name_lists_names_and_aliases() -> None:
    message = _error({"name": "glorot"})
    assert "'glorot'" in message
    for text in ("xavier_uniform", "kaiming_normal", "lsuv", "glorot_uniform", "he_normal"):
        assert text in message


def test_unknown_option_lists_the_initializers_options() -> None:
    message = _error({"name": "kaiming_normal", "nonlinearity": "relu"})
    assert "'nonlinearity'" in message and "mode" in message and "gain" in message
    message = _error({"name": "lsuv", "mode": "fan_in"})
    assert "'mode'" in message and "tolerance" in message and "max_tries" in message


@pytest.mark.parametrize(
    ("init_cfg", "expected"),
    [
        ({"name": "kaiming_normal", "mode": "fan_avg"}, ["'fan_avg'", "fan_in", "fan_out"]),
        ({"name": "variance_scaling", "distribution": "cauchy"}, ["'cauchy'", "uniform"]),
        ({"name": "variance_scaling", "scale": -1.0}, ["init.scale=-1.0", "> 0"]),
        ({"name": "lsuv", "max_tries": 2.5}, ["init.max_tries=2.5", "whole number"]),
        ({"name": "lsuv", "tolerance": 0}, ["init.tolerance=0"]),
        ({"name": "normal", "std": "big"}, ["init.std='big'", "number"]),
        ({"name": "normal", "gain": 2.0}, ["init.gain=2.0", "std", "null"]),
        ({"name": "xavier_uniform", "gain": -1}, ["init.gain=-1"]),
        ({"name": "xavier_uniform", "bias": "ones"}, ["'ones'", "zeros", "default"]),
        ({"name": "xavier_uniform", "spectral_norm": "yes"}, ["'yes'", "true or false"]),
        ({"name": "xavier_uniform", "forget_bias": 1.0}, ["forget_bias=1.0", "lstm"]),
        ({"name": "spectral", "base": "orthogonal"}, ["'orthogonal'", "normal", "uniform"]),
    ],
)
def test_bad_option_values_name_the_value_and_the_choices(init_cfg: dict, expected: list) -> None:
    message = _error(init_cfg)
    for text in expected:
        assert text in message


@pytest.mark.parametrize(
    ("init_cfg", "model_cfg", "expected"),
    [
        ({"name": "fixup"}, {"name": "resnet", "norm": "batch"}, ["norm=none", "'batch'"]),
        ({"name": "fixup"}, {"name": "mlp"}, ["'mlp'", "resnet"]),
        ({"name": "delta_orthogonal"}, {"name": "mlp"}, ["'mlp'", "cnn", "plain_cnn"]),
        ({"name": "delta_orthogonal"}, {"name": "lstm"}, ["'lstm'", "plain_cnn"]),
        ({"name": "delta_orthogonal"}, {"name": "cnn", "channels": [16, 8]}, ["16 -> 8"]),
        ({"name": "irnn"}, {"name": "cnn"}, ["'cnn'", "lstm"]),
        ({"name": "recurrent"}, {"name": "resnet"}, ["'resnet'", "lstm"]),
    ],
)
def test_initializers_that_make_no_sense_for_the_model(init_cfg, model_cfg, expected) -> None:
    message = _error(init_cfg, model_cfg)
    for text in expected:
        assert text in message


def test_config_validate_calls_both_checks(compose) -> None:
    from initbench.config import validate

    cfg = compose("config", overrides=["init=fixup", "model=resnet20"])
    with pytest.raises(ConfigError, match="norm=none"):
        validate(cfg)


# ----------------------------------------------------------------------------- gains


def test_activation_gains() -> None:
    assert activation_gain("relu") == pytest.approx(math.sqrt(2))
    assert activation_gain("tanh") == pytest.approx(5 / 3)
    assert activation_gain("linear") == 1.0 and activation_gain("sigmoid") == 1.0
    assert activation_gain("selu") == 1.0  # LeCun convention, not torch's 3/4
    assert activation_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    for name in ACTIVATIONS:
        assert activation_gain(name) > 0
    with pytest.raises(ValueError, match="'swish'.*relu"):
        activation_gain("swish")


def test_gelu_gain_keeps_unit_variance() -> None:
    # gain^2 * E[gelu(z)^2] = 1 for z ~ N(0, 1): the ReLU rule (2 * 1/2 = 1) applied to GELU.
    def integrand(z: float) -> float:
        return (z * stats.norm.cdf(z)) ** 2 * stats.norm.pdf(z)

    second_moment = integrate.quad(integrand, -math.inf, math.inf, epsabs=1e-13)[0]
    assert GELU_GAIN**2 * second_moment == pytest.approx(1.0, abs=1e-9)


def test_gain_follows_the_model_activation() -> None:
    for activation, gain in [("relu", math.sqrt(2)), ("tanh", 5 / 3), ("selu", 1.0)]:
        model = build_model({"name": "mlp", "depth": 1, "width": 8, "activation": activation})
        records = initialize(model, {"name": "orthogonal"}, seed=0)
        assert records[0]["gain"] == pytest.approx(gain)
    model = build_model({"name": "mlp", "depth": 1, "width": 8, "activation": "tanh"})
    assert initialize(model, {"name": "lecun_normal"}, seed=0)[0]["gain"] == 1.0
    assert initialize(model, {"name": "normal"}, seed=0)[0]["gain"] is None


# ----------------------------------------------------------------------------- traps


class OddModel(nn.Module):
    """Layers without bias, empty layers, 1-D parameters, norms, grouped and transposed convs."""

    activation = "relu"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.norm = nn.BatchNorm2d(8)
        self.group_norm = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.empty = nn.Linear(4, 0)
        self.no_inputs = nn.Linear(0, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.layer_norm = nn.LayerNorm(10, elementwise_affine=False)
        self.temperature = nn.Parameter(torch.full((1,), 3.0))
        self.offsets = nn.Parameter(torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group_norm(self.grouped(torch.relu(self.norm(self.conv(x)))))
        x = self.up(x).mean(dim=(2, 3))
        _ = self.empty(x)
        x = x + self.no_inputs(x[:, :0])
        return self.layer_norm(self.head(x)) * self.temperature


GENERIC = [
    name for name in INITIALIZERS if name not in ("fixup", "irnn", "recurrent", "delta_orthogonal")
]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # PyTorch's constructor
@pytest.mark.parametrize("name", GENERIC)
def test_model_wide_pass_on_odd_layers(name: str) -> None:
    torch.manual_seed(0)
    model = OddModel()
    with torch.no_grad():
        model.norm.weight.fill_(5.0)
        model.group_norm.bias.fill_(2.0)
    batch = torch.randn(4, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LSUV warns about the layers it cannot scale
        records = initialize(model, {"name": name}, seed=0, batch=batch)
    assert model.temperature.item() == 3.0  # 1-D parameters outside known layers: untouched
    assert torch.equal(model.norm.weight, torch.ones(8))
    assert torch.equal(model.group_norm.bias, torch.zeros(8))
    assert {r["name"] for r in records} >= {"conv", "grouped", "up", "empty", "no_inputs", "head"}
    assert torch.isfinite(model(batch)).all()
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()


def test_grouped_and_transposed_conv_fans() -> None:
    grouped = nn.Conv2d(8, 16, 3, groups=4)  # weight (16, 2, 3, 3)
    assert layer_fans(grouped) == (2 * 9, 4 * 9)
    # torch.nn.init counts every output channel as fed by each input: fan_out 16*9, not 4*9.
    assert nn.init._calculate_fan_in_and_fan_out(grouped.weight) == (18, 144)
    depthwise = nn.Conv2d(8, 8, 5, groups=8)
    assert layer_fans(depthwise) == (25, 25)
    transposed = nn.ConvTranspose2d(8, 16, 3, groups=4)  # weight (8, 4, 3, 3)
    assert layer_fans(transposed) == (2 * 9, 4 * 9)
    # torch.nn.init reads (8, 4, 3, 3) as a conv's (out, in): fan_in and fan_out swapped.
    assert nn.init._calculate_fan_in_and_fan_out(transposed.weight) == (36, 72)
    assert layer_fans(nn.Conv1d(6, 9, 4)) == (24, 36)
    with pytest.warns(UserWarning, match=r"no \.activation attribute, so gain: null means 1"):
        records = initialize(nn.Sequential(grouped), {"name": "kaiming_normal"}, seed=0)
    assert (records[0]["fan_in"], records[0]["fan_out"]) == (18, 36)
    assert records[0]["gain"] == 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(64, 128, 3, groups=8),
        lambda: nn.Conv2d(512, 512, 5, groups=512),
        lambda: nn.ConvTranspose2d(64, 128, 3, groups=4),
        lambda: nn.ConvTranspose2d(96, 32, 3),
    ],
    ids=["grouped", "depthwise", "transposed_grouped", "transposed"],
)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_fans_keep_the_variance_they_promise(make, mode: str) -> None:
    """He with gain 1: fan_in keeps the forward variance, fan_out the backward one (stride 1).

    Interior positions only, where every output sees the full kernel. The realized variance
    varies with the drawn weights by about sqrt(2 / numel(W)) relative (a chi-square sum), at most
    1.4% for these layers, so the 10% tolerance is more than 7 standard errors.
    """
    layer = make()
    layer.activation = "linear"
    initialize(layer, {"name": "kaiming_normal", "mode": mode, "bias": "zeros"}, seed=1)
    x = torch.randn(16, layer.in_channels, 20, 20, requires_grad=True)
    y = layer(x)
    edge = layer.kernel_size[0] - 1  # positions closer to the border see part of the kernel
    if mode == "fan_in":
        assert y[:, :, edge:-edge, edge:-edge].var().item() == pytest.approx(1.0, rel=0.1)
    else:
        upstream = torch.randn_like(y)
        (y * upstream).sum().backward()
        assert x.grad[:, :, edge:-edge, edge:-edge].var().item() == pytest.approx(1.0, rel=0.1)


def test_parameters_keep_identity_dtype_device_and_requires_grad() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet", "blocks": [1, 1], "width": 4})
    model.stem[0].weight.requires_grad_(False)
    before = {
        name: (p, p.dtype, p.device, p.requires_grad) for name, p in model.named_parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    batch = torch.randn(4, 3, 32, 32)
    for name in ("kaiming_normal", "orthogonal", "lsuv", "spectral"):
        initialize(model, {"name": name}, seed=0, batch=batch)
        for key, parameter in model.named_parameters():
            tensor, dtype, device, requires_grad = before[key]
            assert parameter is tensor
            assert (parameter.dtype, parameter.device) == (dtype, device)
            assert parameter.requires_grad == requires_grad
    after_init = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(batch), torch.arange(4))
    loss.backward()
    optimizer.step()
    head = dict(model.named_parameters())["classifier.weight"]
    assert not torch.equal(head, after_init["classifier.weight"])  # the optimizer trained it
    assert torch.equal(model.stem[0].weight, after_init["stem.0.weight"])  # frozen stays


def test_spectral_norm_option_wraps_the_same_parameters() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16})
    originals = {name: p for name, p in model.named_parameters()}
    records = initialize(model, {"name": "kaiming_normal", "spectral_norm": True}, seed=0)
    assert all(r["spectral_norm"] for r in records)
    from torch.nn.utils import parametrize

    conv = model.features[0]
    assert parametrize.is_parametrized(conv, "weight")
    assert conv.parametrizations.weight.original is originals["features.0.weight"]
    model.eval()
    sigma = torch.linalg.matrix_norm(model.classifier.weight.detach(), ord=2).item()
    assert sigma == pytest.approx(1.0, rel=0.05)  # power iteration: an estimate of σ_max
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    with pytest.raises(ValueError, match="parametrized"):
        initialize(model, {"name": "kaiming_normal"}, seed=0)


def test_bias_rules() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 1, "width": 8})
    pytorch_bias = model.classifier.bias.detach().clone()
    initialize(model, {"name": "xavier_uniform", "bias": "default"}, seed=0)
    assert torch.equal(model.classifier.bias, pytorch_bias)
    initialize(model, {"name": "xavier_uniform", "bias": 0.25}, seed=0)
    assert torch.all(model.classifier.bias == 0.25)
    initialize(model, {"name": "xavier_uniform"}, seed=0)
    assert torch.all(model.classifier.bias == 0)


def test_default_init_keeps_pytorch_weights_and_biases() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    records = initialize(model, {"name": "default"}, seed=123)
    assert len(records) == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    initialize(model, {"name": "default", "bias": "zeros"}, seed=0)
    assert torch.equal(model.classifier.weight, state["classifier.weight"])
    assert torch.all(model.classifier.bias == 0)


def test_recurrent_biases_forget_gate_and_fans() -> None:
    model = build_model({"name": "lstm", "hidden": 16, "layers": 2})
    records = initialize(model, {"name": "recurrent"}, seed=0)
    by_name = {r["name"]: r for r in records}
    assert (by_name["rnn.weight_ih_l0"]["fan_in"], by_name["rnn.weight_ih_l0"]["fan_out"]) == (
        96,
        16,
    )
    assert by_name["rnn.weight_hh_l1"]["gates"] == 4
    for layer in (0, 1):
        bias_ih = getattr(model.rnn, f"bias_ih_l{layer}")
        bias_hh = getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.all(bias_ih[16:32] == 1.0) and torch.all(bias_hh[16:32] == 0.0)
        assert torch.all(bias_ih[:16] == 0) and torch.all(bias_ih[32:] == 0)
    # A constant bias is the total per gate: PyTorch adds bias_ih and bias_hh.
    initialize(model, {"name": "xavier_uniform", "bias": 0.5}, seed=0)
    assert torch.all(model.rnn.bias_ih_l0 == 0.5) and torch.all(model.rnn.bias_hh_l0 == 0)
    gru = nn.GRU(4, 4)
    with pytest.raises(ValueError, match="GRU.*forget_bias"):
        initialize(gru, {"name": "orthogonal", "gain": 1.0, "forget_bias": 1.0}, seed=0)


def test_weights_depend_only_on_seed_and_layer_name() -> None:
    def layer_weights(depth: int, seed: int, name: str = "kaiming_normal") -> dict:
        torch.manual_seed(depth)  # PyTorch's own init differs between the builds
        model = build_model({"name": "mlp", "depth": depth, "width": 32})
        initialize(model, {"name": name}, seed=seed)
        return {k: v.clone() for k, v in model.named_parameters()}

    shallow, deep = layer_weights(2, seed=7), layer_weights(5, seed=7)
    for key in ("hidden.0.weight", "hidden.2.weight"):
        assert torch.equal(shallow[key], deep[key])
    assert not torch.equal(shallow["hidden.0.weight"], layer_weights(2, seed=8)["hidden.0.weight"])
    assert not torch.equal(shallow["hidden.0.weight"][:, :32], shallow["hidden.2.weight"])
    for name in ("orthogonal", "xavier_uniform", "variance_scaling", "spectral"):
        assert torch.equal(
            layer_weights(2, 3, name)["hidden.2.weight"],
            layer_weights(4, 3, name)["hidden.2.weight"],
        )

    # Same for recurrent layers: layer 0 of a 1- and a 3-layer LSTM.
    def lstm_weights(layers: int) -> torch.Tensor:
        model = build_model({"name": "lstm", "hidden": 8, "layers": layers})
        initialize(model, {"name": "recurrent"}, seed=1)
        return model.rnn.weight_hh_l0.detach().clone()

    assert torch.equal(lstm_weights(1), lstm_weights(3))


# ----------------------------------------------------------------------------- orthogonal


def _gram_is_identity(matrix: torch.Tensor, gain: float, atol: float) -> None:
    matrix = matrix.double()
    if matrix.shape[0] <= matrix.shape[1]:
        gram = matrix @ matrix.T
    else:
        gram = matrix.T @ matrix
    identity = torch.eye(gram.shape[0], dtype=torch.float64) * gain**2
    assert torch.allclose(gram, identity, atol=atol), (gram - identity).abs().max()


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Linear(40, 24),
        lambda: nn.Linear(24, 40),
        lambda: nn.Conv2d(8, 16, 3),
        lambda: nn.Conv2d(64, 8, 3),
    ],
    ids=["wide", "tall", "conv", "conv_wide"],
)
def test_orthogonal_rows_or_columns(make) -> None:
    layer = make()
    layer.activation = "tanh"
    initialize(layer, {"name": "orthogonal"}, seed=0)
    _gram_is_identity(layer.weight.detach().reshape(layer.weight.shape[0], -1), 5 / 3, 1e-5)


@pytest.mark.parametrize("module", [nn.LSTM(12, 20, num_layers=2), nn.GRU(30, 20)])
def test_orthogonal_per_gate_block(module: nn.RNNBase) -> None:
    module.activation = "linear"
    initialize(module, {"name": "orthogonal"}, seed=0)
    gates = 4 if isinstance(module, nn.LSTM) else 3
    for name, parameter in module.named_parameters():
        if name.startswith("weight"):
            for block in parameter.detach().chunk(gates, 0):
                _gram_is_identity(block, 1.0, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qr_initializers_on_half_precision_models(dtype: torch.dtype) -> None:
    model = build_model({"name": "plain_cnn", "depth": 2, "width": 8, "activation": "tanh"})
    model = model.to(dtype)
    initialize(model, {"name": "delta_orthogonal", "gain": 1.0}, seed=0)
    conv = model.features[2]
    assert conv.weight.dtype == dtype
    _gram_is_identity(conv.weight.detach()[:, :, 1, 1].float(), 1.0, 3e-2)
    lstm = build_model({"name": "lstm", "hidden": 8}).to(dtype)
    initialize(lstm, {"name": "orthogonal", "gain": 1.0}, seed=0)
    for block in lstm.rnn.weight_hh_l0.detach().float().chunk(4, 0):
        _gram_is_identity(block, 1.0, 3e-2)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32, dtype=dtype))).all()


# ----------------------------------------------------------------------------- delta-orthogonal


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_delta_orthogonal_conv_preserves_the_norm(kernel_size: int, padding_mode: str) -> None:
    """Only the aligned tap is non-zero, so y_p = H x_p at every position p: ||y|| = ||x||.

    With zero padding too, as long as the tap is the one 'same' padding lines up with: a wrong
    tap would shift the image by a pixel and push a border row out.
    """
    conv = nn.Conv2d(6, 10, kernel_size, padding="same", padding_mode=padding_mode, bias=False)
    delta_orthogonal_(
        conv.weight, generator=torch.Generator().manual_seed(0), centre=centre_tap(conv)
    )
    x = torch.randn(3, 6, 9, 9)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch: even kernels with 'same' copy the input
        y = conv(x)
    assert y.norm().item() == pytest.approx(x.norm().item(), rel=1e-5)
    tap = (kernel_size - 1) // 2
    centre = conv.weight.detach()[:, :, tap, tap]
    assert torch.allclose(y, torch.einsum("oi,nihw->nohw", centre, x), atol=1e-5)


def test_delta_orthogonal_centre_for_even_kernels_and_explicit_padding() -> None:
    # PyTorch pads 'same' with (k-1)//2 before: k=4 -> tap 1; k=2 -> tap 0.
    assert centre_tap(nn.Conv2d(1, 1, 4, padding="same")) == (1, 1)
    assert centre_tap(nn.Conv2d(1, 1, 2, padding="same")) == (0, 0)
    assert centre_tap(nn.Conv2d(1, 1, (3, 5), padding=(1, 2))) == (1, 2)
    assert centre_tap(nn.Conv2d(1, 1, 4, padding=2)) == (2, 2)
    assert centre_tap(nn.Conv2d(1, 1, 3, padding="valid")) == (0, 0)


def test_delta_orthogonal_grouped_conv_and_model_walk() -> None:
    conv = nn.Conv2d(8, 12, 3, padding=1, padding_mode="circular", groups=2, bias=False)
    conv.activation = "linear"
    initialize(conv, {"name": "delta_orthogonal"}, seed=0)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert conv(x).norm().item() == pytest.approx(x.norm().item(), rel=1e-5)
    weight = conv.weight.detach()
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[:, :, 1, 1] = False
    assert torch.all(weight[mask] == 0)


def test_delta_orthogonal_refuses_narrowing_and_transposed_convs() -> None:
    with pytest.raises(ValueError, match="out_channels >= in_channels.*8 < 16"):
        delta_orthogonal_(nn.Conv2d(16, 8, 3).weight)
    with pytest.raises(ValueError, match="orthogonal_ for linear"):
        delta_orthogonal_(torch.empty(4, 4))
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3))
    with pytest.raises(ValueError, match="conv_transpose.*orthogonal"):
        initialize(model, {"name": "delta_orthogonal", "gain": 1.0}, seed=0)


# ----------------------------------------------------------------------------- spectral


@pytest.mark.parametrize("gain", [1.0, 0.5, 3.0])
def test_spectral_largest_singular_value_is_the_gain(gain: float) -> None:
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16})
    initialize(model, {"name": "spectral", "gain": gain}, seed=0)
    for layer in (model.features[0], model.features[3], model.hidden[0], model.classifier):
        matrix = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(matrix, ord=2).item() == pytest.approx(gain, rel=1e-5)
    lstm = build_model({"name": "lstm", "hidden": 8})
    initialize(lstm, {"name": "spectral", "gain": gain, "base": "default"}, seed=0)
    for block in lstm.rnn.weight_ih_l0.detach().chunk(4, 0):
        assert torch.linalg.matrix_norm(block, ord=2).item() == pytest.approx(gain, rel=1e-5)


def test_spectral_on_an_all_zero_weight_warns_and_stays_finite() -> None:
    weight = torch.zeros(5, 3)
    with pytest.warns(UserWarning, match="largest singular value 0"):
        spectral_scale_(weight, 2.0)
    assert torch.equal(weight, torch.zeros(5, 3))
    spectral_scale_(torch.zeros(0, 3))  # empty: nothing to do, no warning needed
    half = torch.randn(6, 4).to(torch.bfloat16)
    spectral_scale_(half, 1.0)
    assert torch.linalg.matrix_norm(half.float(), ord=2).item() == pytest.approx(1.0, rel=1e-2)


def test_orthogonal_rejects_one_dimensional_tensors() -> None:
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(5,\)"):
        orthogonal_(torch.empty(5))


# ----------------------------------------------------------------------------- fixup and irnn


def test_fixup_every_residual_branch_outputs_zero() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet", "blocks": [2, 2, 1], "width": 16, "norm": "none"})
    initialize(model, {"name": "fixup"}, seed=0)
    inputs = {}
    for block in model.residual_blocks:
        block.register_forward_pre_hook(lambda module, args: inputs.setdefault(module, args[0]))
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
        assert len(inputs) == 5
        for block, x in inputs.items():
            assert torch.all(block.branch(x) == 0)
    assert torch.all(logits == 0)  # classifier zero
    # Branch starts: He normal (fan_in 16*9, gain √2) scaled by L^(-1/2), L = 5 branches.
    first = model.residual_blocks[0].conv1.weight.detach()
    expected = math.sqrt(2 / 144) * 5**-0.5
    assert first.std().item() == pytest.approx(expected, rel=0.1)
    assert model.stem[0].weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.15)


def test_fixup_refuses_batch_norm_models_at_initialize() -> None:
    model = build_model({"name": "resnet", "blocks": [1], "width": 4})
    with pytest.raises(ValueError, match="norm=none"):
        initialize(model, {"name": "fixup"}, seed=0)


def test_irnn_recurrent_weights_are_the_identity() -> None:
    model = build_model({"name": "lstm", "hidden": 8, "layers": 2})
    initialize(model, {"name": "irnn", "recurrent_scale": 0.5}, seed=0)
    for layer in (0, 1):
        for block in getattr(model.rnn, f"weight_hh_l{layer}").detach().chunk(4, 0):
            assert torch.equal(block, 0.5 * torch.eye(8))
    assert torch.all(model.rnn.bias_ih_l0 == 0)
