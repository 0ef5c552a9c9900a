"""Signal propagation at initialization: how activations and gradients spread, layer by layer."""

from __future__ import annotations

import logging
import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from initbench.inits.recurrent import recurrent_weights
from initbench.inits.variance_scaling import layer_fans

PROBE_COLUMNS = (
    "layer",
    "kind",
    "depth",
    "fan_in",
    "fan_out",
    "weight_mean",
    "weight_std",
    "activation_mean",
    "activation_std",
    "grad_std",
)

log = logging.getLogger(__name__)

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.RNNBase):
        return module.mode.lower()  # lstm | gru | rnn_tanh | rnn_relu
    return "conv_transpose" if module.transposed else "conv"  # type: ignore[union-attr]


def _fans(module: nn.Module) -> tuple[float, float]:
    if isinstance(module, nn.RNNBase):
        # Layer 0's input weight, one gate block: the fans a recurrent initializer uses.
        first = recurrent_weights(module)[0]
        return first.tensor.shape[1], first.tensor.shape[0] // first.gates
    return layer_fans(module)


def _weights(module: nn.Module) -> Tensor:
    if isinstance(module, nn.RNNBase):
        return torch.cat([w.tensor.detach().float().flatten() for w in recurrent_weights(module)])
    return module.weight.detach().float().flatten()


def _mean_std(values: Tensor) -> tuple[float, float]:
    if values.numel() == 0:
        return math.nan, math.nan
    values = values.detach().float()
    return float(values.mean()), float(values.std(unbiased=False))


def probe_model(model: nn.Module, batch: Tensor, labels: Tensor) -> pd.DataFrame:
    """One forward and backward pass on ``batch``; one row per weighted layer, in forward order.

    Columns (:data:`PROBE_COLUMNS`): ``layer`` (module name), ``kind`` (linear, conv,
    conv_transpose, lstm, gru, ...), ``depth`` (0-based position in the forward pass),
    ``fan_in``/``fan_out`` (per gate block for recurrent layers, layer 0), ``weight_mean``/
    ``weight_std`` (over all weights of the layer), ``activation_mean``/``activation_std``
    (over all elements of the layer's output on the batch: the pre-activation, before any
    nonlinearity; a recurrent layer's output sequence), ``grad_std`` (std of dLoss/d(output),
    the signal the backward pass carries into the layer; NaN where no gradient reaches it).

    The loss is the mean cross-entropy of the logits against ``labels``. Gradients are taken
    with ``torch.autograd.grad`` with respect to the layer outputs only, so the parameters'
    ``.grad`` stay as they were; there is no optimizer step. The pass runs in training mode, as
    the first training step would (batch norm normalizes with batch statistics); each module's
    mode and every buffer (batch-norm running statistics) are restored, and the hooks removed.
    A layer called several times (shared weights) is reported at its first call.
    """
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is not None:
        batch = batch.to(device=parameter.device, dtype=parameter.dtype)
        labels = labels.to(device=parameter.device)
    names = {m: name for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}
    outputs: dict[nn.Module, Tensor] = {}

    def capture(module: nn.Module, _args: tuple, output: Tensor | tuple) -> None:
        if module not in outputs:
            # nn.LSTM returns (sequence, (h, c)); the sequence is the layer's output.
            outputs[module] = output[0] if isinstance(output, tuple) else output

    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    handles = [module.register_forward_hook(capture) for module in names]
    try:
        model.train()
        with torch.enable_grad():
            logits = model(batch)
            loss = F.cross_entropy(logits.float(), labels)
            order = list(outputs)
            differentiable = [m for m in order if outputs[m].requires_grad]
            grads = (
                torch.autograd.grad(loss, [outputs[m] for m in differentiable], allow_unused=True)
                if differentiable
                else ()
            )
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    grad_of = dict(zip(differentiable, grads, strict=True))

    rows = []
    for depth, module in enumerate(order):
        fan_in, fan_out = _fans(module)
        weight_mean, weight_std = _mean_std(_weights(module))
        activation_mean, activation_std = _mean_std(outputs[module])
        grad = grad_of.get(module)
        rows.append(
            {
                "layer": names[module],
                "kind": _kind(module),
                "depth": depth,
                "fan_in": fan_in,
                "fan_out": fan_out,
                "weight_mean": weight_mean,
                "weight_std": weight_std,
                "activation_mean": activation_mean,
                "activation_std": activation_std,
                "grad_std": math.nan if grad is None else _mean_std(grad)[1],
            }
        )
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


# ----------------------------------------------------------------------------- the probe command


def probe(cfg, run_dir=None) -> pd.DataFrame:
    """Initialize the configured model, run one forward and backward pass on a real batch of
    ``diagnostics.activation_batch`` training images, and write ``probe.csv``, ``probe.png``
    and ``summary.json`` into ``run_dir`` (Hydra's output directory by default)."""
    import os
    import time
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf

    from initbench import record
    from initbench.config import validate
    from initbench.data import load_dataset, normalize
    from initbench.inits import initialize
    from initbench.models import build_model
    from initbench.train import configure_backends, environment, resolve_device

    validate(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = resolve_device(cfg.train.device)
    configure_backends(cfg, device)
    (run_dir / record.CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    from hydra.core.hydra_config import HydraConfig

    base_dir = HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()
    dataset = load_dataset(cfg.data, base_dir)
    mean, std = dataset.channel_stats()
    generator = torch.Generator().manual_seed(cfg.seed)
    count = len(dataset.train_labels)
    index = torch.randperm(count, generator=generator)[: cfg.diagnostics.activation_batch]
    images = normalize(dataset.train_images[index], mean, std).to(device)
    labels = dataset.train_labels[index].to(device)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=dataset.num_classes).to(device)
    initialize(model, cfg.init, seed=cfg.seed, batch=images)
    table = probe_model(model, images, labels)
    table.insert(0, "init", cfg.init.name)
    table.insert(0, "model", cfg.model.name)
    table.insert(2, "seed", cfg.seed)
    table.to_csv(run_dir / "probe.csv", index=False)
    plot_probe([table], run_dir / "probe.png")
    record.atomic_write_json(run_dir / record.SUMMARY, {
        "kind": "probe", "status": "completed", "error": None, "model": cfg.model.name,
        "activation": cfg.model.activation, "init": cfg.init.name, "seed": cfg.seed,
        "layers": len(table), "total_seconds": round(time.time() - started, 3),
        **environment(device), "run_dir": str(run_dir),
    })  # fmt: skip
    log.info("probe: %d layers; activation std from %.3g (first) to %.3g (last); "
             "files in %s", len(table), table.activation_std.iloc[0],
             table.activation_std.iloc[-1], run_dir)  # fmt: skip
    return table


def plot_probe(tables: list[pd.DataFrame], path) -> None:
    """Activation and gradient spread against depth, log scale, one line per initializer (one
    row of panels per model when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from initbench.report.plots import init_colors, plot_signal_propagation

    frame = pd.concat(tables, ignore_index=True)
    frame["init_label"] = frame["init"]
    frame["setting"] = frame["model"] if frame["model"].nunique() > 1 else ""
    figure = plot_signal_propagation(frame, init_colors(frame["init_label"]))
    if figure is not None:
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)


def plot_sweep(sweep_dir) -> None:
    """The sweep's probe.png: every probe run below ``sweep_dir`` on one figure."""
    from pathlib import Path

    from initbench.report import plots, tables

    # labelled as the report labels them: an initializer together with the settings of it that
    # vary across the sweep (init.gain=1 and init.gain=null are two lines, never one average)
    found = tables.find([Path(sweep_dir)])
    if not found:
        return
    runs = tables.Runs(found)
    summary = tables.labeled(tables.summary_table(runs, 0.5))
    profiles = tables.probe_profiles(runs, summary)
    figure = plots.plot_signal_propagation(profiles, plots.init_colors(summary["init_label"]))
    if figure is not None:
        figure.savefig(Path(sweep_dir) / "probe.png", dpi=110, bbox_inches="tight")


def probe_task(cfg) -> dict:
    """Hydra task for ``initbench probe``: failures are recorded and do not stop a sweep."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from initbench import record

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        probe(cfg, run_dir)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        log.error("probe in %s failed: %s: %s", run_dir, type(error).__name__, error)
        record.atomic_write_json(run_dir / record.SUMMARY, {
            "kind": "probe", "status": "failed", "error": f"{type(error).__name__}: {error}",
            "run_dir": str(run_dir)})  # fmt: skip
    summary = record.read_summary(run_dir) or {}
    from initbench import app

    app._results.append(summary)
    return summary
