"""Layer-sequential unit-variance initialization (Mishkin & Matas, 2016)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from initbench.inits.recurrent import single_layer_copy

logger = logging.getLogger(__name__)

# Below this output variance a layer counts as dead: dividing by its square root would blow the
# weights up by more than 1e6 (and to inf in fp16) to amplify what is only rounding noise.
DEAD_VARIANCE = 1e-12

WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)


class _StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is wasted work."""


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear, Conv and recurrent modules of ``model``, in registration order."""
    return [
        (name, module) for name, module in model.named_modules() if isinstance(module, WEIGHTED)
    ]


def _reference_parameter(model: nn.Module) -> Tensor:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor
    raise ValueError("lsuv needs a model with floating-point parameters.")


def _run_until(model: nn.Module, batch: Tensor, module: nn.Module, pre: bool) -> Tensor:
    """Run ``model`` on ``batch`` until ``module`` is reached; return its input or its output."""
    captured: list[Tensor] = []

    def capture_input(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _StopForward

    def capture_output(_module: nn.Module, _args: tuple, output: Tensor) -> None:
        captured.append(output)
        raise _StopForward

    handle = (
        module.register_forward_pre_hook(capture_input)
        if pre
        else module.register_forward_hook(capture_output)
    )
    try:
        model(batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("lsuv: the layer was not reached by the forward pass.")
    return captured[0]


def _forward_order(
    model: nn.Module, batch: Tensor, layers: Sequence[tuple[str, nn.Module]]
) -> list[tuple[str, nn.Module]]:
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    handles = []
    for name, module in layers:

        def record(module: nn.Module, _args: tuple, name: str = name) -> None:
            if id(module) not in seen:
                seen.add(id(module))
                order.append((name, module))

        handles.append(module.register_forward_pre_hook(record))
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _variance(output: Tensor) -> float:
    # float32: a bf16 variance is only good to ~2 significant digits.
    return float(output.detach().float().var(unbiased=False))


def _rescale_until_unit(
    weight: Tensor, measure: Callable[[], float], name: str, tolerance: float, max_tries: int
) -> dict:
    """The LSUV loop for one weight: measure, stop if within tolerance, else divide by std."""
    tries = 0
    while True:
        variance = measure()
        if not math.isfinite(variance) or variance <= DEAD_VARIANCE:
            warnings.warn(
                f"lsuv: layer {name!r} has output variance {variance:.3g} on the batch "
                "(a dead layer: its input is constant, zero or not finite); its weight is "
                "left unscaled.",
                stacklevel=2,
            )
            status = "dead"
            break
        if abs(variance - 1.0) <= tolerance:
            status = "converged"
            break
        if tries >= max_tries:
            status = "not_converged"
            break
        weight.mul_(1.0 / math.sqrt(variance))
        tries += 1
    logger.info("lsuv layer=%s variance=%.4f tries=%d status=%s", name, variance, tries, status)
    return {
        "variance": variance,
        "tries": tries,
        "converged": status == "converged",
        "status": status,
    }


def _lsuv_recurrent(
    model: nn.Module,
    batch: Tensor,
    name: str,
    module: nn.RNNBase,
    tolerance: float,
    max_tries: int,
) -> dict[str, dict]:
    inputs = _run_until(model, batch, module, pre=True)
    if not isinstance(inputs, Tensor):
        raise ValueError(
            f"lsuv supports recurrent layers fed a padded tensor, not {type(inputs).__name__} "
            f"(layer {name!r})."
        )
    if not module.batch_first and inputs.dim() == 3:
        inputs = inputs.transpose(0, 1)
    results = {}
    directions = ("", "_reverse") if module.bidirectional else ("",)
    for layer in range(module.num_layers):
        for suffix in directions:
            parameter = f"weight_ih_l{layer}{suffix}"
            weight = getattr(module, parameter)

            def measure(weight: Tensor = weight, inputs: Tensor = inputs) -> float:
                return _variance(inputs.float() @ weight.float().T)

            results[f"{name}.{parameter}"] = _rescale_until_unit(
                weight, measure, f"{name}.{parameter}", tolerance, max_tries
            )
        if layer + 1 < module.num_layers:
            inputs = single_layer_copy(module, layer)(inputs)[0]
    return results


@torch.no_grad()
def lsuv_(
    model: nn.Module,
    batch: Tensor,
    *,
    tolerance: float = 0.1,
    max_tries: int = 10,
    layers: Sequence[tuple[str, nn.Module]] | None = None,
) -> dict[str, dict]:
    r"""Rescale each layer, in forward order, until its output has unit variance on ``batch``.

    .. math:: W_l \leftarrow W_l / \sqrt{\operatorname{Var}[W_l x_l]}
              \quad\text{until}\quad |\operatorname{Var}[W_l x_l] - 1| \le \text{tolerance}

    Mishkin & Matas (2016), "All you need is a good init". Step 1 of the method, the
    orthonormal pre-initialization, is done before this function by the registry's ``lsuv``
    initializer (orthogonal per weight, per gate for recurrent weights); this is step 2.
    Also known as ``layer_sequential_unit_variance``.

    Layers are processed in the order the forward pass reaches them, so each one sees inputs
    from layers already final. The variance is over every element of the layer's output (batch,
    channels and positions). For a recurrent module, each ``weight_ih`` is scaled so that its
    input projection :math:`x_t W_{ih}^\top` (over batch, time, gates; biases excluded) has unit
    variance; the recurrent ``weight_hh`` stays orthonormal, since scaling it changes the
    dynamics, not the input scale; the hidden state itself is bounded in (-1, 1) and could not
    reach variance 1.

    The passes run in training mode, as the first training step would; batch norm then
    normalizes with batch statistics. Each module's train/eval mode and every buffer (batch-norm
    running statistics) are restored afterwards, and every hook is removed.

    Traps: a layer whose output variance is 0 (dead: e.g. every unit before it is a dead ReLU)
    is left as it is with a warning, never divided by 0; layers that are still outside the
    tolerance after ``max_tries`` rescalings are named in one warning. A weight under a
    parametrization (spectral norm) cannot be rescaled this way: apply LSUV first.

    Returns, per layer name (the module's name; ``<module>.weight_ih_l<k>`` for recurrent
    layers): the final ``variance``, the number of rescalings ``tries``, ``converged`` and
    ``status`` (converged | not_converged | dead | unused).

    Example::

        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> results = lsuv_(model, torch.randn(64, 3, 2, 2))
        >>> [result["converged"] for result in results.values()]
        [True, True]
    """
    if tolerance <= 0:
        raise ValueError(f"tolerance={tolerance} must be positive, e.g. 0.1.")
    if max_tries < 0:
        raise ValueError(f"max_tries={max_tries} must be >= 0.")
    layers = list(weighted_layers(model) if layers is None else layers)
    for name, module in layers:
        if parametrize.is_parametrized(module):
            raise ValueError(
                f"lsuv cannot rescale layer {name!r}: its weight is parametrized (spectral "
                "norm?). Run lsuv before adding the parametrization."
            )
    reference = _reference_parameter(model)
    batch = batch.to(device=reference.device, dtype=reference.dtype)

    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    results: dict[str, dict] = {}
    try:
        model.train()
        order = _forward_order(model, batch, layers)
        for name, module in order:
            if isinstance(module, nn.RNNBase):
                results.update(_lsuv_recurrent(model, batch, name, module, tolerance, max_tries))
                continue
            if module.weight.numel() == 0:
                continue

            def measure(module: nn.Module = module) -> float:
                return _variance(_run_until(model, batch, module, pre=False))

            results[name] = _rescale_until_unit(module.weight, measure, name, tolerance, max_tries)
    finally:
        for module, training in modes.items():
            module.training = training
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])

    reached = {id(module) for _, module in order}
    for name, module in layers:
        if id(module) not in reached:
            logger.info("lsuv layer=%s status=unused (not reached by the forward pass)", name)
            results[name] = {
                "variance": float("nan"),
                "tries": 0,
                "converged": False,
                "status": "unused",
            }
    failed = [name for name, result in results.items() if result["status"] == "not_converged"]
    if failed:
        warnings.warn(
            f"lsuv: {len(failed)} layer(s) did not reach variance 1 ± {tolerance} in "
            f"{max_tries} tries: {', '.join(failed)}. Raise max_tries or tolerance.",
            stacklevel=2,
        )
    return results
