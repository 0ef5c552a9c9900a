"""Faults and bad input: interrupts and exact resume, determinism, files never half-written,
crashes that spare other runs, and a clear refusal for each kind of bad input.

The README's "When things go wrong" table names the test of each row, in this file's order
(a few rows point at tests/test_cli.py instead).
Signals go only to CLI processes these tests start themselves (``subprocess.Popen``), or to
this process while a handler of the test's own is installed.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from initbench import record
from initbench.cli import EXIT_FAILED_RUN, EXIT_INTERRUPTED, EXIT_USAGE, app

runner = CliRunner()

# Small, yet about a second per epoch, so that a signal sent a few steps into the second epoch
# lands inside it, well before the last. 64 steps per epoch and gradient norms every 16 steps:
# a grad_norms row falls on each epoch's first step, the step a checkpoint separates from the
# epoch before it.
TRAIN = ["data=synthetic", "data.num_train=2048", "data.num_test=256", "model=mlp",
         "model.width=64", "model.depth=2", "train.batch_size=32", "train.progress=false",
         "train.threads=1", "train.log_every=10", "diagnostics.grad_every=16",
         "data.augment=true"]  # fmt: skip
SGD_RUN = [*TRAIN, "train.epochs=4", "optimizer.schedule=cosine"]
ADAM_RUN = [*TRAIN, "train.epochs=3", "optimizer=adam", "optimizer.lr=0.001",
            "optimizer.warmup_epochs=1.5"]  # fmt: skip
QUICK = ["data=synthetic", "data.num_train=256", "data.num_test=64", "model=mlp",
         "model.width=32", "model.depth=1", "train.batch_size=32", "train.progress=false",
         "train.threads=1", "diagnostics.grad_every=4"]  # fmt: skip
TABLES = ("metrics", "steps", "grad_norms", "distributions", "histograms", "init")
# the only columns allowed to differ between two runs: wall-clock time
TIME_COLUMNS = {"epoch_seconds", "images_per_second", "seconds"}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs set torch's thread count for the whole process; give the next test it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- helpers


def invoke(*args: str):
    return runner.invoke(app, ["run", *args])


def quick(*overrides: str) -> list[str]:
    """QUICK with ``overrides`` in place of its entries for the same keys (or group)."""
    keys = {override.split("=")[0] for override in overrides}
    kept = [arg for arg in QUICK if arg.split("=")[0] not in keys
            and arg.split(".")[0].split("=")[0] not in keys]  # fmt: skip
    return [*kept, *overrides]


def results(folder: Path) -> dict[str, str]:
    """What a run wrote, without Hydra's copies of the config, the log and the lock file."""
    return {name: digest for name, digest in fingerprint(folder).items()
            if not name.startswith((".hydra", "run.log", ".lock"))}  # fmt: skip


def read_rows(path: Path) -> list[dict[str, str]]:
    """A table's rows without its time columns (wall-clock values differ from run to run)."""
    with open(path, newline="") as handle:
        return [{key: value for key, value in row.items() if key not in TIME_COLUMNS}
                for row in csv.DictReader(handle)]  # fmt: skip


def tables(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    found = {name: read_rows(run_dir / f"{name}.csv") for name in TABLES
             if (run_dir / f"{name}.csv").exists()}  # fmt: skip
    assert set(found) == set(TABLES), f"{run_dir} lacks tables: {set(TABLES) - set(found)}"
    return found


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and a hash of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}  # fmt: skip


def start_cli(workdir: Path, *args: str) -> subprocess.Popen:
    """The real command in a child process (so that a signal meets its real handlers)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache")}
    with open(workdir / "cli.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "initbench.cli", "run", *args],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until_inside_epoch(process: subprocess.Popen, folder: Path, epoch: int) -> None:
    """Wait until a run at or below ``folder`` is some steps into ``epoch`` (1-based), past the
    checkpoint of the epoch before: steps.csv's ``epoch`` column counts epochs done, with
    fractions."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for path in [folder / "steps.csv", *folder.glob("*/steps.csv")]:
            if path.exists() and any(float(row["epoch"]) > epoch - 1 for row in read_rows(path)):
                return
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before epoch {epoch}")
        time.sleep(0.02)
    pytest.fail(f"no run below {folder} reached epoch {epoch} in 300 s")


def signal_and_wait(process: subprocess.Popen, signum: int, workdir: Path) -> int:
    try:
        process.send_signal(signum)
        return process.wait(timeout=300)
    finally:
        if process.poll() is None:  # only ever the child this test started
            process.kill()
            process.wait()
        print((workdir / "cli.log").read_text(errors="replace")[-3000:])  # shown on failure


def interrupted_at(run_dir: Path, epochs: int) -> int:
    """Check the record an interrupted run leaves; return the epoch its checkpoint holds."""
    summary = record.read_summary(run_dir)
    assert summary["status"] == "interrupted", summary
    state = torch.load(run_dir / record.CHECKPOINT, weights_only=False)
    saved = {"model", "optimizer", "scheduler", "scaler", "torch_rng", "epoch", "step"}
    assert saved <= set(state)
    done = [int(row["epoch"]) for row in read_rows(run_dir / "metrics.csv")]
    # every finished epoch is on disk, and no row for the one cut short
    assert done == list(range(1, state["epoch"] + 1))
    assert 1 <= state["epoch"] == summary["epochs_completed"] < epochs
    # it stopped inside an epoch: rows logged after the checkpoint, for a resume to drop
    assert max(int(row["step"]) for row in read_rows(run_dir / "steps.csv")) > state["step"]
    return state["epoch"]


def reference_run(folder: Path, args: list[str]) -> dict[str, list[dict[str, str]]]:
    result = invoke(*args, f"hydra.run.dir={folder}")
    assert result.exit_code == 0, result.output
    return tables(folder)


@pytest.fixture(scope="module")
def sgd_reference(tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """The tables of SGD_RUN, never interrupted."""
    return reference_run(tmp_path_factory.mktemp("reference") / "sgd", SGD_RUN)


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 2) -> Path:
    """A tiny copy in the train/<class>/*.png, test/<class>/*.png layout."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8,
                                       generator=generator)  # fmt: skip
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


def folder_run(root: Path, *extra: str) -> list[str]:
    return ["data=cifar10", f"data.root={root}", "data.download=false", "model=mlp",
            "model.width=16", "model.depth=1", "train.max_steps=2", "train.batch_size=2",
            "train.progress=false", *extra]  # fmt: skip


def assert_refused(result, *phrases: str, workdir: Path | None = None) -> None:
    """Exit 2, one message naming the problem, and no run directory."""
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.count("initbench: error:") == 1, result.output
    for phrase in phrases:
        assert phrase in result.output, (phrase, result.output)
    if workdir is not None:
        assert not (workdir / "outputs").exists() and not (workdir / "multirun").exists()


# ----------------------------------------------------------------------------- interrupts


@pytest.mark.slow  # a real child process: about 20 s
def test_sigint_keeps_finished_epochs_and_resume_matches_an_uninterrupted_run(
    workdir, sgd_reference
):
    run_dir = workdir / "run"
    args = [*SGD_RUN, f"hydra.run.dir={run_dir}"]
    process = start_cli(workdir, *args)
    wait_until_inside_epoch(process, run_dir, 2)
    assert signal_and_wait(process, signal.SIGINT, workdir) == EXIT_INTERRUPTED
    interrupted_at(run_dir, epochs=4)

    result = invoke(*args)  # resume=auto is the default
    assert result.exit_code == 0, result.output
    assert "resumed from" in (run_dir / "run.log").read_text()
    assert record.read_summary(run_dir)["status"] == "completed"
    assert tables(run_dir) == sgd_reference  # every column but the clock, every row once


@pytest.mark.slow  # a real child process: about 20 s
def test_sigterm_does_the_same_with_adam_and_warmup(workdir, tmp_path_factory):
    reference = reference_run(tmp_path_factory.mktemp("reference") / "adam", ADAM_RUN)
    run_dir = workdir / "run"
    args = [*ADAM_RUN, f"hydra.run.dir={run_dir}"]
    process = start_cli(workdir, *args)
    wait_until_inside_epoch(process, run_dir, 2)
    assert signal_and_wait(process, signal.SIGTERM, workdir) == EXIT_INTERRUPTED
    interrupted_at(run_dir, epochs=3)

    assert invoke(*args).exit_code == 0
    assert record.read_summary(run_dir)["status"] == "completed"
    assert tables(run_dir) == reference


@pytest.mark.slow  # a real child process: about 20 s
def test_sigterm_stops_a_sweep_and_running_it_again_completes_it(workdir):
    sweep_dir = workdir / "sweep"
    args = ["-m", *TRAIN, "train.epochs=3", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    process = start_cli(workdir, *args)
    wait_until_inside_epoch(process, sweep_dir, 2)
    assert signal_and_wait(process, signal.SIGTERM, workdir) == EXIT_INTERRUPTED
    (first,) = record.find_runs([sweep_dir])  # the sweep stopped: the second run never began
    assert "seed=0" in first.name
    interrupted_at(first, epochs=3)

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    runs = record.find_runs([sweep_dir])
    assert len(runs) == 2
    for run_dir in runs:
        assert record.read_summary(run_dir)["status"] == "completed"
        assert [row["epoch"] for row in read_rows(run_dir / "metrics.csv")] == ["1", "2", "3"]
    assert "resumed from" in (first / "run.log").read_text()


def test_sigterm_outside_a_run_exits_130(workdir, monkeypatch):
    from initbench import app as hydra_app

    received = []

    def fallback(signum, frame):  # only reached if the command installed no handler
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, fallback)

    def launch_then_terminated(*args, **kwargs):  # as if SIGTERM came between two runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(hydra_app, "launch", launch_then_terminated)
    try:
        result = invoke(*QUICK)
        assert result.exit_code == EXIT_INTERRUPTED, result.output
        assert "interrupted" in result.output
        assert received == []  # the command's handler got it
        assert signal.getsignal(signal.SIGTERM) is fallback  # and put the old one back
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # a real child process: about 20 s
def test_sigkill_loses_at_most_one_epoch_and_resume_still_matches(workdir, sgd_reference):
    run_dir = workdir / "run"
    args = [*SGD_RUN, f"hydra.run.dir={run_dir}"]
    process = start_cli(workdir, *args)
    wait_until_inside_epoch(process, run_dir, 3)
    assert signal_and_wait(process, signal.SIGKILL, workdir) == -signal.SIGKILL
    # no chance to write anything: the summary still says running, never completed
    assert record.read_summary(run_dir)["status"] == "running"
    state = torch.load(run_dir / record.CHECKPOINT, weights_only=False)  # whole, or the one before
    assert state["epoch"] >= 1

    assert invoke(*args).exit_code == 0
    assert record.read_summary(run_dir)["status"] == "completed"
    assert tables(run_dir) == sgd_reference


# ----------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_identical_tables(workdir):
    args = [*TRAIN, "train.epochs=2", "data.num_train=512"]
    first = reference_run(workdir / "first", [*args, "seed=3"])
    # train.deterministic changes nothing on the CPU, where every kernel is already repeatable
    second = reference_run(workdir / "second", [*args, "seed=3", "train.deterministic=true"])
    other_seed = reference_run(workdir / "other", [*args, "seed=4"])
    assert first == second
    losses = [[row["train_loss"] for row in run["metrics"]] for run in (first, other_seed)]
    assert losses[0] != losses[1]


def test_deterministic_mode_sets_every_cuda_switch(monkeypatch):
    from initbench.app import compose_config
    from initbench.train import configure_backends

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    cfg = compose_config(["train.deterministic=true"])
    try:
        configure_backends(cfg, torch.device("cuda"))  # sets flags only; needs no GPU
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not cudnn.benchmark and cudnn.deterministic
        cfg.train.deterministic = False  # the next run of a sweep is not left in the mode
        configure_backends(cfg, torch.device("cuda"))
        assert not torch.are_deterministic_algorithms_enabled()
        assert cudnn.benchmark and not cudnn.deterministic
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deterministic_mode_repeats_a_cuda_run_exactly(workdir):
    args = [*TRAIN, "train.epochs=2", "model=cnn", "model.channels=[8,16]", "model.hidden=32",
            "train.device=cuda", "train.deterministic=true"]  # fmt: skip
    assert reference_run(workdir / "first", args) == reference_run(workdir / "second", args)


# ----------------------------------------------------------------------------- crashes, files


def test_crash_mid_run_is_recorded_and_spares_other_runs(workdir, monkeypatch):
    from initbench.train import Trainer

    finished = workdir / "finished"
    assert invoke(*QUICK, "train.epochs=2", f"hydra.run.dir={finished}").exit_code == 0
    before = fingerprint(finished)

    evaluate = Trainer.evaluate

    def crash_in_epoch_two(self):
        if self.epoch >= 2:
            raise RuntimeError("simulated crash in epoch 2")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", crash_in_epoch_two)
    crashed = workdir / "crashed"
    args = [*QUICK, "train.epochs=3", f"hydra.run.dir={crashed}"]
    result = invoke(*args)
    assert result.exit_code == EXIT_FAILED_RUN, result.output
    summary = record.read_summary(crashed)
    assert summary["status"] == "failed"
    assert summary["error"] == "RuntimeError: simulated crash in epoch 2"
    assert [row["epoch"] for row in read_rows(crashed / "metrics.csv")] == ["1"]
    assert fingerprint(finished) == before

    monkeypatch.setattr(Trainer, "evaluate", evaluate)  # fixed: the failed run resumes
    assert invoke(*args).exit_code == 0
    assert [row["epoch"] for row in read_rows(crashed / "metrics.csv")] == ["1", "2", "3"]


def test_a_diverged_run_is_recorded_as_diverged_never_completed(workdir):
    run_dir = workdir / "run"
    args = [*QUICK, "train.epochs=2", "train.log_every=1", "optimizer.lr=1e6",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output  # a result, so a sweep goes on
    summary = record.read_summary(run_dir)
    assert summary["status"] == "diverged"
    assert summary["divergence"]["step"] >= 1 and summary["divergence"]["layer"]
    before = results(run_dir)
    assert invoke(*args).exit_code == 0  # resume=auto leaves a finished run alone
    assert results(run_dir) == before


def test_half_written_summary_is_never_read_as_a_result(tmp_path):
    record.atomic_write_json(tmp_path / record.SUMMARY, {"status": "completed", "acc": 0.5})
    assert record.read_summary(tmp_path)["status"] == "completed"
    text = (tmp_path / record.SUMMARY).read_text()
    (tmp_path / record.SUMMARY).write_text(text[: len(text) // 2])  # cut by something else
    assert record.read_summary(tmp_path) is None
    (tmp_path / record.SUMMARY).write_text("[]")
    assert record.read_summary(tmp_path) is None


def test_a_failed_write_keeps_the_old_summary_and_checkpoint(tmp_path, monkeypatch):
    from initbench.train import save_checkpoint

    record.atomic_write_json(tmp_path / record.SUMMARY, {"status": "completed"})
    save_checkpoint(tmp_path / record.CHECKPOINT, {"epoch": 1})
    before = fingerprint(tmp_path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        record.atomic_write_json(tmp_path / record.SUMMARY, {"status": "failed"})
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / record.CHECKPOINT, {"epoch": 2})
    assert fingerprint(tmp_path) == before  # old files whole, no temporary file left behind


def test_resume_never_refuses_a_finished_run_before_touching_it(workdir):
    run_dir = workdir / "run"
    assert invoke(*QUICK, "train.epochs=1", f"hydra.run.dir={run_dir}").exit_code == 0
    before = fingerprint(run_dir)
    result = invoke(*QUICK, "train.epochs=1", f"hydra.run.dir={run_dir}", "resume=never")
    assert_refused(result, str(run_dir), "status completed", "resume=never refuses")
    assert fingerprint(run_dir) == before  # not even Hydra's .hydra/ copies

    sweep_dir = workdir / "sweep"
    sweep = ["-m", *QUICK, "train.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    assert invoke(*sweep).exit_code == 0
    before = fingerprint(sweep_dir)
    assert_refused(invoke(*sweep, "resume=never"), "seed=0", "resume=never refuses")
    assert fingerprint(sweep_dir) == before


def test_resume_force_moves_the_old_files_aside_and_runs_again(workdir):
    run_dir = workdir / "run"
    args = [*QUICK, "train.epochs=1", f"hydra.run.dir={run_dir}"]
    assert invoke(*args).exit_code == 0
    old = {
        name: (run_dir / name).read_bytes()
        for name in ("metrics.csv", "summary.json", "checkpoint.pt", "config.yaml")
    }
    assert invoke(*args, "resume=force").exit_code == 0
    (previous,) = run_dir.glob("_previous-*")
    assert {name: (previous / name).read_bytes() for name in old} == old  # kept, byte for byte
    assert record.read_summary(run_dir)["status"] == "completed"
    assert record.find_runs([workdir]) == [run_dir.resolve()]  # the old copy is no second run


def test_a_run_directory_in_use_is_left_alone(workdir):
    run_dir = workdir / "run"
    run_dir.mkdir()
    record.atomic_write_json(run_dir / record.SUMMARY, {"status": "running"})
    with open(run_dir / ".lock", "a") as lock:  # as another initbench process holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke(*QUICK, f"hydra.run.dir={run_dir}")
    assert result.exit_code == EXIT_FAILED_RUN, result.output
    assert "another initbench process is writing into" in result.output
    assert record.read_summary(run_dir) == {"status": "running"}  # the other run's, untouched
    assert not (run_dir / "metrics.csv").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("override", "group", "valid"), [
    ("model=transformer", "model", "resnet20"),
    ("optimizer=lion", "optimizer", "adamw"),
    ("data=imagenet", "data", "synthetic"),
    ("experiment=everything", "experiment", "deep_resnet"),
])  # fmt: skip
def test_unknown_choice_in_any_group_is_refused(workdir, override, group, valid):
    result = invoke(*quick(override))
    choice = override.split("=")[1]
    assert_refused(result, f"Could not find '{group}/{choice}'",
                   f"Available options in '{group}'", valid, workdir=workdir)  # fmt: skip


@pytest.mark.parametrize(("override", "phrases"), [
    ("optimizer.lr=fast", ["optimizer.lr=fast", "'fast'", "converted to Float"]),
    ("train.batch_size=1.5", ["train.batch_size=1.5", "converted to Integer"]),
    ("train.epochs=0", ["train.epochs=0 must be a whole number >= 1"]),
    ("optimizer.lr=0", ["optimizer.lr=0.0 must be a positive number"]),
    ("optimizer.momentum=1.5", ["optimizer.momentum=1.5 must be in [0, 1)"]),
])  # fmt: skip
def test_wrong_type_or_out_of_range_is_refused(workdir, override, phrases):
    result = invoke(*quick(override))
    assert_refused(result, *phrases, workdir=workdir)
    assert "$VALUE" not in result.output


def test_dataset_path_that_does_not_exist_is_refused(workdir):
    result = invoke(*folder_run(workdir / "nowhere"))
    assert_refused(result, f"data.root={workdir / 'nowhere'}", "no such file or folder",
                   "data=synthetic", workdir=workdir)  # fmt: skip


@pytest.mark.parametrize("layout", ["train_only", "unrecognized"])
def test_dataset_of_the_wrong_layout_is_refused(workdir, layout):
    root = write_image_folder(workdir / "copy")
    if layout == "train_only":
        for path in sorted((root / "test").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "test").rmdir()
        phrases = ["has a train/ folder but no test/ folder", "train/<class>/*.jpg"]
    else:
        (root / "train").rename(root / "elsewhere")
        (root / "test").rename(root / "more")
        phrases = ["No CIFAR-10 copy", "data.download=false", "cifar-10-batches-py"]
    assert_refused(invoke(*folder_run(root)), str(root), *phrases, workdir=workdir)


def test_empty_class_folder_is_refused(workdir):
    root = write_image_folder(workdir / "copy")
    (root / "test" / "dog" / "0.png").unlink()
    (root / "test" / "dog" / "1.png").unlink()
    assert_refused(invoke(*folder_run(root)), f"{root / 'test' / 'dog'} holds no images",
                   workdir=workdir)  # fmt: skip


def _run_fails_on_the_data(workdir: Path, root: Path, *phrases: str) -> None:
    """Found only when the images are decoded: a failed run, and nothing that looks like a
    result (no metrics, no checkpoint)."""
    run_dir = workdir / "run"
    result = invoke(*folder_run(root, f"hydra.run.dir={run_dir}"))
    assert result.exit_code == EXIT_FAILED_RUN, result.output
    summary = record.read_summary(run_dir)
    assert summary["status"] == "failed"
    for phrase in phrases:
        assert phrase in summary["error"] and phrase in result.output
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / record.CHECKPOINT).exists()


def test_corrupt_image_fails_the_run_naming_the_file(workdir):
    root = write_image_folder(workdir / "copy")
    (root / "train" / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    _run_fails_on_the_data(workdir, root, f"cannot decode image {root / 'train/cat/1.png'}")


def test_image_of_another_size_fails_the_run_naming_the_file(workdir):
    root = write_image_folder(workdir / "copy")
    Image.new("RGB", (64, 48)).save(root / "test" / "dog" / "0.png")
    _run_fails_on_the_data(workdir, root, "0.png is 64x48 pixels", "CIFAR-10 images are 32x32")


def test_output_directory_that_cannot_be_written_is_refused(workdir, monkeypatch):
    blocker = workdir / "a-file"
    blocker.write_text("not a folder")
    result = invoke(*QUICK, f"hydra.run.dir={blocker}/run")
    assert_refused(result, f"cannot write the output directory {blocker}/run", "hydra.run.dir")
    result = invoke("-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={blocker}/sweep")
    assert_refused(result, f"cannot write the output directory {blocker}/sweep")
    assert blocker.read_text() == "not a folder"

    # a read-only folder (tests run as root here, where permissions do not stop a write, so
    # the permission check itself is made to answer no)
    locked = workdir / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and
                        real_access(path, mode))  # fmt: skip
    result = invoke(*QUICK, f"hydra.run.dir={locked}/run")
    assert_refused(result, f"{locked} is not a writable folder")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(("init", "model"), [
    ("fixup", "cnn"), ("delta_orthogonal", "mlp"), ("irnn", "cnn"),
])  # fmt: skip
def test_initializer_that_cannot_apply_to_the_model_is_refused(workdir, init, model):
    result = invoke(*quick(f"init={init}", f"model={model}"))
    assert_refused(result, f"does not apply to model '{model}'", "it is for:", workdir=workdir)


def test_zeros_under_spectral_normalization_is_refused(workdir):
    # every weight divided by its largest singular value, 0: NaN at the first step
    result = invoke(*quick("init=zeros", "init.spectral_norm=true"))
    assert_refused(result, "init=zeros with init.spectral_norm=true", "init=orthogonal",
                   workdir=workdir)  # fmt: skip
