"""The command line as a user meets it: composition, errors before any work, run directories,
sweeps, and the traps of Hydra-based runners."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from initbench import record
from initbench.app import compose_config
from initbench.cli import app, group_choices
from initbench.config import validate

runner = CliRunner()
QUICK = ["data=synthetic", "data.num_train=256", "data.num_test=128", "train.epochs=1",
         "train.batch_size=64", "train.progress=false", "model=mlp", "model.width=32",
         "model.depth=1", "diagnostics.grad_every=2"]  # fmt: skip


def invoke(*args: str):
    return runner.invoke(app, list(args))


def run_dirs(root: Path) -> list[Path]:
    return record.find_runs([root]) if root.exists() else []


# initializers made for one kind of model are checked on that kind
MODEL_FOR_INIT = {
    "fixup": ["model=resnet", "model.norm=none"],
    "irnn": ["model=lstm"],
    "recurrent": ["model=lstm"],
    "delta_orthogonal": ["model=plain_cnn"],
}


@pytest.mark.parametrize("group", ["model", "init", "optimizer", "data"])
def test_every_choice_composes_and_validates(group):
    choices = group_choices()[group]
    assert choices, group
    for choice in choices:
        cfg = compose_config([f"{group}={choice}"])
        if group == "init":  # an alias composes to its initializer's own name
            cfg = compose_config([f"{group}={choice}", *MODEL_FOR_INIT.get(cfg.init.name, [])])
        validate(cfg)
        assert cfg[group].name


def test_group_swap_and_single_value_override():
    cfg = compose_config(["model=cnn"])
    assert cfg.model.name == "cnn" and "depth" not in cfg.model
    cfg = compose_config(["model=mlp", "model.width=77"])
    assert cfg.model.width == 77 and cfg.model.depth == 3
    cfg = compose_config(["model=resnet56"])
    assert list(cfg.model.blocks) == [9, 9, 9]


def test_help_lists_groups_and_choices():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    for group in group_choices():
        assert group in result.output
    assert "kaiming_normal" in result.output and "resnet" in result.output


def test_unknown_initializer_stops_before_any_work(workdir):
    result = invoke("run", "init=kaiming_magic", *QUICK)
    assert result.exit_code == 2
    assert "init/kaiming_magic" in result.output
    assert "Available options in 'init'" in result.output and "xavier_uniform" in result.output
    assert not (workdir / "outputs").exists()


def test_badly_typed_value_names_it(workdir):
    result = invoke("run", "train.epochs=many", *[a for a in QUICK if "epochs" not in a])
    assert result.exit_code == 2
    assert "train.epochs" in result.output and "many" in result.output
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be a positive number"),
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("model.activation=swish", "model.activation"),
])  # fmt: skip
def test_out_of_range_values_stop_before_any_work(workdir, override, expected):
    result = invoke("run", *QUICK, override)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not (workdir / "outputs").exists()


def test_an_activation_the_lstm_cannot_have_is_refused(workdir):
    result = invoke("run", *QUICK[:6], "model=lstm", "model.activation=relu")
    assert result.exit_code == 2, result.output
    assert "does not apply to model=lstm" in result.output and "init.gain" in result.output
    assert not (workdir / "outputs").exists()


def test_comma_list_without_multirun_is_refused(workdir):
    result = invoke("run", "init=xavier,kaiming", *QUICK)
    assert result.exit_code == 2
    assert "Ambiguous value" in result.output and "--multirun" in result.output
    assert not (workdir / "outputs").exists()


def test_unknown_key_gets_hydras_plus_hint(workdir):
    result = invoke("run", "model.colour=red", *QUICK)
    assert result.exit_code == 2
    assert "+model.colour=red" in result.output


def test_one_run_writes_every_file_with_its_columns(workdir):
    result = invoke("run", *QUICK, "init=kaiming")
    assert result.exit_code == 0, result.output
    (run_dir,) = run_dirs(workdir / "outputs")
    assert str(run_dir) in result.output  # says where its files are
    for name in ("metrics", "steps", "grad_norms", "distributions", "histograms"):
        with open(run_dir / f"{name}.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == record.TABLES[name], name
            assert list(reader), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["init"] == "kaiming_normal" and summary["torch_version"]
    assert 0 <= summary["final_test_acc"] <= 1
    assert (run_dir / "config.yaml").exists() and (run_dir / "run.log").exists()


def test_two_runs_in_one_process_get_distinct_directories(workdir):
    for seed in (0, 0):
        assert invoke("run", *QUICK, "train.max_steps=1", f"seed={seed}").exit_code == 0
    dirs = run_dirs(workdir / "outputs")
    assert len(dirs) == 2
    assert all(record.read_summary(d)["status"] == "completed" for d in dirs)


def test_relative_data_root_means_the_launch_directory(workdir, cifar_slice):
    (workdir / "copies").mkdir()
    (workdir / "copies" / "c10.tar.gz").write_bytes(cifar_slice.read_bytes())
    common = [
        "data=cifar10",
        "data.root=copies/c10.tar.gz",
        "data.download=false",
        "train.max_steps=2",
        "train.progress=false",
        "model=mlp",
        "model.width=16",
    ]
    for chdir in ("false", "true"):
        result = invoke("run", *common, f"hydra.job.chdir={chdir}")
        assert result.exit_code == 0, result.output
    summaries = [record.read_summary(d) for d in run_dirs(workdir / "outputs")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert all(s["train_images"] == 300 for s in summaries)


def test_sweep_with_a_failing_run_finishes_the_others_and_fails_the_command(workdir):
    sweep_dir = workdir / "sweep"
    result = invoke(
        "run",
        "-m",
        *QUICK,
        "seed=0,1",
        "data=synthetic,cifar10",
        "data.root=absent",
        "data.download=false",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.exit_code == 1, result.output
    statuses = {d.name: record.read_summary(d)["status"] for d in run_dirs(sweep_dir)}
    assert len(statuses) == 4
    assert sorted(statuses.values()) == ["completed", "completed", "failed", "failed"]
    with open(sweep_dir / "sweep_summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 2 and all("No CIFAR-10 copy" in row["error"] for row in failed)
    # the failed run keeps its own log
    failed_dir = sweep_dir / failed[0]["run"]
    assert "No CIFAR-10 copy" in (failed_dir / "run.log").read_text()


def test_rerunning_a_sweep_skips_finished_runs(workdir):
    args = ["run", "-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={workdir / 'sweep'}"]
    assert invoke(*args).exit_code == 0
    first = {d: (d / "metrics.csv").stat().st_mtime_ns for d in run_dirs(workdir / "sweep")}
    assert len(first) == 2
    assert invoke(*args).exit_code == 0
    second = {d: (d / "metrics.csv").stat().st_mtime_ns for d in run_dirs(workdir / "sweep")}
    assert first == second  # untouched


def test_probe_sweep_writes_a_table_per_run_and_one_figure(workdir):
    sweep_dir = workdir / "probe"
    result = invoke(
        "probe",
        "-m",
        "init=xavier,kaiming",
        "model=mlp",
        "model.depth=6",
        "model.width=32",
        "data=synthetic",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.exit_code == 0, result.output
    runs = run_dirs(sweep_dir)
    assert len(runs) == 2
    for run_dir in runs:
        with open(run_dir / "probe.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 7  # 6 hidden layers and the classifier, in forward order
        assert [int(row["depth"]) for row in rows] == list(range(7))
        assert set(record.PROBE_COLUMNS) <= set(rows[0])
        assert record.read_summary(run_dir)["kind"] == "probe"
    assert (sweep_dir / "probe.png").stat().st_size > 10_000
