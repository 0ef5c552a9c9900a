"""Signal propagation at initialization: how activations and gradients spread, layer by layer."""

from __future__ import annotations

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
    names = {module: name for name, module in model.named_modules() if isinstance(module, _WEIGHTED)}
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
