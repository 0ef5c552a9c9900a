"""A report built from what the runner really writes: a small sweep, then `initbench report`."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from initbench.cli import app

runner = CliRunner()


def test_report_of_a_real_sweep(workdir):
    sweep_dir = workdir / "sweep"
    args = ["run", "-m", "init=xavier,kaiming", "seed=0,1", "data=synthetic",
            "data.num_train=256", "data.num_test=128", "model=mlp", "model.width=32",
            "model.depth=2", "train.epochs=2", "train.batch_size=64", "train.progress=false",
            "diagnostics.grad_every=2", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["report", str(sweep_dir), "--out", str(workdir / "report")])
    assert result.exit_code == 0, result.output

    summary = pd.read_csv(workdir / "report" / "summary.csv")
    assert len(summary) == 4
    assert set(summary["status"]) == {"completed"}
    assert sorted(summary["init"].unique()) == ["kaiming_normal", "xavier_uniform"]
    # the figures in summary.csv are the runs' own: compare with each run's metrics.csv
    for _, row in summary.iterrows():
        metrics = pd.read_csv(row["path"] + "/metrics.csv")
        assert abs(row["final_test_acc"] - metrics["test_acc"].iloc[-1]) < 1e-9

    aggregate = pd.read_csv(workdir / "report" / "aggregate.csv")
    assert len(aggregate) == 2
    for _, group in aggregate.iterrows():
        runs = summary[summary["init"] == group["init"]]["final_test_acc"]
        assert group["final_test_acc_n"] == 2
        assert abs(group["final_test_acc_mean"] - runs.mean()) < 1e-5  # 6 significant digits

    page = (workdir / "report" / "report.md").read_text()
    figures = sorted(p.name for p in (workdir / "report" / "figures").glob("*.png"))
    assert {"convergence.png", "gradient_flow.png"} <= set(figures)
    assert all(name in page for name in figures)
