"""A fully connected network, and the activation vocabulary that every model shares."""

from __future__ import annotations

from torch import Tensor, nn

from initbench.config import ACTIVATIONS

# Leaky ReLU keeps PyTorch's slope, the one torch.nn.init.calculate_gain("leaky_relu") assumes.
LEAKY_RELU_SLOPE = 0.01


def make_activation(name: str) -> nn.Module:
    """The module for an activation name from :data:`initbench.config.ACTIVATIONS`."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "selu":
        return nn.SELU()
    if name == "gelu":
        return nn.GELU()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"activation={name!r} is not known; choose one of: {', '.join(ACTIVATIONS)}.")


class MLP(nn.Module):
    """Flatten the image, then ``depth`` hidden layers of ``width`` units, then the classifier.

    The hidden layers live in ``self.hidden`` as (Linear, activation) pairs and the last layer is
    ``self.classifier``, so that initializers can tell the head from the body.
    """

    is_convolutional = False

    def __init__(
        self,
        *,
        depth: int = 3,
        width: int = 512,
        activation: str = "relu",
        num_classes: int = 10,
        in_features: int = 3 * 32 * 32,
    ) -> None:
        super().__init__()
        self.activation = activation
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), make_activation(activation)]
            features = width
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.hidden(images.flatten(1)))
