"""Every random initializer draws from the distribution it promises.

For each initializer and each layer shape (linear, conv, recurrent input and recurrent hidden
weights), the test derives the promised distribution from the formula and the layer's fans,
written out here independently of the library, and checks the drawn weights against it:

* mean within 6 standard errors of 0, SE = σ/√n;
* variance within 6 standard errors of σ², SE = √((μ₄ − σ⁴)/n), the large-sample standard
  error of a sample variance (σ²√(2/n) for a normal, σ²√(0.8/n) for a uniform), with μ₄ the
  promised distribution's fourth central moment;
* a Kolmogorov-Smirnov test against the promised CDF, p > 1e-3.

With tens of thousands of weights per layer, a wrong fan (e.g. stacked LSTM gates counted as
one matrix, or torch's groups-blind fan_out) or a missing truncation correction moves the
variance by far more than 6 standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from initbench.inits import TRUNCATED_NORMAL_STD, initialize
from initbench.models import build_model

torch.set_num_threads(1)

RELU_GAIN = math.sqrt(2.0)
# Std of N(0, 1) truncated to ±2, from scipy rather than from the library's constant.
STD_TRUNCATED_AT_2 = stats.truncnorm(-2, 2).std()


def uniform(bound: float):
    return stats.uniform(loc=-bound, scale=2 * bound)


def normal(std: float):
    return stats.norm(scale=std)


def truncated(std_before: float, cut: float):
    return stats.truncnorm(-cut, cut, scale=std_before)


# Each shape gives (module to initialize, how to pick the weight, fan_in, fan_out).
SHAPES: dict[str, tuple[Callable[[], nn.Module], str, int, int]] = {
    "linear": (lambda: nn.Linear(300, 200), "weight", 300, 200),
    "conv": (lambda: nn.Conv2d(24, 40, 5), "weight", 24 * 25, 40 * 25),
    # Per gate block: fan_in = input size (or hidden), fan_out = hidden, not 4 * hidden.
    "recurrent_input": (lambda: nn.LSTM(48, 64), "weight_ih_l0", 48, 64),
    "recurrent_hidden": (lambda: nn.LSTM(48, 64), "weight_hh_l0", 64, 64),
}
ALL_SHAPES = list(SHAPES)
NOT_HIDDEN = ["linear", "conv", "recurrent_input"]


def _variance_scaling_cases() -> list:
    cases = []
    for mode in ("fan_in", "fan_out", "fan_avg"):
        for distribution in ("normal", "truncated_normal", "uniform"):

            def promised(fan_in, fan_out, mode=mode, distribution=distribution):
                n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
                std = math.sqrt(2.0 / n[mode])  # scale 2
                if distribution == "normal":
                    return normal(std)
                if distribution == "uniform":
                    return uniform(math.sqrt(3) * std)
                return truncated(std / STD_TRUNCATED_AT_2, 2.0)

            cfg = {"name": "variance_scaling", "scale": 2.0, "mode": mode}
            cfg["distribution"] = distribution
            cases.append(
                (f"variance_scaling-{distribution}-{mode}", cfg, "relu", promised, ALL_SHAPES)
            )
    return cases


CASES = [
    (
        "uniform",
        {"name": "uniform", "bound": 0.05},
        "relu",
        lambda i, o: uniform(0.05),
        ALL_SHAPES,
    ),
    ("normal", {"name": "normal", "std": 0.02}, "relu", lambda i, o: normal(0.02), ALL_SHAPES),
    (
        "truncated_normal",
        {"name": "truncated_normal", "std": 0.1, "truncation": 1.5},
        "relu",
        lambda i, o: truncated(0.1, 1.5),
        ALL_SHAPES,
    ),
    (
        "xavier_uniform",
        {"name": "xavier_uniform"},
        "relu",
        lambda i, o: uniform(RELU_GAIN * math.sqrt(6 / (i + o))),
        ALL_SHAPES,
    ),
    (
        "xavier_normal-gain1",
        {"name": "xavier_normal", "gain": 1.0},
        "relu",
        lambda i, o: normal(math.sqrt(2 / (i + o))),
        ALL_SHAPES,
    ),
    (
        "kaiming_uniform-fan_in",
        {"name": "kaiming_uniform", "mode": "fan_in"},
        "relu",
        lambda i, o: uniform(RELU_GAIN * math.sqrt(3 / i)),
        ALL_SHAPES,
    ),
    (
        "kaiming_uniform-fan_out",
        {"name": "kaiming_uniform", "mode": "fan_out"},
        "relu",
        lambda i, o: uniform(RELU_GAIN * math.sqrt(3 / o)),
        ALL_SHAPES,
    ),
    (
        "kaiming_normal-fan_in",
        {"name": "kaiming_normal", "mode": "fan_in"},
        "relu",
        lambda i, o: normal(RELU_GAIN / math.sqrt(i)),
        ALL_SHAPES,
    ),
    (
        "kaiming_normal-fan_out",
        {"name": "kaiming_normal", "mode": "fan_out"},
        "relu",
        lambda i, o: normal(RELU_GAIN / math.sqrt(o)),
        ALL_SHAPES,
    ),
    (
        "kaiming_normal-tanh",
        {"name": "kaiming_normal"},
        "tanh",
        lambda i, o: normal(5 / 3 / math.sqrt(i)),
        ALL_SHAPES,
    ),
    (
        "lecun_normal",
        {"name": "lecun_normal"},
        "relu",  # gain 1 whatever the activation
        lambda i, o: normal(1 / math.sqrt(i)),
        ALL_SHAPES,
    ),
    (
        "lecun_uniform",
        {"name": "lecun_uniform"},
        "selu",
        lambda i, o: uniform(math.sqrt(3 / i)),
        ALL_SHAPES,
    ),
    *_variance_scaling_cases(),
    (
        "irnn",
        {"name": "irnn", "input_std": 0.01},
        "relu",
        lambda i, o: normal(0.01),
        NOT_HIDDEN,  # recurrent blocks are the identity: checked exactly in test_inits
    ),
    (
        "recurrent",
        {"name": "recurrent", "forget_bias": None},  # no forget gate in the linear/conv cases
        "tanh",  # the recipe's gain is 1 (Keras' LSTM defaults)
        lambda i, o: uniform(math.sqrt(6 / (i + o))),
        NOT_HIDDEN,  # recurrent blocks are orthogonal: checked in test_inits
    ),
]

PARAMS = [
    pytest.param(cfg, activation, promised, shape, id=f"{case}-{shape}")
    for case, cfg, activation, promised, shapes in CASES
    for shape in shapes
]


def assert_matches(values: np.ndarray, promised) -> None:
    n = values.size
    sigma2 = promised.var()
    mean_se = math.sqrt(sigma2 / n)
    assert abs(values.mean()) <= 6 * mean_se, (values.mean(), mean_se)
    fourth = promised.expect(lambda x: x**4)  # central: every promised law has mean 0
    variance_se = math.sqrt((fourth - sigma2**2) / n)
    assert abs(values.var() - sigma2) <= 6 * variance_se, (values.var(), sigma2, variance_se)
    p_value = stats.kstest(values, promised.cdf).pvalue
    assert p_value > 1e-3, p_value


@pytest.mark.parametrize(("cfg", "activation", "promised", "shape"), PARAMS)
def test_draws_match_the_promised_distribution(cfg, activation, promised, shape) -> None:
    make, parameter, fan_in, fan_out = SHAPES[shape]
    module = make()
    module.activation = activation
    records = initialize(module, cfg, seed=2024)
    record = next(r for r in records if r["parameter"] == parameter)
    assert (record["fan_in"], record["fan_out"]) == (fan_in, fan_out)
    values = getattr(module, parameter).detach().double().numpy().ravel()
    assert_matches(values, promised(fan_in, fan_out))


def test_truncated_normal_constant() -> None:
    # sqrt(1 - 4 φ(2) / (2 Φ(2) - 1)): the variance of N(0,1) truncated to [-2, 2].
    phi, cdf = stats.norm.pdf(2.0), stats.norm.cdf(2.0)
    assert TRUNCATED_NORMAL_STD == pytest.approx(math.sqrt(1 - 4 * phi / (2 * cdf - 1)), abs=1e-15)
    assert TRUNCATED_NORMAL_STD == pytest.approx(STD_TRUNCATED_AT_2, abs=1e-15)


def test_fixup_branch_layers_draw_scaled_he_normal() -> None:
    """conv1 of each block: N(0, 2 / fan_in) times L^(-1/2), L = 6 branches; shortcuts plain He."""
    model = build_model({"name": "resnet", "blocks": [2, 2, 2], "width": 32, "norm": "none"})
    initialize(model, {"name": "fixup"}, seed=5)
    branch = torch.cat([b.conv1.weight.detach().flatten() for b in model.stages[0]])
    assert_matches(branch.double().numpy(), normal(math.sqrt(2 / (32 * 9)) / math.sqrt(6)))
    shortcut = model.stages[1][0].shortcut[0].weight.detach().flatten()  # 1x1 conv, fan_in 32
    assert_matches(shortcut.double().numpy(), normal(math.sqrt(2 / 32)))
