"""Fixup: training deep residual networks without normalization (Zhang, Dauphin & Ma, 2019)."""

from __future__ import annotations

import torch
from torch import nn

from initbench.models.resnet import ResidualBlock


def fixup_branch_scale(num_branches: int, layers_per_branch: int) -> float:
    r"""The factor :math:`L^{-1/(2m-2)}` for the weights inside a residual branch.

    Derivation (Zhang et al., 2019, section 3): with L branches of m layers each, a branch
    scaled by c per layer changes the output by about :math:`c^{m-1}` times its gradient step,
    and L such branches add up; keeping the total update O(1) per SGD step needs
    :math:`L\,c^{2m-2} = O(1)`. For basic blocks (m = 2) that is :math:`L^{-1/2}`.
    """
    if num_branches < 1 or layers_per_branch < 2:
        raise ValueError(
            f"fixup needs at least one residual branch of at least 2 layers; got "
            f"L={num_branches}, m={layers_per_branch}."
        )
    return num_branches ** (-1.0 / (2 * layers_per_branch - 2))


@torch.no_grad()
def fixup_(model: nn.Module) -> dict[str, float]:
    r"""Turn a standard initialization of a ResNet without normalization into Fixup.

    Run after every layer holds a standard initialization (He et al., 2015; the registry's
    ``fixup`` initializer uses He normal). Then:

    1. the last layer of every residual branch is zero, so each branch is the zero function and
       the network starts as its shortcut path;
    2. the other weight layers of each branch are multiplied by :math:`L^{-1/(2m-2)}`
       (:func:`fixup_branch_scale`), L = number of branches, m = layers per branch;
    3. the classifier's weight and bias are zero;
    4. each block's scalar biases (``bias1a``, ``bias1b``, ``bias2a``, ``bias2b``) are 0 and its
       multiplier (``scale``) is 1: the identity, which training then moves.

    Zhang, Dauphin & Ma (2019), "Fixup initialization: residual learning without normalization".

    Raises ValueError for a model without :class:`~initbench.models.resnet.ResidualBlock` or
    whose blocks use batch norm: Fixup replaces normalization, it does not combine with it.
    Returns the scale used and the number of branches, for logging.

    Example::

        >>> from initbench.models import ResNet
        >>> model = ResNet(blocks=[2, 2], width=8, norm="none")
        >>> fixup_(model)["scale"]  # L = 4 branches of m = 2 layers: 4 ** -0.5
        0.5
    """
    blocks = [module for module in model.modules() if isinstance(module, ResidualBlock)]
    if not blocks:
        raise ValueError(
            f"fixup needs a residual network (model=resnet); {type(model).__name__} has no "
            "residual blocks."
        )
    if any(block.norm != "none" for block in blocks):
        raise ValueError(
            "fixup needs model.norm=none: it replaces batch normalization; with "
            "model.norm=batch use kaiming or another initializer."
        )
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError("fixup needs the model's last layer as a Linear named `classifier`.")
    layers_per_branch = len(blocks[0].branch_layers)
    scale = fixup_branch_scale(len(blocks), layers_per_branch)
    for block in blocks:
        *inner, last = block.branch_layers
        for layer in inner:
            layer.weight.mul_(scale)
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
            getattr(block, name).zero_()
        block.scale.fill_(1.0)
    classifier.weight.zero_()
    if classifier.bias is not None:
        classifier.bias.zero_()
    return {"branches": len(blocks), "layers_per_branch": layers_per_branch, "scale": scale}
