"""Recurrent weights: gate blocks, IRNN, the LSTM forget-gate bias and the usual LSTM recipe.

PyTorch stacks the gates of ``nn.LSTM`` (input, forget, cell, output) and ``nn.GRU`` (reset,
update, new) along dim 0 of ``weight_ih_l{k}`` (gates·hidden, in) and ``weight_hh_l{k}``
(gates·hidden, hidden). Each gate block is a separate linear map with fan_in = in and
fan_out = hidden, so every initializer here, and the walker in
:mod:`initbench.inits.registry`, treats the blocks one at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from initbench.inits.orthogonal import orthogonal_
from initbench.inits.variance_scaling import normal_, xavier_uniform_

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
GATE_NAMES = {
    "LSTM": ("input", "forget", "cell", "output"),
    "GRU": ("reset", "update", "new"),
    "RNN_TANH": ("hidden",),
    "RNN_RELU": ("hidden",),
}
LSTM_FORGET_GATE = 1  # position of the forget gate in PyTorch's (i, f, g, o) stacking

_PARAMETER = re.compile(r"(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


@dataclass
class RecurrentWeight:
    """One weight parameter of a recurrent module and how it splits into gate blocks."""

    name: str  # e.g. "weight_ih_l0", "weight_hh_l1_reverse"
    kind: str  # recurrent_input | recurrent_hidden | recurrent_projection
    tensor: Tensor
    gates: int  # blocks stacked along dim 0 (1 for the LSTM projection weight_hr)


def gate_count(module: nn.RNNBase) -> int:
    return GATES[module.mode]


def recurrent_weights(module: nn.RNNBase) -> list[RecurrentWeight]:
    """The weight parameters of an ``nn.RNN``/``nn.GRU``/``nn.LSTM``, in registration order."""
    weights = []
    for name, tensor in module.named_parameters(recurse=False):
        match = _PARAMETER.match(name)
        if match is None or match.group(1) != "weight":
            continue
        role = match.group(2)
        kind = {"ih": "recurrent_input", "hh": "recurrent_hidden"}.get(
            role, "recurrent_projection"
        )
        gates = 1 if role == "hr" else gate_count(module)
        weights.append(RecurrentWeight(name, kind, tensor, gates))
    return weights


def gate_blocks(tensor: Tensor, gates: int) -> tuple[Tensor, ...]:
    """Views of the ``gates`` blocks stacked along dim 0; writing to a view writes the weight."""
    return tensor.chunk(gates, dim=0) if tensor.numel() else (tensor,)


@torch.no_grad()
def identity_(tensor: Tensor, scale: float = 1.0) -> Tensor:
    """Set a 2-D block to ``scale`` times the identity (rectangular: ones on the diagonal)."""
    return tensor.copy_(torch.eye(*tensor.shape) * scale)


@torch.no_grad()
def irnn_weight_(
    tensor: Tensor,
    kind: str,
    *,
    recurrent_scale: float = 1.0,
    input_std: float = 0.001,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""IRNN: recurrent gate blocks are the identity, all other weights small Gaussians.

    .. math:: W_{hh} = \text{recurrent\_scale} \cdot I, \qquad
              W_{ih},\ W_{\text{other}} \sim \mathcal{N}(0, \text{input\_std}^2),
              \quad b = 0

    With ReLU units the hidden state is then copied unchanged from step to step unless the
    input moves it, so gradients neither vanish nor explode at the start. Le, Jaitly & Hinton
    (2015), "A simple way to initialize recurrent networks of rectified linear units". Also
    known as ``identity_rnn``.

    Trap: designed for a plain ReLU RNN. In an LSTM each gate's recurrent block becomes the
    identity, which saturates sigmoid gates for large hidden values; the paper itself uses a
    scale of 0.01 on some tasks (``recurrent_scale``).
    """
    if kind == "recurrent_hidden":
        return identity_(tensor, recurrent_scale)
    return normal_(tensor, input_std, generator=generator)


@torch.no_grad()
def recurrent_weight_(
    tensor: Tensor,
    kind: str,
    *,
    gain: float = 1.0,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The usual LSTM recipe: Xavier-uniform input weights, orthogonal recurrent weights.

    .. math:: W_{ih}^{(gate)} \sim \mathcal{U}\big(\pm\text{gain}\sqrt{6/(n_{in}+n_h)}\big),
              \qquad W_{hh}^{(gate)} \text{ orthogonal} \times \text{gain}, \qquad b = 0

    with the forget-gate bias at 1 (Gers, Schmidhuber & Cummins, 2000; Jozefowicz, Zaremba &
    Sutskever, 2015) set by the walker's ``forget_bias``. These are Keras' LSTM defaults
    (``glorot_uniform``, ``orthogonal``, ``unit_forget_bias=True``), with gain 1. Layers that
    are not recurrent get Xavier uniform. Orthogonal recurrent blocks (Saxe et al., 2014) have
    all singular values equal to gain, so repeated multiplication over time keeps the norm.
    """
    if kind == "recurrent_hidden":
        return orthogonal_(tensor, gain, generator=generator)
    return xavier_uniform_(tensor, gain, fan_in=fan_in, fan_out=fan_out, generator=generator)


@torch.no_grad()
def set_recurrent_bias_(module: nn.RNNBase, value: float) -> None:
    """Make every gate's total bias ``value``: ``bias_ih = value``, ``bias_hh = 0``.

    Trap: PyTorch adds ``bias_ih`` and ``bias_hh``; filling both with the constant would double
    it.
    """
    for name, tensor in module.named_parameters(recurse=False):
        if name.startswith("bias_ih"):
            tensor.fill_(value)
        elif name.startswith("bias_hh"):
            tensor.zero_()


@torch.no_grad()
def set_forget_bias_(module: nn.LSTM, value: float) -> None:
    """Set the LSTM forget gate's total bias to ``value`` (``bias_ih`` part; ``bias_hh`` part 0).

    A forget bias of 1 keeps the forget gate open (σ(1) ≈ 0.73) at the start, so the cell state
    and its gradient survive many steps. Gers et al. (2000); Jozefowicz et al. (2015) found it
    closes most of the gap between the LSTM and the best architectures they searched.
    """
    if not isinstance(module, nn.LSTM):
        raise ValueError(
            f"forget_bias applies to nn.LSTM only, not {type(module).__name__} "
            "(a GRU has no forget gate); set forget_bias: null."
        )
    hidden = module.hidden_size
    forget = slice(LSTM_FORGET_GATE * hidden, (LSTM_FORGET_GATE + 1) * hidden)
    for name, tensor in module.named_parameters(recurse=False):
        if name.startswith("bias_ih"):
            tensor[forget] = value
        elif name.startswith("bias_hh"):
            tensor[forget] = 0.0


def single_layer_copy(module: nn.RNNBase, layer: int) -> nn.RNNBase:
    """A one-layer, batch-first module with the weights of ``module``'s layer ``layer``.

    Lets a caller run a stacked RNN one layer at a time, e.g. to see what each layer's input
    projection receives.
    """
    directions = 2 if module.bidirectional else 1
    input_size = module.input_size if layer == 0 else module.hidden_size * directions
    if layer > 0 and getattr(module, "proj_size", 0):
        input_size = module.proj_size * directions
    options: dict = {
        "bias": module.bias,
        "batch_first": True,
        "bidirectional": module.bidirectional,
    }
    if isinstance(module, nn.LSTM):
        options["proj_size"] = module.proj_size
    elif isinstance(module, nn.RNN):
        options["nonlinearity"] = module.nonlinearity
    # The base class, not type(module): a subclass may take other constructor arguments.
    base = {"LSTM": nn.LSTM, "GRU": nn.GRU}.get(module.mode, nn.RNN)
    copy = base(input_size, module.hidden_size, num_layers=1, **options)
    reference = next(iter(module.parameters()))
    copy = copy.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        for name, tensor in copy.named_parameters():
            tensor.copy_(getattr(module, name.replace("_l0", f"_l{layer}")))
    return copy
