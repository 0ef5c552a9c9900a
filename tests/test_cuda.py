"""The training loop on a GPU: bf16 autocast, channels-last, data on the device, no stalls.

Skipped without CUDA; ``scripts/gpu_check.sh`` runs them (``pytest -m cuda``) with the
benchmark on a machine that has one. Each run is a few seconds; compilation, the slowest, well
under a minute.
"""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from initbench.app import compose_config
from initbench.train import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# 16 steps of 64 per epoch, steps.csv and grad_norms.csv every 5 steps, 2 evaluation batches.
CUDA_RUN = ["model=cnn", "model.channels=[8,16]", "model.hidden=32", "data=synthetic",
            "data.num_train=1024", "data.num_test=256", "train.batch_size=64", "train.epochs=1",
            "train.log_every=5", "diagnostics.grad_every=5", "train.eval_batch_size=128",
            "train.checkpoint=false", "train.progress=false", "train.device=cuda"]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_backend_switches():
    """Runs set cuDNN and determinism switches for the whole process; put them back."""
    from torch.backends import cudnn

    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.get_num_threads())  # fmt: skip
    yield
    cudnn.benchmark, cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])
    torch.set_num_threads(saved[3])


class CudaTrainer(Trainer):
    """Records every forward call of the model, and every synchronizing CUDA operation made
    inside ``train_epoch`` with the step it happened at (``torch.cuda.set_sync_debug_mode``)."""

    def build_model(self):
        super().build_model()
        self.calls = []
        self.syncs = []
        self.benchmark_during_run = torch.backends.cudnn.benchmark

        def watch(module, inputs):
            images = inputs[0]
            self.calls.append({
                "inference": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled(),
                "batch": images.shape[0], "device": images.device.type, "dtype": images.dtype,
                "autocast": torch.is_autocast_enabled("cuda")
                and torch.get_autocast_dtype("cuda"),
                "channels_last": images.is_contiguous(memory_format=torch.channels_last),
            })  # fmt: skip

        self.model.register_forward_pre_hook(watch)

    def train_epoch(self, progress):
        def record(message, category, *args, **kwargs):
            if "synchroniz" in str(message):
                self.syncs.append(self.step)

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return super().train_epoch(progress)
            finally:
                torch.cuda.set_sync_debug_mode("default")


def cuda_run(run_dir: Path, *extra: str) -> CudaTrainer:
    run_dir.mkdir(parents=True)
    trainer = CudaTrainer(compose_config([*CUDA_RUN, *extra]), run_dir)
    trainer.run()
    assert trainer.summary["status"] == "completed", trainer.summary.get("error")
    return trainer


def test_a_cuda_run_takes_the_fast_path(tmp_path):
    trainer = cuda_run(tmp_path / "run")
    assert trainer.device.type == "cuda" and trainer.dtype == torch.bfloat16
    for images in (trainer.data.train_images, trainer.data.test_images):
        assert images.is_cuda and images.dtype == torch.uint8  # the dataset lives on the GPU
    assert trainer.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.benchmark_during_run  # cuDNN autotuning on

    training = [call for call in trainer.calls if call["grad"]]
    evaluation = [call for call in trainer.calls if call["inference"]]
    assert len(training) == 16 and [call["batch"] for call in evaluation] == [128, 128]
    for call in training + evaluation:
        assert call["device"] == "cuda" and call["channels_last"]
        assert call["autocast"] == torch.bfloat16  # inputs float32, compute in bf16
    assert all(not call["grad"] for call in evaluation)


def test_ordinary_cuda_steps_never_wait_for_the_gpu(tmp_path):
    trainer = cuda_run(tmp_path / "run")
    # steps.csv after steps 1, 5, 10, 15; grad_norms.csv on steps 0, 5, 10, 15; the epoch's
    # start (0) and end (16)
    logging_points = {0, 1, 5, 10, 15, 16}
    ordinary = sorted(step for step in trainer.syncs if step not in logging_points)
    assert not ordinary, f"synchronizing operations on ordinary steps: {ordinary}"
    assert trainer.syncs, "the sync debug mode reported nothing, not even the logging points"


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile (Triton) needs a C compiler")  # fmt: skip
def test_compiled_model_trains_and_evaluates(tmp_path):
    pytest.importorskip("triton")
    trainer = cuda_run(tmp_path / "run", "train.compile=true")
    assert trainer.forward is not trainer.model  # the compiled wrapper ran the steps
    with open(tmp_path / "run" / "steps.csv", newline="") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses and all(loss == loss and loss < 10 for loss in losses)  # finite, sane
    assert [call["batch"] for call in trainer.calls if call["inference"]] == [128, 128]


def test_deterministic_flag_repeats_a_bf16_channels_last_run_bit_for_bit(tmp_path):
    first = cuda_run(tmp_path / "first", "train.deterministic=true")
    second = cuda_run(tmp_path / "second", "train.deterministic=true")
    assert not first.benchmark_during_run  # autotuning picks kernels by timing: off
    assert first.channels_last and first.dtype == torch.bfloat16
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    steps = [(tmp_path / name / "steps.csv").read_text().splitlines() for name in
             ("first", "second")]  # fmt: skip
    # every column but the wall-clock seconds
    assert [row.rsplit(",", 1)[0] for row in steps[0]] == [
        row.rsplit(",", 1)[0] for row in steps[1]
    ]
