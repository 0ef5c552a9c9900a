"""The fast path of the training loop, as far as a CPU can check it.

What these tests hold the runner to (issue 7): no read back to the host on an ordinary step;
batches cropped, flipped and normalized where the images live; bf16 autocast and channels-last
chosen by device and model kind only; evaluation under inference mode with its own batch size;
a CIFAR-10 run of the CNN within 2 GiB of memory. The CUDA side is in ``test_cuda.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from initbench.app import compose_config
from initbench.data import Dataset, augment, normalize
from initbench.train import Trainer, resolve_precision, use_channels_last

# 16 steps per epoch; steps.csv and grad_norms.csv every 5 steps; 3 evaluation batches of 25.
SMALL = ["model=cnn", "model.channels=[4,8]", "model.hidden=16", "data=synthetic",
         "data.num_train=256", "data.num_test=60", "train.batch_size=16", "train.epochs=1",
         "train.log_every=5", "diagnostics.grad_every=5", "train.eval_batch_size=25",
         "train.checkpoint=false", "train.threads=1"]  # fmt: skip
aten = torch.ops.aten
ARCHIVE = Path(
    os.environ.get(
        "INITBENCH_CIFAR_ARCHIVE",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz",
    )
)  # as in conftest.py


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A run sets torch's thread count for the whole process; give the next test it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def new_trainer(kind: type[Trainer], overrides: list[str], run_dir: Path) -> Trainer:
    run_dir.mkdir(parents=True)
    return kind(compose_config(overrides), run_dir)


# ----------------------------------------------------------------------------- host reads


class RecordingTrainer(Trainer):
    """Knows when it is inside ``train_epoch``, where only logging points may read back."""

    in_epoch = False

    def train_epoch(self, progress):
        self.in_epoch = True
        try:
            return super().train_epoch(progress)
        finally:
            self.in_epoch = False


class HostReads(TorchDispatchMode):
    """Calls every operator whose result the host must wait for: a scalar read (``item``,
    ``bool``, ``float``), or an output whose size depends on the data (``nonzero``, boolean
    masks), which on CUDA synchronizes the stream."""

    SCALAR_OR_SIZED = {aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.nonzero,
                       aten.masked_select, aten._unique2, aten.unique_consecutive,
                       aten.unique_dim}  # fmt: skip

    def __init__(self, note):
        super().__init__()
        self.note = note

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in self.SCALAR_OR_SIZED:
            self.note(str(func.overloadpacket))
        elif func.overloadpacket is aten.index and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        ):
            self.note("boolean mask index")
        return func(*args, **kwargs)


@pytest.mark.parametrize("diagnostics", ["true", "false"])
def test_ordinary_steps_read_nothing_back_from_the_device(workdir, monkeypatch, diagnostics):
    overrides = [*SMALL, "train.max_steps=12", f"diagnostics.enabled={diagnostics}"]
    trainer = new_trainer(RecordingTrainer, overrides, workdir / "run")
    reads: list[tuple[int, str]] = []

    def note(what: str) -> None:
        if trainer.in_epoch:
            reads.append((trainer.step, what))

    # Reads that never reach the dispatcher on a CPU tensor (on CUDA each is a copy to the
    # host, and a wait for every kernel queued before it).
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
                 "__index__"):  # fmt: skip
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            note(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    with HostReads(note):
        trainer.run()

    # Logging points: steps.csv after steps 1, 5, 10 (the step count after the update);
    # grad_norms.csv on steps 0, 5, 10 (the step being taken); the epoch's end at 12.
    logging_points = {1, 5, 10, 12} | ({0} if diagnostics == "true" else set())
    ordinary = sorted((step, what) for step, what in reads if step not in logging_points)
    assert not ordinary, f"host reads on ordinary steps (step, read): {ordinary}"
    assert {1, 5, 10, 12} <= {step for step, _ in reads}  # the interception itself works
    assert trainer.summary["status"] == "completed"


# ----------------------------------------------------------------------------- batch transforms


def test_crop_and_flip_keep_every_image_a_shifted_window_of_itself():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(1, 256, (96, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, 4, generator)
    padded = torch.nn.functional.pad(images, (4,) * 4)
    seen = set()
    for i in range(len(images)):
        found = [(flip, dy, dx) for flip in (False, True) for dy in range(9) for dx in range(9)
                 if torch.equal(out[i], (padded[i].flip(2) if flip else padded[i])
                                [:, dy : dy + 32, dx : dx + 32])]  # fmt: skip
        assert found, f"image {i} is no crop of its padded (or mirrored) self"
        seen.update(found)
    assert {flip for flip, _, _ in seen} == {False, True}
    assert len({(dy, dx) for _, dy, dx in seen}) > 30  # offsets spread over the 81 possible


def test_batch_transforms_create_nothing_off_the_images_device():
    """On a fake CUDA device (no GPU needed): a tensor made on the CPU by mistake (an arange or
    a random draw without ``device=``) would meet the CUDA batch and raise."""
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
    with fake_tensor.FakeTensorMode():
        images = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="cuda")
        mean = torch.full((3,), 0.5, device="cuda")
        std = torch.full((3,), 0.25, device="cuda")
        for padding in (0, 4):
            # generator None: a real run passes one made on the device (data_generator)
            batch = normalize(augment(images, padding, None), mean, std)
            assert batch.device.type == "cuda"
            assert batch.dtype == torch.float32 and batch.shape == images.shape


def test_channel_stats_are_exact_without_a_float_copy_of_the_split():
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8)
    images[:, 2] //= 4  # channels with different statistics
    labels = torch.zeros(500, dtype=torch.int64)
    dataset = Dataset(images, labels, images[:1], labels[:1], ["a"], "test")
    mean, std = dataset.channel_stats()
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(mean, pixels.mean(1).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(std, pixels.std(1).float(), rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- device decisions


@pytest.mark.parametrize(("precision", "device", "dtype"), [
    ("auto", "cuda", torch.bfloat16), ("auto", "cpu", torch.float32),
    ("auto", "mps", torch.float32), ("fp32", "cuda", torch.float32),
    ("bf16", "cpu", torch.bfloat16), ("fp16", "cuda", torch.float16),
])  # fmt: skip
def test_autocast_precision_follows_the_device(precision, device, dtype):
    assert resolve_precision(precision, torch.device(device)) == dtype


@pytest.mark.parametrize(("requested", "device", "convolutional", "expected"), [
    (True, "cuda", True, True), (True, "cuda:1", True, True), (True, "cpu", True, True),
    (True, "mps", True, False), (True, "cuda", False, False), (True, "cpu", False, False),
    (False, "cuda", True, False), (False, "cpu", True, False),
])  # fmt: skip
def test_channels_last_for_convolutions_on_cuda_and_cpu(
    requested, device, convolutional, expected
):
    assert use_channels_last(requested, torch.device(device), convolutional) is expected


class WatchingTrainer(Trainer):
    """Records, for every forward call of the model: (inference mode, grad enabled, training
    mode, batch size, autocast on, channels-last input)."""

    def build_model(self):
        super().build_model()
        self.calls = []

        def watch(module, inputs):
            images = inputs[0]
            self.calls.append((
                torch.is_inference_mode_enabled(), torch.is_grad_enabled(), module.training,
                images.shape[0], torch.is_autocast_enabled(images.device.type),
                images.is_contiguous(memory_format=torch.channels_last),
            ))  # fmt: skip

        self.model.register_forward_pre_hook(watch)


def test_evaluation_runs_under_inference_mode_with_its_own_batch_size(workdir):
    trainer = new_trainer(WatchingTrainer, SMALL, workdir / "run")
    trainer.run()
    evaluation = [call for call in trainer.calls if call[0]]
    training = [call for call in trainer.calls if call[1]]
    # 60 test images in batches of 25, in eval mode, without autograd's bookkeeping
    assert [call[3] for call in evaluation] == [25, 25, 10]
    assert not any(training for _, _, training, *_ in evaluation)
    assert len(training) == 16 and {call[3] for call in training} == {16}
    assert not any(call[0] for call in training) and all(call[2] for call in training)


def test_bf16_autocast_covers_training_and_evaluation(workdir):
    trainer = new_trainer(WatchingTrainer, [*SMALL, "train.precision=bf16"], workdir / "bf16")
    trainer.run()
    steps = [call for call in trainer.calls if call[0] or call[1]]  # training and evaluation
    assert steps and all(call[4] for call in steps)
    assert trainer.summary["status"] == "completed"

    trainer = new_trainer(WatchingTrainer, SMALL, workdir / "fp32")  # auto on the CPU: fp32
    trainer.run()
    assert not any(call[4] for call in trainer.calls)


def test_channels_last_reaches_model_and_every_batch(workdir):
    """A convolutional model on the CPU: its convolutions and every batch it sees (training,
    evaluation, the diagnostics' probe batch) come in channels-last; with
    train.channels_last=false, none."""
    trainer = new_trainer(WatchingTrainer, [*SMALL, "train.max_steps=4"], workdir / "run")
    trainer.run()
    conv = trainer.model.features[0]
    assert trainer.channels_last
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert trainer.calls and all(call[5] for call in trainer.calls)

    off = new_trainer(WatchingTrainer, [*SMALL, "train.max_steps=4", "train.channels_last=false"],
                      workdir / "off")  # fmt: skip
    off.run()
    assert not off.channels_last and off.model.features[0].weight.is_contiguous()
    assert off.calls and not any(call[5] for call in off.calls)


@pytest.mark.parametrize("init", ["kaiming_normal", "orthogonal", "delta_orthogonal", "lsuv",
                                  "fixup", "spectral"])  # fmt: skip
def test_initial_weights_do_not_depend_on_the_layout(workdir, init):
    """The model is initialized before it goes channels-last: the same weights either way,
    bit for bit, for initializers that draw, decompose or run the model."""
    model = {"fixup": "resnet", "delta_orthogonal": "plain_cnn"}.get(init, "cnn")
    small = {"cnn": SMALL[1:3],
             "resnet": ["model.blocks=[1,1,1]", "model.width=4", "model.norm=none"],
             "plain_cnn": ["model.depth=3", "model.width=8"]}[model]  # fmt: skip
    overrides = [*SMALL[3:], f"model={model}", *small, f"init={init}"]
    weights = []
    for layout in ("true", "false"):
        trainer = new_trainer(Trainer, [*overrides, f"train.channels_last={layout}"],
                              workdir / layout)  # fmt: skip
        trainer.setup()
        trainer.load_data()
        trainer.build_model()
        assert trainer.channels_last is (layout == "true")
        weights.append({name: value.contiguous() for name, value in
                        trainer.model.state_dict().items()})  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_normalize_lays_out_channels_last_with_the_same_values():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    plain = normalize(images, mean, std)
    last = normalize(images, mean, std, channels_last=True)
    assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last)
    expected = (images.double() / 255 - mean.double().view(1, 3, 1, 1)) / std.double().view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(plain.double(), expected, rtol=0, atol=1e-6)


def test_dataset_stays_uint8_on_the_device(workdir):
    trainer = new_trainer(Trainer, SMALL, workdir / "run")
    trainer.setup()
    trainer.load_data()
    for tensor in (trainer.data.train_images, trainer.data.test_images):
        assert tensor.dtype == torch.uint8 and tensor.device == trainer.device
    assert trainer.mean.device == trainer.device and trainer.std.device == trainer.device
    trainer.close_tables()


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_cifar10_run_of_the_cnn_peaks_under_2_gib(tmp_path):
    """A real run on the full CIFAR-10 copy: data, statistics, training steps, evaluation of the
    10,000 test images and the epoch-end diagnostics. Reads the decoded-image cache where runs
    keep it (decoding once if it is missing)."""
    if not ARCHIVE.exists():
        pytest.skip(f"the CIFAR-10 JPEG archive is not at {ARCHIVE}")
    command = [sys.executable, "-m", "initbench.cli", "run", "model=cnn",
               f"data.root={ARCHIVE}", "data.download=false", "train.max_steps=5",
               "train.progress=false", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, in KiB
        process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, Path(tmp_path / "log").read_text()[-2000:]
    assert usage.ru_maxrss < 2 * 2**20, f"peak RSS {usage.ru_maxrss / 2**20:.2f} GiB"
