"""Orthogonal weights: dense (Saxe et al., 2014) and delta-orthogonal for convolutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def random_orthogonal(
    rows: int, columns: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """A float32 (rows, columns) matrix with orthonormal rows or columns, whichever are fewer.

    Haar-distributed: the QR factor of a Gaussian matrix with the signs of R's diagonal folded
    into Q (Mezzadri, 2007); without that fold Q is biased towards a positive diagonal.
    """
    tall = torch.randn(max(rows, columns), min(rows, columns), generator=generator)
    q, r = torch.linalg.qr(tall)
    # sign(0) would be 0 and erase a column; a zero diagonal has probability 0 but costs nothing.
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    q = q * signs
    return q if rows >= columns else q.T


@torch.no_grad()
def orthogonal_(
    tensor: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Fill ``tensor`` with a (semi-)orthogonal matrix times ``gain``.

    The tensor is read as a matrix :math:`W` of shape (rows = size(0), columns = the rest), so
    a conv kernel (out, in/g, k, k) is flattened to out × (in/g)·k·k. Afterwards
    :math:`W W^\top = \text{gain}^2 I` if rows <= columns, else :math:`W^\top W = \text{gain}^2 I`:
    all singular values equal gain, so a deep linear net neither shrinks nor grows any
    direction (dynamical isometry). Saxe, McClelland & Ganguli (2014).

    Traps: a recurrent weight stacks one block per gate, and orthogonalizing the stack leaves the
    gate blocks non-orthogonal; orthogonalize each block (the walker in
    :mod:`initbench.inits.registry` does). The QR runs in float32 and the result is copied, so
    bf16/fp16 tensors work (LAPACK has no half-precision QR) and are orthogonal to their
    precision. For a conv, the flattened kernel being orthogonal does not make the convolution
    an isometry; :func:`delta_orthogonal_` does.

    Example::

        >>> w = orthogonal_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
        True
    """
    if tensor.dim() < 2:
        raise ValueError(
            "orthogonal_ needs a tensor of at least 2 dimensions, got shape "
            f"{tuple(tensor.shape)}."
        )
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    matrix = random_orthogonal(rows, tensor.numel() // rows, generator=generator)
    return tensor.copy_((matrix * gain).reshape(tensor.shape))


def centre_tap(conv: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """Per spatial dimension, the kernel tap that reads the input at the output's own position.

    Output position i reads input positions ``i - left + j·dilation`` for taps j, where ``left``
    is the padding before the input. The tap with ``j·dilation = left`` lines the two up:

    * explicit ``padding=p``: ``j = p / dilation`` (``p = 1`` for a 3x3 conv: the middle);
    * ``padding='same'``: PyTorch pads ``left = dilation·(k-1) // 2`` before and the rest after,
      so ``j = (k - 1) // 2``; for an even kernel (k = 4: taps 0..3) that is tap 1, left of the
      geometric centre 1.5;
    * ``padding='valid'``: ``j = 0``.

    When no tap lines up (left not a multiple of the dilation, or outside the kernel) the
    geometric ``(k - 1) // 2`` is used: the conv is then an isometry composed with a shift.
    """
    taps = []
    for dim, size in enumerate(conv.kernel_size):
        dilation = conv.dilation[dim]
        if conv.padding == "same":
            left = dilation * (size - 1) // 2
        elif conv.padding == "valid":
            left = 0
        else:
            left = conv.padding[dim]  # type: ignore[index]
        tap = left // dilation
        if left % dilation != 0 or not 0 <= tap < size:
            tap = (size - 1) // 2
        taps.append(tap)
    return tuple(taps)


@torch.no_grad()
def delta_orthogonal_(
    tensor: Tensor,
    gain: float = 1.0,
    *,
    groups: int = 1,
    centre: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Delta-orthogonal conv kernel: zero except the centre tap, which is orthogonal × gain.

    .. math::
        W[:, :, c] = \text{gain} \cdot H,\quad H^\top H = I_{in},\qquad W[:, :, j] = 0,\ j \ne c

    A convolution with this kernel computes :math:`y_p = \text{gain}\cdot H x_p` at every
    position p, so :math:`\lVert y\rVert = \text{gain}\,\lVert x\rVert` exactly when the padding
    is circular (and everywhere except the border rows otherwise): a deep tanh CNN is then
    trainable at 10 000 layers. Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington (2018).
    Also known as ``convolution_delta_orthogonal`` (TensorFlow).

    Args:
        tensor: a conv weight (out, in/groups, *kernel).
        groups: the conv's groups; each group gets its own orthogonal block.
        centre: the tap per spatial dimension, by default ``(k - 1) // 2``; pass
            :func:`centre_tap` of the conv so an even kernel or an unusual padding lines up.

    Raises ValueError when out/groups < in/groups: a wide-to-narrow map cannot keep every input
    direction (use :func:`orthogonal_` for that layer). Not for transposed convolutions, whose
    weight is laid out (in, out/groups, *kernel): their centre tap would be the transpose.

    Example::

        >>> conv = nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular", bias=False)
        >>> _ = delta_orthogonal_(conv.weight, centre=centre_tap(conv))
        >>> x = torch.randn(2, 4, 6, 6)
        >>> torch.allclose(conv(x).norm(), x.norm())
        True
    """
    if tensor.dim() < 3:
        raise ValueError(
            f"delta_orthogonal_ needs a conv weight (out, in, *kernel), got shape "
            f"{tuple(tensor.shape)}; use orthogonal_ for linear layers."
        )
    out_channels, group_in = tensor.shape[0], tensor.shape[1]
    if out_channels % groups != 0:
        raise ValueError(f"groups={groups} does not divide out_channels={out_channels}.")
    group_out = out_channels // groups
    if group_out < group_in:
        raise ValueError(
            f"delta_orthogonal_ needs out_channels >= in_channels per group; got "
            f"{group_out} < {group_in} for a weight of shape {tuple(tensor.shape)}. "
            "Use orthogonal for this layer, or widen it."
        )
    kernel = tensor.shape[2:]
    centre = tuple((size - 1) // 2 for size in kernel) if centre is None else tuple(centre)
    if len(centre) != len(kernel) or not all(
        0 <= c < k for c, k in zip(centre, kernel, strict=True)
    ):
        raise ValueError(f"centre={centre} is not a tap of a kernel of size {tuple(kernel)}.")
    if tensor.numel() == 0:
        return tensor
    full = torch.zeros(tensor.shape, dtype=torch.float32)
    for group in range(groups):
        block = random_orthogonal(group_out, group_in, generator=generator)
        full[(slice(group * group_out, (group + 1) * group_out), slice(None), *centre)] = block
    return tensor.copy_(full * gain)
