"""Spectral scaling at initialization, and spectral normalization for training."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

logger = logging.getLogger(__name__)


def spectral_norm_of(tensor: Tensor, dim: int = 0) -> float:
    """Largest singular value of ``tensor`` read as a matrix (size(dim) × the rest), in float32."""
    if tensor.numel() == 0:
        return 0.0
    matrix = tensor.detach().float().movedim(dim, 0).reshape(tensor.shape[dim], -1)
    return float(torch.linalg.matrix_norm(matrix, ord=2))


@torch.no_grad()
def spectral_scale_(tensor: Tensor, gain: float = 1.0, *, dim: int = 0) -> Tensor:
    r"""Rescale ``tensor`` in place so that its largest singular value is ``gain``.

    .. math:: W \leftarrow \text{gain} \cdot W / \sigma_{\max}(W)

    The tensor is read as a matrix the way ``torch.nn.utils.parametrizations.spectral_norm``
    reads it: size(dim) × the rest (dim = 1 for a transposed conv's (in, out/g, *k) weight), so
    a conv kernel is flattened to out × in·k·k. That bounds the flattened kernel, not the
    convolution's operator norm, which can be larger by up to √(∏k). Miyato, Kataoka, Koyama &
    Yoshida (2018) normalize by σ_max during training; this is the one-off version at init.

    Traps: an all-zero weight has σ_max = 0 and is left as it is (with a warning) instead of
    becoming NaN. σ_max is computed in float32, so bf16/fp16 weights are scaled in float32 and
    rounded once.

    Example::

        >>> w = spectral_scale_(torch.randn(6, 4), 2.0)
        >>> round(torch.linalg.matrix_norm(w, ord=2).item(), 4)
        2.0
    """
    if tensor.numel() == 0:
        return tensor
    sigma = spectral_norm_of(tensor, dim)
    if sigma == 0.0 or not torch.isfinite(torch.tensor(sigma)):
        warnings.warn(
            f"spectral_scale_: a weight of shape {tuple(tensor.shape)} has largest singular "
            f"value {sigma}; it cannot be scaled to {gain} and is left as it is.",
            stacklevel=2,
        )
        return tensor
    return tensor.copy_(tensor.float() * (gain / sigma))


def add_spectral_norm(module: nn.Module, name: str = "weight") -> bool:
    """Wrap ``module.<name>`` with PyTorch's spectral-norm parametrization, for training.

    The parametrization keeps the original parameter object (as
    ``module.parametrizations.weight.original``), so an optimizer built before still updates
    it; state-dict keys change. Returns False, doing nothing, for an empty weight or one that is
    already parametrized.

    Trap: the effective weight is then W / σ_max(W) at every step, so whatever scale the
    initializer chose is replaced by σ_max = 1 from the first forward pass on.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor) or weight.numel() == 0:
        return False
    if parametrize.is_parametrized(module, name):
        return False
    spectral_norm(module, name)
    return True
