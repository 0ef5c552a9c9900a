"""Mean-field predictions of signal propagation, checked with probe_model; probe_model itself.

Mean-field recursion (Poole et al., 2016; Schoenholz et al., 2017). In a deep MLP with
pre-activations h_l = W_l·φ(h_{l-1}), i.i.d. weights with n·Var(W_l) = σ_w² (n = fan_in) and
no bias, each unit of h_l is a sum of n independent terms, Gaussian for large n, of variance

    q_l = σ_w² · E_{z~N(0,1)}[ φ(√q_{l-1} · z)² ].

* ReLU: E[relu(√q·z)²] = q/2, so q_l = (σ_w²/2)·q_{l-1}. He with fan_in has σ_w² = 2, hence
  q_l = q_{l-1}: the std stays O(1). Xavier with gain 1 and fan_in = fan_out = n has
  Var(W) = 2/(2n), σ_w² = 1, hence q_l = q_{l-1}/2: the std shrinks by 1/√2 per layer, a slope
  of -½·ln 2 = -0.3466 for ln(std) against depth.
* Backward, δ_{l-1} = φ'(h_{l-1}) ⊙ W_lᵀ·δ_l, so Var(δ_{l-1}) = σ_w²·E[φ'²]·Var(δ_l) for equal
  widths. ReLU has E[φ'²] = 1/2: He keeps the gradient std; Xavier (gain 1) shrinks it by 1/√2
  per layer towards the input, a slope of +0.3466 against depth.
* tanh with σ_w² = 1 (Xavier, gain 1): tanh(x)² = x² - ⅔x⁴ + ..., so q_l ≈ q_{l-1} - 2·q_{l-1}²
  and q_l ~ 1/(2l): a slow power-law decay, not an exponential one. With tanh's gain 5/3,
  σ_w² = 25/9 > 1 and the map has a stable fixed point q* > 0: the variance stays bounded.
* SELU with LeCun normal (σ_w² = 1): E[selu(z)] = 0 and E[selu(z)²] = 1 for z ~ N(0, 1), so
  (mean 0, variance 1) is the fixed point (Klambauer et al., 2017).

Finite width makes ln(q) wander like a random walk with a step variance of order 5/n (Hanin &
Rolnick, 2018): about 0.05 per layer for ln(std) at n = 512. A least-squares slope over 39
layers then has a standard error of about 0.05·√(1.2/39) ≈ 0.009, so slopes are checked to
±0.035 (4 standard errors). The tanh recursions contract, so errors do not pile up: each layer
is checked against the recursion to 10%.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from initbench.inits import initialize
from initbench.models import build_model
from initbench.probe import PROBE_COLUMNS, probe_model

torch.set_num_threads(1)

DEPTH, WIDTH, BATCH = 40, 512, 256
HALF_LN2 = 0.5 * math.log(2.0)
SLOPE_TOLERANCE = 0.035

# Gauss-Hermite nodes for E over z ~ N(0, 1): E[f(z)] = sum(w f(x)) / sqrt(2π).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)


def gaussian_expectation(function, q: float) -> float:
    return float(np.sum(_WEIGHTS * function(math.sqrt(q) * _NODES)) / math.sqrt(2 * math.pi))


def mean_field(q_first: float, sigma_w2: float, phi, layers: int) -> np.ndarray:
    q = [q_first]
    for _ in range(layers - 1):
        q.append(sigma_w2 * gaussian_expectation(lambda x: phi(x) ** 2, q[-1]))
    return np.array(q)


def selu(x: np.ndarray) -> np.ndarray:
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))


def probe_mlp(activation: str, init_cfg: dict) -> pd.DataFrame:
    """probe_model on a DEPTH x WIDTH MLP; the hidden layers' rows only (no classifier)."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": DEPTH, "width": WIDTH, "activation": activation})
    initialize(model, init_cfg, seed=0)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    table = probe_model(model, images, torch.arange(BATCH) % 10)
    return table[table.layer != "classifier"]


def second_moment(table: pd.DataFrame) -> np.ndarray:
    return (table.activation_std**2 + table.activation_mean**2).to_numpy()


def slope(values: pd.Series, table: pd.DataFrame) -> float:
    """Least-squares slope of ln(values) against depth, from layer 1 on (layer 0 sees pixels)."""
    return float(np.polyfit(table.depth.to_numpy()[1:], np.log(values.to_numpy()[1:]), 1)[0])


def test_relu_kaiming_fan_in_keeps_activations_and_gradients_order_one() -> None:
    table = probe_mlp("relu", {"name": "kaiming_normal", "mode": "fan_in"})
    assert abs(slope(table.activation_std, table)) < SLOPE_TOLERANCE
    assert abs(slope(table.grad_std, table)) < SLOPE_TOLERANCE
    # Layer 0 sees normalized pixels (variance 1): q_0 = 2 * 1, and q_l = q_0 after it.
    q = second_moment(table)
    assert q[0] == pytest.approx(2.0, rel=0.05)
    assert np.all((q > q[0] / 4) & (q < q[0] * 4)), q


def test_relu_xavier_gain_one_halves_the_variance_per_layer() -> None:
    table = probe_mlp("relu", {"name": "xavier_normal", "gain": 1.0})
    assert slope(table.activation_std, table) == pytest.approx(-HALF_LN2, abs=SLOPE_TOLERANCE)
    assert slope(table.grad_std, table) == pytest.approx(HALF_LN2, abs=SLOPE_TOLERANCE)


def test_tanh_xavier_gain_one_decays_as_the_recursion_predicts() -> None:
    table = probe_mlp("tanh", {"name": "xavier_normal", "gain": 1.0})
    q = second_moment(table)
    predicted = mean_field(q[1], 1.0, np.tanh, len(q) - 1)
    np.testing.assert_allclose(q[1:], predicted, rtol=0.10)
    # Power law, not exponential: q_l ~ 1/(2l) late in the net.
    assert q[-1] == pytest.approx(1 / (2 * (len(q) - 1)), rel=0.25)
    assert q[-1] > 1e-3


def test_tanh_with_its_gain_settles_at_the_fixed_point() -> None:
    table = probe_mlp("tanh", {"name": "xavier_normal"})  # gain null -> 5/3 for tanh
    q = second_moment(table)
    sigma_w2 = (5 / 3) ** 2
    predicted = mean_field(q[1], sigma_w2, np.tanh, len(q) - 1)
    np.testing.assert_allclose(q[1:], predicted, rtol=0.10)
    fixed_point = predicted[-1]
    assert fixed_point == pytest.approx(mean_field(fixed_point, sigma_w2, np.tanh, 2)[1], rel=1e-6)
    assert np.mean(q[-10:]) == pytest.approx(fixed_point, rel=0.05)


def test_selu_lecun_normal_self_normalizes() -> None:
    table = probe_mlp("selu", {"name": "lecun_normal"})

    # SELU has a kink at 0, where Gauss-Hermite is inaccurate: integrate each side.
    def moment(power: int) -> float:
        def integrand(z: float) -> float:
            return float(selu(np.array(z))) ** power * stats.norm.pdf(z)

        return sum(integrate.quad(integrand, *side)[0] for side in ((-np.inf, 0), (0, np.inf)))

    assert moment(1) == pytest.approx(0.0, abs=1e-5)
    assert moment(2) == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.abs(table.activation_mean.to_numpy()[1:]) < 0.05)
    assert np.all(np.abs(table.activation_std.to_numpy()[1:] ** 2 - 1) < 0.1)


# ----------------------------------------------------------------------------- probe_model


def small_batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(size, 3, 32, 32), torch.arange(size) % 10


def test_probe_rows_columns_and_forward_order() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16})
    table = probe_model(model, *small_batch())
    assert tuple(table.columns[: len(PROBE_COLUMNS)]) == PROBE_COLUMNS
    assert list(table.layer) == ["features.0", "features.3", "hidden.0", "classifier"]
    assert list(table.depth) == [0, 1, 2, 3]
    assert list(table.kind) == ["conv", "conv", "linear", "linear"]
    assert (table.fan_in[0], table.fan_out[0]) == (27, 36)
    assert table.weight_std[3] == pytest.approx(model.classifier.weight.std(unbiased=False).item())
    assert table.notna().all().all()


def test_probe_activation_and_gradient_match_a_manual_computation() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 1, "width": 16})
    images, labels = small_batch()
    table = probe_model(model, images, labels)
    logits = model(images)
    # d mean-CE / d logits = (softmax - onehot) / N
    grad = (logits.softmax(1) - nn.functional.one_hot(labels, 10)) / len(labels)
    row = table.set_index("layer").loc["classifier"]
    assert row.activation_std == pytest.approx(logits.std(unbiased=False).item(), rel=1e-5)
    assert row.grad_std == pytest.approx(grad.std(unbiased=False).item(), rel=1e-5)


def test_probe_uses_the_lstm_output_sequence() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "lstm", "hidden": 12})
    images, labels = small_batch()
    table = probe_model(model, images, labels)
    assert list(table.kind) == ["lstm", "linear"]
    row = table.iloc[0]
    assert (row.fan_in, row.fan_out) == (96, 12)
    with torch.no_grad():
        sequence = model.rnn(images.permute(0, 2, 3, 1).flatten(2))[0]
    assert row.activation_std == pytest.approx(sequence.std(unbiased=False).item(), rel=1e-5)
    assert row.grad_std > 0


def test_probe_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet", "blocks": [1, 1], "width": 4})
    model.eval()
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe_model(model, *small_batch())
    assert not model.training and not any(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # weights and BN running statistics
    assert torch.all(model.classifier.weight.grad == 7.0)
    assert model.stem[0].weight.grad is None
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_probe_on_a_bf16_model() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16}).to(torch.bfloat16)
    table = probe_model(model, *small_batch())
    assert np.isfinite(table[["activation_std", "grad_std", "weight_std"]].to_numpy()).all()
