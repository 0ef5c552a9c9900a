"""A CIFAR-style ResNet of basic blocks (He et al., 2016), with or without batch norm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from initbench.models.mlp import make_activation

NORMS = ("batch", "none")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions on the residual branch, added to a shortcut: ``act(branch + short)``.

    ``norm="batch"``: ``branch(x) = bn2(conv2(act(bn1(conv1(x)))))``.

    ``norm="none"``: the Fixup form (Zhang et al., 2019),
    ``branch(x) = scale * conv2(act(conv1(x + bias1a) + bias1b) + bias2a) + bias2b``,
    where the four scalar biases start at 0 and ``scale`` at 1, so that under any initializer
    other than ``fixup`` the block computes exactly the plain block; the ``fixup`` initializer
    zeroes ``conv2`` so the branch starts as the zero function, and training moves the scalars.

    The shortcut is the identity, or a strided 1x1 convolution (plus batch norm when ``norm`` is
    ``batch``) where the block changes resolution or width ("option B" of He et al.).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, activation: str, norm: str
    ) -> None:
        super().__init__()
        self.norm = norm
        batch_norm = norm == "batch"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act2 = make_activation(activation)
        if stride != 1 or in_channels != out_channels:
            projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.shortcut: nn.Module = (
                nn.Sequential(projection, nn.BatchNorm2d(out_channels))
                if batch_norm
                else nn.Sequential(projection)
            )
        else:
            self.shortcut = nn.Identity()
        if not batch_norm:
            self.bias1a = nn.Parameter(torch.zeros(1))
            self.bias1b = nn.Parameter(torch.zeros(1))
            self.bias2a = nn.Parameter(torch.zeros(1))
            self.bias2b = nn.Parameter(torch.zeros(1))
            self.scale = nn.Parameter(torch.ones(1))

    @property
    def branch_layers(self) -> tuple[nn.Conv2d, nn.Conv2d]:
        """The weight layers of the residual branch, in order (Fixup's m = 2)."""
        return (self.conv1, self.conv2)

    def branch(self, x: Tensor) -> Tensor:
        if self.norm == "batch":
            return self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        hidden = self.act1(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(hidden + self.bias2a) * self.scale + self.bias2b

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.branch(x) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, then stages of :class:`ResidualBlock`, global average pool, linear classifier.

    Stage ``s`` has ``blocks[s]`` blocks of ``width * 2**s`` channels; every stage after the first
    starts with a stride-2 block. ``blocks=[3, 3, 3]`` is resnet20, ``[9, 9, 9]`` resnet56 and the
    default ``[17, 17, 16]`` has 50 blocks (102 weight layers with stem and classifier).
    """

    is_convolutional = True

    def __init__(
        self,
        *,
        blocks: Sequence[int] = (17, 17, 16),
        width: int = 16,
        norm: str = "batch",
        activation: str = "relu",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is not known; choose one of: {', '.join(NORMS)}.")
        self.activation = activation
        self.norm = norm
        # Without batch norm after it, the stem conv keeps its own bias.
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=norm != "batch"),
            nn.BatchNorm2d(width) if norm == "batch" else nn.Identity(),
            make_activation(activation),
        )
        stages: list[nn.Module] = []
        in_channels = width
        for stage, count in enumerate(blocks):
            out_channels = width * 2**stage
            stage_blocks = [
                ResidualBlock(
                    in_channels if index == 0 else out_channels,
                    out_channels,
                    stride=2 if stage > 0 and index == 0 else 1,
                    activation=activation,
                    norm=norm,
                )
                for index in range(count)
            ]
            stages.append(nn.Sequential(*stage_blocks))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    @property
    def residual_blocks(self) -> list[ResidualBlock]:
        return [module for module in self.modules() if isinstance(module, ResidualBlock)]

    def forward(self, images: Tensor) -> Tensor:
        features = self.stages(self.stem(images))
        return self.classifier(self.pool(features).flatten(1))
