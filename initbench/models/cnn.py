"""The classic small convolutional network of the CIFAR-10 tutorials."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from initbench.models.mlp import make_activation


class CNN(nn.Module):
    """Conv 3x3 (padding 1) and 2x2 max-pool per entry of ``channels``, then two linear layers.

    With the default ``channels=[32, 64]`` a 32x32 image leaves the features as 64 x 8 x 8, so the
    first linear layer maps 4096 -> ``hidden`` and the classifier ``hidden`` -> classes.
    """

    is_convolutional = True

    def __init__(
        self,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: int = 512,
        activation: str = "relu",
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.activation = activation
        layers: list[nn.Module] = []
        in_channels, size = 3, image_size
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                make_activation(activation),
                nn.MaxPool2d(2),
            ]
            in_channels, size = out_channels, size // 2
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(
            nn.Linear(in_channels * size * size, hidden), make_activation(activation)
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.hidden(self.features(images).flatten(1)))
