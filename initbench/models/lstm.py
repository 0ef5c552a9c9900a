"""An LSTM that reads an image row by row."""

from __future__ import annotations

from torch import Tensor, nn


class LSTMClassifier(nn.Module):
    """Read a (N, 3, 32, 32) image as 32 time steps of 96 values, classify the last hidden state.

    Each step is one image row: its 32 pixels with their 3 channels side by side
    (``[r, g, b, r, g, b, ...]``). The cell's nonlinearities are fixed (sigmoid gates, tanh
    cell), so ``activation`` is tanh (the config check refuses any other): it names the gain
    convention that initializers use for the recurrent and input weights.
    """

    is_convolutional = False

    def __init__(
        self,
        *,
        layers: int = 1,
        hidden: int = 128,
        activation: str = "tanh",
        num_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.rnn = nn.LSTM(image_size * channels, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        # (N, C, H, W) -> (N, H, W, C) -> (N, H, W*C): row h becomes step h.
        rows = images.permute(0, 2, 3, 1).flatten(2)
        # The last step of the top layer's output sequence, the same values as h_n[-1], taken
        # from the sequence so that gradients reach the layer's output (what probe_model reads).
        sequence, _ = self.rnn(rows)
        return self.classifier(sequence[:, -1])
