"""A plain deep convolutional network: no residual connections, no normalization.

The test bed of delta-orthogonal initialization (Xiao et al., 2018): every convolution keeps
the resolution ('same' padding, stride 1), so signal propagation depends on the weights alone.
"""

from __future__ import annotations

from torch import Tensor, nn

from initbench.models.mlp import make_activation


class PlainCNN(nn.Module):
    """Stem conv 3 -> width, then ``depth`` convs width -> width, global average pool, linear.

    All convolutions use ``kernel_size`` with ``padding='same'``. For an even kernel PyTorch pads
    one more pixel on the right/bottom than on the left/top, so the tap that lines an output up
    with the input at the same position is ``(kernel_size - 1) // 2`` (see
    :func:`initbench.inits.orthogonal.delta_orthogonal_`).
    """

    is_convolutional = True

    def __init__(
        self,
        *,
        depth: int = 32,
        width: int = 64,
        kernel_size: int = 3,
        activation: str = "tanh",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.activation = activation
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, kernel_size, padding="same"),
            make_activation(activation),
        ]
        for _ in range(depth):
            layers += [
                nn.Conv2d(width, width, kernel_size, padding="same"),
                make_activation(activation),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(images)).flatten(1))
