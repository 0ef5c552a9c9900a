"""Diagnostics against direct computation: gradient norms, update ratios, distributions, bins,
divergence, host synchronization and file sizes."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from typer.testing import CliRunner

from initbench import record
from initbench.app import compose_config
from initbench.cli import app
from initbench.diagnostics import BASIS_GRADIENT, BASIS_GROWTH, Diagnostics
from initbench.models import MLP, ResNet
from initbench.train import run

SMALL = ["data=synthetic", "data.num_train=256", "data.num_test=64", "train.progress=false",
         "train.batch_size=32", "train.threads=1", "model=mlp", "model.width=32",
         "model.depth=2"]  # fmt: skip


class Tables:
    """Stands in for the trainer's table writers: keeps the rows, unformatted."""

    def __init__(self):
        self.rows: dict[str, list[dict]] = defaultdict(list)

    def __call__(self, name: str):
        tables = self

        class Writer:
            def write(self, rows):
                tables.rows[name].extend(rows)

        return Writer()


def diagnostics_cfg(**changes):
    cfg = {"enabled": True, "grad_every": 3, "distribution_epochs": None, "bins": 64,
           "activation_batch": 256, **changes}  # fmt: skip
    return OmegaConf.create(cfg)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def train_steps(model, diagnostics, steps, inputs, labels, on_step=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        diagnostics.after_backward(step, 0, loss)
        if on_step is not None:
            on_step(step, "backward")
        optimizer.step()
        diagnostics.after_step(step, 0)
        if on_step is not None:
            on_step(step, "step")


# ----------------------------------------------------------------------------- gradient norms


def test_logged_norms_equal_a_direct_computation():
    torch.manual_seed(0)
    model = MLP(depth=2, width=16)
    tables = Tables()
    diagnostics = Diagnostics(diagnostics_cfg(), model, tables, epochs=1,
                              probe_batch=lambda: torch.randn(8, 3, 32, 32))  # fmt: skip
    inputs, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    expected: dict[tuple[int, str], dict[str, float]] = {}
    before: dict[str, torch.Tensor] = {}

    def by_hand(step, stage):
        for name, param in model.named_parameters():
            if stage == "backward":
                before[name] = param.detach().clone()
                expected[step, name] = {
                    "grad_norm": torch.linalg.vector_norm(param.grad).item(),
                    "weight_norm": torch.linalg.vector_norm(before[name]).item(),
                }
            else:
                update = torch.linalg.vector_norm(param.detach() - before[name]).item()
                expected[step, name]["update_ratio"] = update / expected[step, name]["weight_norm"]

    train_steps(model, diagnostics, 7, inputs, labels, on_step=by_hand)
    rows = tables.rows["grad_norms"]
    assert {row["step"] for row in rows} == {0, 3, 6}  # step 0, then every grad_every
    assert len(rows) == 3 * len(list(model.parameters()))
    assert set(rows[0]) == set(record.GRAD_NORM_COLUMNS)
    for row in rows:
        want = expected[row["step"], row["layer"]]
        for column in ("grad_norm", "weight_norm", "update_ratio"):
            assert row[column] == pytest.approx(want[column], rel=1e-5), (row, column)
        assert row["update_ratio"] > 0


def test_no_host_sync_on_steps_that_do_not_log(monkeypatch):
    """Every way of reading a tensor back to the host is counted during the steps that do not
    log; there must be none."""
    torch.manual_seed(0)
    model = MLP(depth=2, width=16)
    diagnostics = Diagnostics(diagnostics_cfg(grad_every=4), model, Tables(), epochs=1,
                              probe_batch=lambda: torch.randn(8, 3, 32, 32))  # fmt: skip
    inputs, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    reads: dict[int, int] = defaultdict(int)
    current = {"step": None}
    for method in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
                   "__index__", "__array__"):  # fmt: skip
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, **kwargs):
            if current["step"] is not None:
                reads[current["step"]] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(9):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        current["step"] = step
        diagnostics.after_backward(step, 0, loss)
        current["step"] = None
        optimizer.step()
        current["step"] = step
        diagnostics.after_step(step, 0)
        current["step"] = None
    assert all(reads[step] == 0 for step in range(9) if step % 4), dict(reads)
    assert reads[0] > 0 and reads[4] > 0  # the counting works: logging steps do read back


def fake_steps(diagnostics, model, steps, gradient, loss):
    """Drive the per-step tracking with chosen gradients and losses, no training."""
    for step in steps:
        for name, param in model.named_parameters():
            param.grad = torch.full_like(param, gradient(step, name))
        diagnostics.after_backward(step, step // 40, torch.tensor(loss(step)))
        diagnostics.after_step(step, step // 40)


def test_divergence_is_located_exactly_between_logging_steps():
    model = MLP(depth=2, width=4)
    diagnostics = Diagnostics(diagnostics_cfg(grad_every=50), model, Tables(), epochs=1,
                              probe_batch=lambda: torch.randn(2, 3, 32, 32))  # fmt: skip

    def gradient(step, name):
        return math.inf if step >= 70 and name == "hidden.2.weight" else 1.0

    # several folds of the ring pass before step 70; nothing is read back until the end
    fake_steps(diagnostics, model, range(83), gradient, loss=lambda step: 2.0)
    found = diagnostics.locate_divergence()
    assert found["step"] == 70 and found["epoch"] == 1
    assert found["cause"] == "gradient" and found["layer"] == "hidden.2.weight"
    assert found["nonfinite_parameters"] == 1


def test_a_loss_that_goes_first_names_the_fastest_growing_gradient():
    model = MLP(depth=2, width=4)
    diagnostics = Diagnostics(diagnostics_cfg(grad_every=50), model, Tables(), epochs=1,
                              probe_batch=lambda: torch.randn(2, 3, 32, 32))  # fmt: skip

    def gradient(step, name):
        if step >= 90:
            return math.nan  # a non-finite loss leaves every gradient non-finite
        return 1.0 + step**2 if name == "hidden.2.bias" else 1.0 + step

    fake_steps(diagnostics, model, range(95), gradient,
               loss=lambda step: math.inf if step >= 90 else 2.0)  # fmt: skip
    found = diagnostics.locate_divergence()
    assert found["step"] == 90 and found["cause"] == "loss"
    assert found["layer"] == "hidden.2.bias" and found["layer_basis"] == BASIS_GROWTH


# ----------------------------------------------------------------------------- distributions


def record_once(model, inputs, **changes) -> tuple[Diagnostics, Tables]:
    tables = Tables()
    diagnostics = Diagnostics(diagnostics_cfg(**changes), model, tables, epochs=1,
                              probe_batch=lambda: inputs)  # fmt: skip
    diagnostics.record_distributions(epoch=0, step=0)
    return diagnostics, tables


def moments(tables: Tables, tensor: str) -> dict[str, dict]:
    return {row["layer"]: row for row in tables.rows["distributions"] if row["tensor"] == tensor}


def test_relu_after_kaiming_kills_half_the_units_and_counts_add_up():
    torch.manual_seed(0)
    model = MLP(depth=3, width=256, activation="relu")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    inputs = torch.randn(512, 3, 32, 32)  # symmetric around zero
    _, tables = record_once(model, inputs)
    activations = moments(tables, "activation")
    for layer in ("hidden.0", "hidden.2", "hidden.4"):
        # measured after the ReLU: a symmetric pre-activation is negative half of the time
        assert activations[layer]["zero_fraction"] == pytest.approx(0.5, abs=0.03), layer
        assert activations[layer]["min"] == 0.0
    assert activations["classifier"]["zero_fraction"] < 0.01  # logits: no nonlinearity
    assert activations["hidden.0"]["saturated_fraction"] is None  # ReLU does not saturate

    sizes = {("classifier", "weight"): 10 * 256, ("classifier", "activation"): 512 * 10}
    for index in (0, 2, 4):
        fan_in = 3 * 32 * 32 if index == 0 else 256
        sizes[f"hidden.{index}", "weight"] = 256 * fan_in
        sizes[f"hidden.{index}", "activation"] = 512 * 256
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for row in tables.rows["histograms"]:
        totals[row["layer"], row["tensor"]] += row["count"]
    assert totals == sizes


def test_tanh_with_a_huge_gain_saturates():
    torch.manual_seed(0)
    model = MLP(depth=3, width=128, activation="tanh")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=100 / math.sqrt(module.in_features))
    _, tables = record_once(model, torch.randn(256, 3, 32, 32))
    activations = moments(tables, "activation")
    for layer in ("hidden.0", "hidden.2", "hidden.4"):
        assert activations[layer]["saturated_fraction"] > 0.9, layer
    assert moments(tables, "weight")["hidden.0"]["saturated_fraction"] is None


def test_bins_are_dyadic_fixed_per_layer_and_widen_without_clipping():
    torch.manual_seed(0)
    model = MLP(depth=1, width=32)
    inputs = torch.randn(64, 3, 32, 32)
    diagnostics, tables = record_once(model, inputs, bins=16)

    def histogram(epoch, layer, tensor):
        rows = [
            row
            for row in tables.rows["histograms"]
            if (row["epoch"], row["layer"], row["tensor"]) == (epoch, layer, tensor)
        ]
        return [(float(row["bin_low"]), float(row["bin_high"]), row["count"]) for row in rows]

    at_init = histogram(0, "hidden.0", "weight")
    width = at_init[0][1] - at_init[0][0]
    assert math.log2(width).is_integer()  # a power of two
    for low, high, _ in at_init:
        assert high - low == width and (low / width).is_integer()
    assert len(at_init) <= 16
    # a small change keeps the very same grid: same width, same edges (a sub-range of them)
    with torch.no_grad():
        model.hidden[0].weight.mul_(0.9)
    diagnostics.record_distributions(epoch=1, step=10)
    later = histogram(1, "hidden.0", "weight")
    assert {high - low for low, high, _ in later} == {width}
    assert all((low / width).is_integer() and -8 * width <= low < 8 * width for low, *_ in later)
    # growth beyond the grid doubles the width as often as needed; nothing is clipped
    with torch.no_grad():
        model.hidden[0].weight.mul_(20)
    diagnostics.record_distributions(epoch=2, step=20)
    grown = histogram(2, "hidden.0", "weight")
    new_width = grown[0][1] - grown[0][0]
    stats = moments(tables, "weight")["hidden.0"]  # the last recording's moments
    largest = max(-stats["min"], stats["max"])
    assert new_width == 2 ** math.ceil(math.log2(largest / 8)) > width  # 8 bins per side
    assert grown[0][0] <= stats["min"] and stats["max"] <= grown[-1][1]
    assert sum(count for *_, count in grown) == model.hidden[0].weight.numel()


def weight_bin_widths(tables: Tables, epoch: int, layer: str) -> set[float]:
    rows = tables.rows["histograms"]
    return {
        float(row["bin_high"]) - float(row["bin_low"])
        for row in rows
        if (row["epoch"], row["layer"], row["tensor"]) == (epoch, layer, "weight")
    }


def test_a_resumed_run_keeps_the_grids_of_its_layers():
    torch.manual_seed(0)
    model = MLP(depth=1, width=32)
    inputs = torch.randn(64, 3, 32, 32)
    before, first_tables = record_once(model, inputs)
    grid = weight_bin_widths(first_tables, 0, "hidden.0")
    with torch.no_grad():
        model.hidden[0].weight.mul_(0.3)  # recorded afresh, it gets a finer grid
    after, tables = record_once(model, inputs)
    assert weight_bin_widths(tables, 0, "hidden.0") != grid
    after.load_state_dict(before.state_dict())  # what a checkpoint carries
    after.record_distributions(epoch=1, step=5)
    assert weight_bin_widths(tables, 1, "hidden.0") == grid


def test_recording_leaves_batch_norm_statistics_and_mode_alone():
    torch.manual_seed(0)
    model = ResNet(blocks=[1, 1], width=4)
    model.eval()
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    _, tables = record_once(model, torch.randn(16, 3, 32, 32))
    assert not model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, saved[name]), name
    layers = {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    assert layers | {"classifier"} == set(moments(tables, "activation"))
    # after batch norm (batch statistics) and ReLU: about half the units are zero
    assert moments(tables, "activation")["stem.0"]["zero_fraction"] == pytest.approx(0.5, abs=0.1)


# ----------------------------------------------------------------------------- runs


def test_a_run_records_from_step_zero_at_the_chosen_epochs(tmp_path):
    cfg = compose_config([*SMALL, "train.epochs=3", "diagnostics.grad_every=5"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    norms = read(tmp_path / "grad_norms.csv")
    names = [name for name, _ in MLP(depth=2, width=32).named_parameters()]
    assert [row["layer"] for row in norms if row["step"] == "0"] == names
    assert {int(row["step"]) for row in norms} == set(range(0, 24, 5))
    distributions = read(tmp_path / "distributions.csv")
    assert {row["epoch"] for row in distributions} == {"0", "1", "2", "3"}
    histograms = read(tmp_path / "histograms.csv")
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in histograms:
        totals[row["epoch"], row["layer"], row["tensor"]] += int(row["count"])
    assert totals["0", "hidden.2", "weight"] == 32 * 32
    assert totals["3", "hidden.0", "activation"] == 256 * 32  # every training image, 32 units


def test_a_deep_resnet_writes_small_files(tmp_path):
    """The default 50-block ResNet, at initialization and 3 epochs: the histograms hold counts
    (a few dozen rows per layer and tensor), not tensors."""
    quick = [override for override in SMALL if not override.startswith("model.")]
    cfg = compose_config([*quick, "model=resnet", "data.num_train=8", "data.num_test=8",
                          "train.batch_size=8", "train.epochs=3",
                          "diagnostics.activation_batch=8"])  # fmt: skip
    assert run(cfg, tmp_path)["status"] == "completed"
    model = ResNet()
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    histograms = read(tmp_path / "histograms.csv")
    points = {row["epoch"] for row in histograms}
    assert points == {"0", "1", "2", "3"}
    assert len(histograms) <= len(points) * layers * 2 * 64
    sizes = {name: (tmp_path / f"{name}.csv").stat().st_size
             for name in ("histograms", "distributions", "grad_norms")}  # fmt: skip
    assert sizes["histograms"] < 2_500_000, sizes
    assert sizes["distributions"] < 100_000, sizes


def inject_inf(monkeypatch, targets: dict[str, int]):
    """Make build_model return a model whose gradient of each target parameter turns infinite
    at the given step (counted in backward passes)."""
    import initbench.models

    build = initbench.models.build_model

    def build_with_hooks(*args, **kwargs):
        model = build(*args, **kwargs)
        for name, param in model.named_parameters():
            if name in targets:
                calls = {"count": 0}

                def hook(grad, at=targets[name], calls=calls):
                    calls["count"] += 1
                    return torch.full_like(grad, math.inf) if calls["count"] == at + 1 else grad

                param.register_hook(hook)
        return model

    monkeypatch.setattr(initbench.models, "build_model", build_with_hooks)


def test_an_injected_gradient_overflow_is_found_at_its_step_and_layer(tmp_path, monkeypatch):
    # step 3 logs nothing (grad_every=50): found by the per-step tracking on the device
    inject_inf(monkeypatch, {"hidden.0.weight": 3})
    summary = run(compose_config([*SMALL, "train.epochs=2"]), tmp_path)
    assert summary["status"] == "diverged"
    divergence = summary["divergence"]
    assert divergence["step"] == 3 and divergence["epoch"] == 0
    assert divergence["cause"] == "gradient" and divergence["layer"] == "hidden.0.weight"
    assert divergence["layer_basis"] == BASIS_GRADIENT
    assert divergence["nonfinite_parameters"] == 1

    # strict JSON (no NaN or Infinity literals, which JSON does not have); the non-finite loss
    # is the string float() reads back
    def refuse(constant):
        raise ValueError(f"{constant} in summary.json")

    on_disk = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert on_disk["divergence"]["layer"] == "hidden.0.weight"
    assert not math.isfinite(float(on_disk["divergence"]["loss"]))


def test_of_two_gradients_overflowing_together_the_one_nearest_the_output_went_first(
    tmp_path, monkeypatch
):
    inject_inf(monkeypatch, {"hidden.0.weight": 2, "hidden.2.weight": 2})
    summary = run(compose_config([*SMALL, "train.epochs=1"]), tmp_path)
    assert summary["divergence"]["step"] == 2
    assert summary["divergence"]["layer"] == "hidden.2.weight"


def test_a_huge_learning_rate_diverges_and_the_command_succeeds(workdir):
    result = CliRunner().invoke(app, ["run", *SMALL, "optimizer.lr=1e6", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    (run_dir,) = record.find_runs([workdir / "outputs"])
    summary = record.read_summary(run_dir)
    assert summary["status"] == "diverged"
    divergence = summary["divergence"]
    assert isinstance(divergence["step"], int) and divergence["step"] < summary["steps"]
    assert divergence["cause"] in ("loss", "gradient") and divergence["layer"]
    if divergence["cause"] == "loss":
        assert divergence["layer_basis"] == BASIS_GROWTH
