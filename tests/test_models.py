"""The model builders: shapes forward and backward, structure, and config errors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from initbench.config import ACTIVATIONS, ConfigError
from initbench.models import MODELS, ResidualBlock, build_model, check_model_config

torch.set_num_threads(1)

# Small versions of every model, so that 7 activations x 6 configs stay fast.
SMALL = {
    "mlp": {"name": "mlp", "depth": 2, "width": 16},
    "cnn": {"name": "cnn", "channels": [4, 8], "hidden": 16},
    "resnet": {"name": "resnet", "blocks": [1, 1, 1], "width": 4},
    "resnet_no_norm": {"name": "resnet", "blocks": [1, 1], "width": 4, "norm": "none"},
    "lstm": {"name": "lstm", "layers": 2, "hidden": 8},
    "plain_cnn": {"name": "plain_cnn", "depth": 2, "width": 4, "kernel_size": 3},
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("key", list(SMALL))
def test_forward_and_backward_shapes(key: str, activation: str) -> None:
    torch.manual_seed(0)
    if key == "lstm" and activation != "tanh":  # the cell's nonlinearities are fixed
        with pytest.raises(ConfigError, match="does not apply to model=lstm"):
            build_model({**SMALL[key], "activation": activation}, num_classes=7)
        return
    model = build_model({**SMALL[key], "activation": activation}, num_classes=7)
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    logits = model(images)
    assert logits.shape == (3, 7)
    logits.square().sum().backward()
    assert images.grad is not None and images.grad.shape == images.shape
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.shape == parameter.shape, name
    assert model.activation == activation
    assert model.is_convolutional == (SMALL[key]["name"] in ("cnn", "resnet", "plain_cnn"))


def test_models_registry_names() -> None:
    assert set(MODELS) == {"mlp", "cnn", "resnet", "lstm", "plain_cnn"}


def test_build_from_dictconfig_with_schema_defaults() -> None:
    model = build_model(OmegaConf.create({"name": "cnn"}))
    # The classic net: 3->32->64 convs, two pools: 64 x 8 x 8 = 4096 features -> 512 -> 10.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 64)]
    assert model.hidden[0].in_features == 4096 and model.hidden[0].out_features == 512
    assert model.classifier.out_features == 10


def test_default_resnet_has_50_blocks_in_3_stages() -> None:
    model = build_model({"name": "resnet"})
    assert len(model.residual_blocks) == 50
    assert [len(stage) for stage in model.stages] == [17, 17, 16]
    widths = [stage[0].conv1.out_channels for stage in model.stages]
    assert widths == [16, 32, 64]
    strides = [stage[0].conv1.stride for stage in model.stages]
    assert strides == [(1, 1), (2, 2), (2, 2)]
    # Option B shortcuts (1x1 conv + BN) only where the shape changes.
    projections = [b for b in model.residual_blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2


def test_resnet_without_norm_has_identity_fixup_scalars() -> None:
    model = build_model({"name": "resnet", "blocks": [1], "width": 4, "norm": "none"})
    block = model.residual_blocks[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
        assert getattr(block, name).item() == 0.0
    assert block.scale.item() == 1.0
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        plain = block.conv2(block.act1(block.conv1(x)))
        assert torch.allclose(block.branch(x), plain)


def test_batch_norm_resnet_blocks_have_no_fixup_scalars() -> None:
    block = ResidualBlock(4, 4, stride=1, activation="relu", norm="batch")
    assert not hasattr(block, "scale")


def test_lstm_reads_rows_of_pixels_with_interleaved_channels() -> None:
    model = build_model({"name": "lstm", "hidden": 4})
    seen = {}
    model.rnn.register_forward_pre_hook(lambda module, args: seen.setdefault("rows", args[0]))
    images = torch.randn(2, 3, 32, 32)
    model(images)
    rows = seen["rows"]
    assert rows.shape == (2, 32, 96)
    for row, column, channel in [(0, 0, 0), (5, 7, 2), (31, 31, 1)]:
        assert torch.equal(rows[:, row, column * 3 + channel], images[:, channel, row, column])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_plain_cnn_keeps_resolution_for_every_kernel(kernel_size: int) -> None:
    model = build_model({"name": "plain_cnn", "depth": 1, "width": 4, "kernel_size": kernel_size})
    features = model.features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 4, 32, 32)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"name": "transformer"}, ["'transformer'", "mlp", "cnn", "resnet", "lstm", "plain_cnn"]),
        ({"name": "mlp", "activation": "swish"}, ["'swish'", *ACTIVATIONS]),
        ({"name": "resnet", "norm": "layer"}, ["'layer'", "batch", "none"]),
        ({"name": "mlp", "depth": 0}, ["model.depth=0", ">= 1"]),
        ({"name": "mlp", "width": True}, ["model.width=True"]),
        ({"name": "cnn", "channels": [8] * 6}, ["model.channels", "1 to 5"]),
        ({"name": "resnet", "blocks": []}, ["model.blocks=[]"]),
        ({"name": "lstm", "layers": 0}, ["model.layers=0"]),
        ({"name": "plain_cnn", "kernel_size": 33}, ["model.kernel_size=33"]),
        ({"name": "mlp", "widht": 8}, ["'widht'", "depth", "width", "activation"]),
    ],
)
def test_bad_model_configs_name_the_value_and_the_choices(cfg: dict, expected: list) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_config(cfg)
    for text in expected:
        assert text in str(error.value)
    with pytest.raises(ConfigError):
        build_model(cfg)


def test_model_config_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        check_model_config(["mlp"])
