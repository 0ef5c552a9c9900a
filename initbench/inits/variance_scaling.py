"""Independent draws whose variance is set by a layer's fans: Xavier, He, LeCun and their parent.

Every function here fills a tensor in place under ``torch.no_grad``, returns it, and takes an
optional CPU ``torch.Generator``. Values are drawn on the CPU in float32 (float64 for the
truncated normal) and then copied into the tensor, so that the same generator gives the same
weights on every device and in every dtype, rounded once.

Fan convention (:func:`layer_fans`), which differs from ``torch.nn.init`` in two places:

* ``Linear(in, out)``: fan_in = in, fan_out = out.
* ``Conv*d(in, out, k, groups=g)``, weight (out, in/g, *k): fan_in = (in/g)·∏k,
  fan_out = (out/g)·∏k. Each output sums over in/g channels and each input feeds only out/g of
  them; ``torch.nn.init`` takes fan_out = out·∏k, which overcounts by g (a depthwise conv with
  g = in = out gets fan_out = out·∏k instead of ∏k).
* ``ConvTranspose*d(in, out, k, groups=g)``, weight (in, out/g, *k): the same numbers, read in
  the layer's direction (in -> out). ``torch.nn.init`` reads the weight's dims as a conv's and
  gets fan_in = (out/g)·∏k, fan_out = in·∏k, i.e. fan_in and fan_out swapped.
* Stride is ignored, as in He et al. (2015) and ``torch.nn.init``. It is exact for the forward
  pass of a conv and for stride 1. A stride s makes the true fan_out of a conv, and the true
  fan_in of a transposed conv (each output sums over (in/g)·∏k/∏s inputs on average), smaller
  by ∏s; the promised variance is then off by that factor in that direction.
* Recurrent weights (``nn.LSTM``/``nn.GRU``/``nn.RNN``) stack one (hidden, in) block per gate;
  each block is a layer of its own: fan_in = in (input size or hidden), fan_out = hidden.
  ``torch.nn.init`` would take fan_out = gates·hidden for the stacked matrix.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

# Standard deviation of N(0, 1) truncated to [-2, 2]: sqrt(1 - 4·φ(2) / (2Φ(2) - 1)), where φ
# and Φ are the standard normal density and distribution function. Dividing by it makes a
# normal truncated at two of its own standard deviations have the standard deviation promised.
TRUNCATED_NORMAL_STD = 0.87962566103423978

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")

Mode = Literal["fan_in", "fan_out", "fan_avg"]
Distribution = Literal["normal", "truncated_normal", "uniform"]


# ----------------------------------------------------------------------------- fans


def tensor_fans(tensor: Tensor) -> tuple[int, int]:
    """Fans of a bare weight tensor laid out as (out, in, *kernel), as ``torch.nn.init`` reads.

    Use :func:`layer_fans` when the module is known: it accounts for groups and transposition.
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"fans need a weight of at least 2 dimensions (out, in, *kernel); got shape "
            f"{tuple(tensor.shape)}. 1-D parameters (biases, norm scales) have no fan."
        )
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def layer_fans(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or (transposed) convolution, by the convention above."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        receptive_field = math.prod(module.kernel_size)
        groups = module.groups
        return (
            module.in_channels // groups * receptive_field,
            module.out_channels // groups * receptive_field,
        )
    raise TypeError(
        f"layer_fans takes nn.Linear or nn.Conv*d/ConvTranspose*d, not {type(module).__name__}; "
        "for recurrent weights the fans are per gate block: (in, hidden)."
    )


def _fan(fan_in: float, fan_out: float, mode: str) -> float:
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    if mode == "fan_avg":
        return (fan_in + fan_out) / 2
    raise ValueError(f"mode={mode!r} is not known; choose one of: {', '.join(MODES)}.")


def _resolve_fans(
    tensor: Tensor, fan_in: float | None, fan_out: float | None
) -> tuple[float, ...]:
    if fan_in is None or fan_out is None:
        default_in, default_out = tensor_fans(tensor)
        fan_in = default_in if fan_in is None else fan_in
        fan_out = default_out if fan_out is None else fan_out
    if fan_in <= 0 or fan_out <= 0:
        raise ValueError(
            f"fan_in={fan_in} and fan_out={fan_out} must be positive; a weight of shape "
            f"{tuple(tensor.shape)} has no inputs or outputs."
        )
    return fan_in, fan_out


# ----------------------------------------------------------------------------- fixed scales


@torch.no_grad()
def uniform_(
    tensor: Tensor, bound: float = 0.01, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill ``tensor`` with draws from :math:`\mathcal{U}(-\text{bound}, \text{bound})`.

    Variance :math:`\text{bound}^2 / 3`, whatever the layer's size: the scale that makes a deep
    net's signal vanish or explode, which is what the variance-scaling family fixes.
    """
    sample = torch.rand(tensor.shape, generator=generator) * (2 * bound) - bound
    return tensor.copy_(sample)


@torch.no_grad()
def normal_(
    tensor: Tensor, std: float = 0.01, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill ``tensor`` with draws from :math:`\mathcal{N}(0, \text{std}^2)`, a fixed scale."""
    return tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


@torch.no_grad()
def truncated_normal_(
    tensor: Tensor,
    std: float = 0.02,
    bound: float = 2.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Fill ``tensor`` with :math:`\mathcal{N}(0, \text{std}^2)` truncated to ±bound·std.

    Sampled by inverting the distribution function on :math:`\mathcal{U}(\Phi(-b), \Phi(b))`.
    This is ``torch.nn.init.trunc_normal_`` with ``a = -bound·std, b = bound·std`` (and
    TensorFlow's ``truncated_normal``), as used for ViT and BERT weights.

    Trap: ``std`` is the standard deviation of the normal *before* truncation; the values drawn
    have a smaller one, ``0.87962566·std`` at the default bound of 2. (timm's
    ``trunc_normal_(std=0.02)`` has the same trap, and its default ``a=-2, b=2`` are absolute
    values, i.e. no truncation at all for small std.) :func:`variance_scaling_` corrects for it.
    """
    if bound <= 0:
        raise ValueError(f"bound={bound} must be positive (in units of std).")
    # float64 keeps the inverse error function accurate in the tails.
    edge = torch.tensor(bound / math.sqrt(2.0), dtype=torch.float64)
    low, high = -torch.erf(edge), torch.erf(edge)  # 2Φ(±b) - 1
    uniform = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
    standard = torch.erfinv(low + (high - low) * uniform) * math.sqrt(2.0)
    return tensor.copy_(standard.clamp_(-bound, bound) * std)


# ----------------------------------------------------------------------------- variance scaling


@torch.no_grad()
def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: Mode = "fan_in",
    distribution: Distribution = "truncated_normal",
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Fill ``tensor`` with zero-mean draws of variance ``scale / n``.

    .. math::
        \operatorname{Var}(W) = \frac{\text{scale}}{n}, \qquad
        n = \text{fan\_in} \mid \text{fan\_out} \mid \tfrac{1}{2}(\text{fan\_in}+\text{fan\_out})

    ``normal``: :math:`\mathcal{N}(0, s/n)`; ``uniform``: :math:`\mathcal{U}(-a, a)` with
    :math:`a = \sqrt{3 s / n}`; ``truncated_normal``: a normal of standard deviation
    :math:`\sqrt{s/n} / 0.87962566` truncated at two of *its* standard deviations, so the
    variance after truncation is exactly ``s/n`` (:data:`TRUNCATED_NORMAL_STD`).

    Special cases: Xavier/Glorot (scale = gain², fan_avg), He/Kaiming (scale = gain² = 2 for
    ReLU, fan_in or fan_out), LeCun (scale = 1, fan_in). Keras' ``VarianceScaling``, whose
    default distribution this follows; Glorot & Bengio (2010), He et al. (2015).

    Args:
        fan_in, fan_out: the layer's fans (:func:`layer_fans`); by default read from the
            tensor's shape as (out, in, *kernel), which is wrong for grouped and transposed
            convolutions and for stacked recurrent gates.

    Example::

        >>> w = torch.empty(256, 512)
        >>> _ = variance_scaling_(w, 2.0, "fan_in", "truncated_normal")  # He, truncated
        >>> round(w.var().item() * 512, 1)
        2.0
    """
    if scale <= 0:
        raise ValueError(f"scale={scale} must be positive.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution={distribution!r} is not known; "
            f"choose one of: {', '.join(DISTRIBUTIONS)}."
        )
    fan_in, fan_out = _resolve_fans(tensor, fan_in, fan_out)
    std = math.sqrt(scale / _fan(fan_in, fan_out, mode))
    if distribution == "normal":
        return normal_(tensor, std, generator=generator)
    if distribution == "uniform":
        return uniform_(tensor, math.sqrt(3.0) * std, generator=generator)
    return truncated_normal_(tensor, std / TRUNCATED_NORMAL_STD, 2.0, generator=generator)


@torch.no_grad()
def xavier_uniform_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Xavier/Glorot uniform: draws from :math:`\mathcal{U}(-a, a)`.

    .. math:: a = \text{gain} \cdot \sqrt{6 / (\text{fan\_in} + \text{fan\_out})}

    The compromise between keeping the forward variance (:math:`n_{in}\operatorname{Var}W = 1`)
    and the backward one (:math:`n_{out}\operatorname{Var}W = 1`) for a linear (or tanh near 0)
    network. Glorot & Bengio (2010). Also known as ``glorot_uniform``; short name ``xavier``.

    Trap: the paper's gain is 1; a ReLU network needs gain √2 to keep its variance, and with
    fan_in = fan_out that makes it identical to :func:`kaiming_uniform_`.
    """
    return variance_scaling_(
        tensor, gain**2, "fan_avg", "uniform", fan_in=fan_in, fan_out=fan_out, generator=generator
    )


@torch.no_grad()
def xavier_normal_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Xavier/Glorot normal: :math:`\mathcal{N}(0, \text{gain}^2 \cdot 2/(n_{in}+n_{out}))`.

    Glorot & Bengio (2010). Also known as ``glorot_normal``. Untruncated, unlike Keras'
    ``glorot_normal``, which draws a truncated normal with the same variance.
    """
    return variance_scaling_(
        tensor, gain**2, "fan_avg", "normal", fan_in=fan_in, fan_out=fan_out, generator=generator
    )


@torch.no_grad()
def kaiming_uniform_(
    tensor: Tensor,
    gain: float = math.sqrt(2.0),
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""He/Kaiming uniform: :math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{3/n}`.

    :math:`n` is fan_in (keeps the forward variance) or fan_out (keeps the backward one).
    He et al. (2015). Also known as ``he_uniform``.

    Trap: ``nn.Linear``/``nn.Conv*d`` use this with gain :math:`\sqrt{2/(1+5)}`, i.e.
    :math:`\mathcal{U}(\pm 1/\sqrt{n})`, for their default init: not He's ReLU gain.
    """
    return variance_scaling_(
        tensor, gain**2, mode, "uniform", fan_in=fan_in, fan_out=fan_out, generator=generator
    )


@torch.no_grad()
def kaiming_normal_(
    tensor: Tensor,
    gain: float = math.sqrt(2.0),
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""He/Kaiming normal: :math:`\mathcal{N}(0, \text{gain}^2/n)`, n = fan_in or fan_out.

    For ReLU, :math:`E[\mathrm{relu}(h)^2] = \operatorname{Var}(h)/2`, so gain² = 2 makes every
    layer's pre-activation variance equal the previous one's. He et al. (2015). Also known as
    ``he_normal``; short name ``kaiming``.

    Trap: Keras' ``he_normal`` draws a truncated normal of the same variance; torchvision's
    ResNets use mode fan_out.

    Example::

        >>> conv = nn.Conv2d(16, 32, 3, groups=4)
        >>> fan_in, fan_out = layer_fans(conv)  # (4*9, 8*9): groups counted
        >>> _ = kaiming_normal_(conv.weight, fan_in=fan_in, fan_out=fan_out)
    """
    return variance_scaling_(
        tensor, gain**2, mode, "normal", fan_in=fan_in, fan_out=fan_out, generator=generator
    )


@torch.no_grad()
def lecun_normal_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""LeCun normal: :math:`\mathcal{N}(0, \text{gain}^2/\text{fan\_in})`, gain 1 by default.

    LeCun et al. (1998, "Efficient BackProp"); the initialization self-normalizing (SELU)
    networks need, Klambauer et al. (2017). Trap: Keras' ``lecun_normal`` is truncated.
    """
    return variance_scaling_(
        tensor, gain**2, "fan_in", "normal", fan_in=fan_in, fan_out=fan_out, generator=generator
    )


@torch.no_grad()
def lecun_uniform_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    fan_in: float | None = None,
    fan_out: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""LeCun uniform: :math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{3/\text{fan\_in}}`.

    LeCun et al. (1998).
    """
    return variance_scaling_(
        tensor, gain**2, "fan_in", "uniform", fan_in=fan_in, fan_out=fan_out, generator=generator
    )
