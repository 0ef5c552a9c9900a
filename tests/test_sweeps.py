"""Sweeps that scale: presets, parallel and submitit launchers run for real, resume after
failures, the Optuna search, and the per-job threads and GPUs."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from omegaconf import read_write
from typer.testing import CliRunner

from initbench import record, sweep
from initbench.app import check, compose_config
from initbench.cli import app, group_choices
from initbench.train import Trainer, resolve_device

runner = CliRunner()
TINY = ["data=synthetic", "data.num_train=128", "data.num_test=64", "model=mlp",
        "model.width=16", "model.depth=1", "train.epochs=1", "train.batch_size=64",
        "train.progress=false"]  # fmt: skip


@pytest.fixture(autouse=True)
def no_thread_setting(monkeypatch):
    """A thread count set by hand would win over the sweep's; tests start without one."""
    monkeypatch.delenv(sweep.THREADS_VARIABLE, raising=False)
    monkeypatch.delenv(sweep.DEVICE_VARIABLE, raising=False)


def invoke(*args: str):
    return runner.invoke(app, list(args))


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {d.name: record.read_summary(d) for d in record.find_runs([sweep_dir])}


def seed_of(name: str) -> int:
    return int(name.split("seed=")[1].split(",")[0])


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize(("experiment", "runs"), [
    ("convergence", 18), ("deep_resnet", 3), ("distributions", 3),
])  # fmt: skip
def test_experiment_presets_compose_and_expand(experiment, runs):
    assert check([f"experiment={experiment}"], multirun=True) == runs


def test_experiment_presets_set_what_they_compare():
    from initbench.app import sweep_combinations

    base = compose_config(["experiment=convergence"], hydra_node=True)
    runs = [compose_config(c) for c in sweep_combinations(["experiment=convergence"], base)]
    assert {(r.model.name, r.optimizer.name, r.optimizer.lr) for r in runs} == {
        ("cnn", "adam", 0.001)
    }
    assert {r.init.name for r in runs} == {"xavier_uniform", "xavier_normal", "kaiming_uniform",
                                          "kaiming_normal", "orthogonal", "uniform"}  # fmt: skip
    assert {r.seed for r in runs} == {0, 1, 2}
    assert {r.init.bound for r in runs if r.init.name == "uniform"} == {0.01}

    base = compose_config(["experiment=deep_resnet"], hydra_node=True)
    runs = [compose_config(c) for c in sweep_combinations(["experiment=deep_resnet"], base)]
    assert {r.init.name: r.init.get("mode") for r in runs} == {
        "kaiming_normal": "fan_out", "xavier_normal": None, "orthogonal": None}  # fmt: skip
    assert all(r.model.name == "resnet" and sum(r.model.blocks) == 50 for r in runs)

    base = compose_config(["experiment=distributions"], hydra_node=True)
    runs = [compose_config(c) for c in sweep_combinations(["experiment=distributions"], base)]
    assert {r.init.name for r in runs} == {"uniform", "xavier_uniform", "kaiming_normal"}
    assert all(r.model.name == "cnn" and r.diagnostics.enabled for r in runs)


def test_search_preset_checks_its_whole_space_before_starting():
    assert check(["experiment=search"], multirun=True) == 20  # trials
    cfg = compose_config(["experiment=search"], hydra_node=True)
    assert "optuna" in cfg.hydra.sweeper._target_ and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"init", "optimizer.lr", "init.gain"}
    assert cfg.train.epochs == 2 and cfg.data.train_subset == 10000
    # an initializer without a gain, searched with the gain: refused before any run
    result = invoke("run", "-m", "experiment=search", "init=choice(uniform,orthogonal)")
    assert result.exit_code == 2 and "init uniform has no gain" in result.output
    # ... and accepted once the gain is left to each initializer
    space = ["experiment=search", "init=choice(uniform,orthogonal)", "init.gain=null"]
    assert check(space, multirun=True) == 20


def test_help_and_list_show_experiments_and_launchers():
    assert {"convergence", "deep_resnet", "distributions", "search"} <= set(
        group_choices()["experiment"]
    )
    result = invoke("run", "--help")
    assert "deep_resnet" in result.output and "hydra/launcher=parallel" in result.output
    assert "--force" in result.output


@pytest.mark.parametrize("launcher", ["parallel", "local", "slurm"])
def test_launcher_presets_compose(launcher):
    cfg = compose_config([f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30"]
                         if launcher != "parallel" else [f"hydra/launcher={launcher}"],
                         hydra_node=True)  # fmt: skip
    target = cfg.hydra.launcher._target_
    assert target.endswith({"parallel": "JoblibLauncher", "local": "LocalLauncher",
                            "slurm": "SlurmLauncher"}[launcher])  # fmt: skip
    if launcher == "slurm":
        cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                              "hydra.launcher.gpus_per_node=4"], hydra_node=True)  # fmt: skip
        assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 4


# ----------------------------------------------------------------------------- launchers


def test_parallel_launcher_runs_a_sweep_with_a_share_of_the_cores_each(workdir):
    sweep_dir = workdir / "sweep"
    result = invoke("run", "-m", *TINY, "seed=0,1", "hydra/launcher=parallel",
                    "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = summaries(sweep_dir)
    assert len(found) == 2 and all(s["status"] == "completed" for s in found.values())
    expected = max(1, sweep.available_cores() // 2)
    assert {s["threads"] for s in found.values()} == {expected}
    assert (sweep_dir / "sweep_summary.csv").exists()


def test_local_submitit_launcher_runs_a_sweep_in_separate_processes(workdir):
    sweep_dir = workdir / "sweep"
    result = invoke("run", "-m", *TINY, "seed=0,1", "hydra/launcher=local",
                    f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = summaries(sweep_dir)
    assert len(found) == 2 and all(s["status"] == "completed" for s in found.values())
    assert {s["threads"] for s in found.values()} == {max(1, sweep.available_cores() // 2)}
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # submitit's own records


# ----------------------------------------------------------------------------- resume


def test_resume_redoes_exactly_the_failed_and_interrupted_runs(workdir, monkeypatch):
    """seed 0 completes; seed 1 fails before its first epoch; seed 2 fails in its second
    epoch, after a checkpoint. Same command again: 0 untouched, 1 from scratch, 2 resumed."""
    build_model, train_epoch = Trainer.build_model, Trainer.train_epoch

    def broken_build(self):
        if self.cfg.seed == 1:
            raise RuntimeError("simulated fault: the device went away")
        build_model(self)

    def broken_epoch(self, progress):
        if self.cfg.seed == 2 and self.epoch == 1:
            raise RuntimeError("simulated fault in epoch 2")
        return train_epoch(self, progress)

    args = ["run", "-m", *TINY, "train.epochs=2", "seed=0,1,2",
            f"hydra.sweep.dir={workdir / 'sweep'}"]  # fmt: skip
    monkeypatch.setattr(Trainer, "build_model", broken_build)
    monkeypatch.setattr(Trainer, "train_epoch", broken_epoch)
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    first = {seed_of(name): s for name, s in summaries(workdir / "sweep").items()}
    assert [first[seed]["status"] for seed in (0, 1, 2)] == ["completed", "failed", "failed"]
    with open(workdir / "sweep" / "sweep_summary.csv", newline="") as handle:
        errors = {row["status"]: row["error"] for row in csv.DictReader(handle)}
    assert "simulated fault" in errors["failed"]

    dirs = {seed_of(d.name): d for d in record.find_runs([workdir / "sweep"])}
    finished = (dirs[0] / "metrics.csv").stat().st_mtime_ns
    monkeypatch.undo()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    second = {seed_of(name): s for name, s in summaries(workdir / "sweep").items()}
    assert all(s["status"] == "completed" for s in second.values())
    assert (dirs[0] / "metrics.csv").stat().st_mtime_ns == finished  # skipped, untouched
    assert second[0]["finished_at"] == first[0]["finished_at"]
    assert list(dirs[1].glob("_previous-*/summary.json"))  # the failed attempt is kept
    assert "resumed from" in (dirs[2] / "run.log").read_text()
    assert not list(dirs[2].glob("_previous-*"))
    with open(dirs[2] / "metrics.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]

    # --force: every run again, each earlier result kept beside it
    result = invoke("run", "--force", *args[1:])
    assert result.exit_code == 0, result.output
    for seed, run_dir in dirs.items():
        kept = sorted(run_dir.glob("_previous-*/summary.json"))
        assert kept, seed
        assert json.loads(kept[-1].read_text())["status"] == "completed"
        assert record.read_summary(run_dir)["finished_at"] >= second[seed]["finished_at"]


# ----------------------------------------------------------------------------- search


def test_search_runs_trials_and_reports_the_best(workdir):
    sweep_dir = workdir / "search"
    result = invoke("run", "-m", "experiment=search", *TINY, "data.train_subset=null",
                    "data.test_subset=null", "hydra.sweeper.n_trials=3",
                    f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = summaries(sweep_dir)
    assert len(found) == 3 and all(s["status"] == "completed" for s in found.values())
    results = (sweep_dir / "optimization_results.yaml").read_text()
    best = max(s["best_test_acc"] for s in found.values())
    assert f"best_value: {best}" in results
    assert "initbench: best trial: best_test_acc=" in result.output
    assert str(sweep.last_sweep["best"]["run"]) in result.output
    assert record.read_summary(Path(sweep.last_sweep["best"]["run"]))["best_test_acc"] == best


def test_search_value_ranks_diverged_last_and_fails_failed_runs():
    assert sweep.search_value({"status": "completed", "best_test_acc": 0.42}) == 0.42
    assert sweep.search_value({"status": "diverged", "best_test_acc": 0.3}) == 0.0
    assert math.isnan(sweep.search_value({"status": "failed", "error": "x"}))


# ----------------------------------------------------------------------------- resources


def test_concurrency_follows_the_launcher():
    def jobs(*overrides):
        cfg = compose_config(list(overrides), hydra_node=True)
        with read_write(cfg):  # as Hydra sees `-m seed=0,1,2 ...`
            cfg.hydra.overrides.task = ["seed=0,1,2", *overrides]
        return sweep.concurrent_jobs(cfg)

    assert jobs() == 1  # the basic launcher: one at a time
    assert jobs("hydra/launcher=parallel", "hydra.launcher.n_jobs=2") == 2
    assert jobs("hydra/launcher=parallel", "hydra.launcher.n_jobs=8") == 3  # only 3 runs
    assert jobs("hydra/launcher=local") == 3  # submitit local starts the batch at once
    assert jobs("hydra/launcher=slurm") == 1


def test_each_parallel_job_gets_a_gpu_of_its_own(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sweep.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    first, second = sweep.claim_gpu(0), sweep.claim_gpu(0)  # both want cuda:0
    assert (first[0], second[0]) == ("cuda:0", "cuda:1")
    assert sweep.claim_gpu(2) == ("cuda:0", None)  # more jobs than GPUs: share
    first[1].close()  # a job ends: its GPU is free again
    third = sweep.claim_gpu(1)
    assert third[0] == "cuda:0"

    # the callback sets the device for the job and clears it afterwards
    callback = sweep.SweepSummary()
    callback.concurrent, callback.threads = 2, 1
    config = compose_config(["train.device=auto"], hydra_node=True)
    third[1].close()
    second[1].close()
    callback.on_job_start(config)
    assert os.environ[sweep.DEVICE_VARIABLE] in ("cuda:0", "cuda:1")
    assert os.environ[sweep.THREADS_VARIABLE] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert str(resolve_device("auto")) == os.environ[sweep.DEVICE_VARIABLE]
    callback.on_job_end(config)
    assert sweep.DEVICE_VARIABLE not in os.environ
    assert sweep.THREADS_VARIABLE not in os.environ


def test_threads_per_job_slurm_allocation_and_a_setting_by_hand(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    config = compose_config(["train.device=cpu"], hydra_node=True)
    callback = sweep.SweepSummary()  # one job at a time, no SLURM: torch's default stays
    callback.on_job_start(config)
    assert sweep.THREADS_VARIABLE not in os.environ
    callback.on_job_end(config)

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # a SLURM job: its allocation
    callback.on_job_start(config)
    assert os.environ[sweep.THREADS_VARIABLE] == "6"
    callback.on_job_end(config)
    assert sweep.THREADS_VARIABLE not in os.environ

    monkeypatch.setenv(sweep.THREADS_VARIABLE, "3")  # set by hand: wins, and stays
    callback.concurrent, callback.threads = 2, 1
    callback.on_job_start(config)
    assert os.environ[sweep.THREADS_VARIABLE] == "3"
    callback.on_job_end(config)
    assert os.environ[sweep.THREADS_VARIABLE] == "3"
