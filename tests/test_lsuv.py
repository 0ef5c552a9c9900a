"""LSUV: unit output variance per layer on the batch, and everything it must leave untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from initbench.inits import initialize, lsuv_
from initbench.inits.recurrent import single_layer_copy
from initbench.models import build_model
from initbench.probe import probe_model

torch.set_num_threads(1)

TOLERANCE = 0.1
MODELS = {
    "mlp": {"name": "mlp", "depth": 4, "width": 32, "activation": "tanh"},
    "cnn": {"name": "cnn", "channels": [8, 16], "hidden": 32},
    "resnet_batch_norm": {"name": "resnet", "blocks": [1, 1], "width": 8, "norm": "batch"},
    "plain_cnn": {"name": "plain_cnn", "depth": 3, "width": 8, "kernel_size": 4},
}


def batch(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def labels(size: int = 32) -> torch.Tensor:
    return torch.arange(size) % 10


@pytest.mark.parametrize("key", list(MODELS))
def test_every_layer_has_unit_output_variance(key: str) -> None:
    torch.manual_seed(0)
    model = build_model(MODELS[key])
    images = batch()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lsuv")  # no layer dead or unconverged here
        records = initialize(model, {"name": "lsuv", "tolerance": TOLERANCE}, seed=0, batch=images)
    for record in records:
        assert record["converged"] and abs(record["variance"] - 1) <= TOLERANCE, record
        assert 0 <= record["tries"] <= 10
    # Measured independently: probe_model's activation_std is the std over every element of
    # each layer's output, in training mode as LSUV ran.
    table = probe_model(model, images, labels())
    assert len(table) == len(records)
    variance = table.activation_std**2
    assert ((variance - 1).abs() <= TOLERANCE + 1e-4).all(), table[["layer", "activation_std"]]


def test_lstm_input_projections_have_unit_variance() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "lstm", "layers": 2, "hidden": 16})
    images = batch()
    records = initialize(model, {"name": "lsuv"}, seed=0, batch=images)
    by_name = {r["name"]: r for r in records}
    assert by_name["rnn.weight_ih_l0"]["converged"] and by_name["rnn.weight_ih_l1"]["converged"]
    assert by_name["classifier"]["converged"]
    assert "variance" not in by_name["rnn.weight_hh_l0"]  # recurrent blocks stay orthonormal
    # Recompute each layer's input projection x W_ih^T from the image rows.
    with torch.no_grad():
        inputs = images.permute(0, 2, 3, 1).flatten(2)
        for layer in range(2):
            weight = getattr(model.rnn, f"weight_ih_l{layer}")
            assert abs((inputs @ weight.T).var(unbiased=False).item() - 1) <= TOLERANCE
            inputs = single_layer_copy(model.rnn, layer)(inputs)[0]
        hidden = model.rnn(images.permute(0, 2, 3, 1).flatten(2))[1][0][-1]
        assert abs(model.classifier(hidden).var(unbiased=False).item() - 1) <= TOLERANCE


class BidirectionalGRU(nn.Module):
    activation = "tanh"

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(96, 8, num_layers=2, bidirectional=True)  # sequence-first
        self.classifier = nn.Linear(16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.rnn(images.permute(2, 0, 3, 1).flatten(2))  # (rows, N, 96)
        return self.classifier(sequence[-1])


def test_stacked_bidirectional_sequence_first_recurrent_layers() -> None:
    torch.manual_seed(0)
    model = BidirectionalGRU()
    records = initialize(model, {"name": "lsuv"}, seed=0, batch=batch())
    by_name = {r["name"]: r for r in records}
    for layer in ("l0", "l0_reverse", "l1", "l1_reverse"):
        assert by_name[f"rnn.weight_ih_{layer}"]["converged"], layer
    assert by_name["classifier"]["converged"]


def test_batch_norm_statistics_modes_and_hooks_are_restored() -> None:
    torch.manual_seed(0)
    model = build_model(MODELS["resnet_batch_norm"])
    model.eval()
    model.stages[0].train()  # a mixed state, to see that each module's own mode comes back
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    initialize(model, {"name": "lsuv"}, seed=0, batch=batch())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert {name: m.training for name, m in model.named_modules()} == modes
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_dead_layers_warn_and_never_become_nan() -> None:
    # Bias -100 everywhere: the first layer is rescaled to unit variance, but its ReLU outputs
    # are all 0, so every later layer outputs the constant -100: variance 0, a dead layer.
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 3, "width": 16})
    with pytest.warns(UserWarning, match="dead layer") as caught:
        records = initialize(model, {"name": "lsuv", "bias": -100.0}, seed=0, batch=batch())
    dead = [r["name"] for r in records if r["status"] == "dead"]
    assert dead == ["hidden.2", "hidden.4", "classifier"]
    assert len([w for w in caught if "dead layer" in str(w.message)]) == 3
    assert records[0]["converged"]
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()


def test_max_tries_stops_and_names_the_layers_that_did_not_converge() -> None:
    # PyTorch's random biases add variance that does not scale with the weight, so one
    # rescaling lands near 1 but not within 1e-6 of it.
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 2, "width": 16})
    cfg = {"name": "lsuv", "bias": "default", "tolerance": 1e-6, "max_tries": 1}
    with pytest.warns(UserWarning, match=r"did not reach variance 1 ± 1e-06 in 1 tries") as caught:
        records = initialize(model, cfg, seed=0, batch=batch())
    failed = [r["name"] for r in records if r["status"] == "not_converged"]
    assert failed and all(r["tries"] <= 1 for r in records)
    message = next(str(w.message) for w in caught if "did not reach" in str(w.message))
    for name in failed:
        assert name in message
    # With enough tries the same layers converge.
    records = initialize(model, {**cfg, "tolerance": 1e-3, "max_tries": 20}, seed=0, batch=batch())
    assert all(r["converged"] for r in records)


def test_lsuv_needs_a_batch() -> None:
    model = build_model({"name": "mlp", "depth": 1, "width": 8})
    with pytest.raises(ValueError, match="lsuv needs a batch"):
        initialize(model, {"name": "lsuv"}, seed=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lsuv_on_half_precision_models(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = build_model({"name": "cnn", "channels": [4, 8], "hidden": 16}).to(dtype)
    records = initialize(model, {"name": "lsuv"}, seed=0, batch=batch())  # float batch: cast
    assert all(r["converged"] for r in records)
    assert all(p.dtype == dtype for p in model.parameters())
    with torch.no_grad():
        out = model(batch().to(dtype))
    assert torch.isfinite(out).all()
    assert abs(out.float().var().item() - 1) < 0.2


def test_lsuv_then_spectral_norm() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 2, "width": 16})
    records = initialize(model, {"name": "lsuv", "spectral_norm": True}, seed=0, batch=batch())
    assert all(r["converged"] and r["spectral_norm"] for r in records)
    with pytest.raises(ValueError, match="parametrized"):
        lsuv_(model, batch())


def test_lsuv_rejects_bad_settings() -> None:
    model = build_model({"name": "mlp", "depth": 1, "width": 8})
    with pytest.raises(ValueError, match="tolerance=0"):
        lsuv_(model, batch(), tolerance=0)
    with pytest.raises(ValueError, match="max_tries=-1"):
        lsuv_(model, batch(), max_tries=-1)
