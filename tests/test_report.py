"""The reporter: tables checked against numbers computed by hand, figures through matplotlib's
own objects, and the run states a real sweep leaves behind (running, diverged, corrupt)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from report_fixtures import config, write_run

from initbench import record
from initbench.report import make_report, plots, tables

T_975_DF2 = 4.302652729749464  # scipy.stats.t.ppf(0.975, 2)


def _summary(root, threshold=0.5):
    runs = tables.Runs(tables.find([root]))
    return runs, tables.labeled(tables.summary_table(runs, threshold))


def _row(summary, name):
    rows = summary[summary["path"].str.endswith(name)]
    assert len(rows) == 1, f"{name}: {list(summary['path'])}"
    return rows.iloc[0]


def _legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def _drawn_lines(axis):
    """Lines drawn for an initializer (individual runs carry a label starting with _)."""
    return [line for line in axis.get_lines() if not line.get_label().startswith("_")]


# ----------------------------------------------------------------------------- a sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two initializers x three seeds, completed, with known accuracies, beside the states a
    sweep also holds: a diverged run, a running one, one with a corrupt summary.json, one that
    never wrote its summary, and probe runs."""
    root = tmp_path_factory.mktemp("sweep") / "multirun" / "2025-01-02" / "10-00-00"
    finals = {"kaiming_normal": [0.90, 0.92, 0.94], "xavier_normal": [0.80, 0.81, 0.85]}
    for init, accuracies in finals.items():
        for seed, final in enumerate(accuracies):
            write_run(
                root / f"init={init},seed={seed}",
                config(init, seed),
                accuracies=[0.3, 0.45, 0.6, final],
                grad_gain=1.0 if init == "kaiming_normal" else 0.5,
            )
    write_run(
        root / "init=orthogonal,seed=0",
        config("orthogonal", 0),
        accuracies=[0.2, 0.1],
        losses=[2.0, math.nan],
        status="diverged",
        summary={"divergence": {"step": 7, "epoch": 1, "where": "loss", "layer": None}},
    )
    write_run(
        root / "init=kaiming_normal,seed=3",
        config("kaiming_normal", 3),
        accuracies=[0.35, 0.55],
        status="running",
    )
    corrupt = write_run(root / "init=xavier_normal,seed=3", config("xavier_normal", 3))
    (corrupt / record.SUMMARY).write_text('{"status": "complet')
    write_run(
        root / "init=xavier_normal,seed=4",
        config("xavier_normal", 4),
        accuracies=[0.4, 0.6],
        status=None,
    )
    probes = root.parent / "probes"
    for init, factor in (("kaiming_normal", 1.0), ("xavier_normal", 0.5)):
        write_run(
            probes / f"init={init}",
            config(init, 0),
            probe=[(factor**i, 1e-3 * factor ** (3 - i)) for i in range(4)],
        )
    return root.parent


@pytest.fixture(scope="module")
def loaded(sweep):
    runs, summary = _summary(sweep)
    return runs, summary, tables.aggregate_table(summary)


def test_every_run_is_found_and_marked(loaded):
    _, summary, _ = loaded
    assert len(summary) == 12
    counts = summary["status"].value_counts().to_dict()
    assert counts == {"completed": 6 + 2, "unknown": 2, "diverged": 1, "running": 1}
    statuses = summary.set_index(summary["path"].str.rsplit("/", n=1).str[-1])["status"]
    assert statuses["init=orthogonal,seed=0"] == "diverged"
    assert statuses["init=kaiming_normal,seed=3"] == "running"
    assert statuses["init=xavier_normal,seed=3"] == "unknown"
    assert statuses["init=xavier_normal,seed=4"] == "unknown"
    assert (
        statuses.filter(like="init=kaiming_normal,seed=").drop("init=kaiming_normal,seed=3")
        == "completed"
    ).all()
    assert set(summary.loc[summary["kind"] == "probe", "status"]) == {"completed"}


def test_unfinished_runs_say_why_and_are_never_results(loaded):
    _, summary, _ = loaded
    corrupt = _row(summary, "init=xavier_normal,seed=3")
    assert "summary.json unreadable" in corrupt["note"]
    assert not corrupt["in_aggregate"]
    assert corrupt["final_test_acc"] == pytest.approx(0.8)  # what metrics.csv says so far
    missing = _row(summary, "init=xavier_normal,seed=4")
    assert "no summary.json" in missing["note"]
    running = _row(summary, "init=kaiming_normal,seed=3")
    assert running["final_test_acc"] == pytest.approx(0.55)
    assert running["epochs_completed"] == 2
    assert not running["in_aggregate"]
    assert _row(summary, "init=orthogonal,seed=0")["in_aggregate"]  # diverged is a result


def test_summary_columns_keep_identity_and_what_varies(loaded):
    _, summary, _ = loaded
    for column in (
        "model",
        "init",
        "optimizer",
        "lr",
        "seed",
        "status",
        "final_test_acc",
        "best_test_acc",
        "threshold_epoch",
        "total_seconds",
        "images_per_second",
        "path",
    ):
        assert column in summary, column
    # init.name and seed vary but are shown once, as init and seed; nothing else varies
    assert summary.attrs["varying"] == []
    assert "init.name" not in summary and "model.width" not in summary
    assert summary["model"].eq("mlp").all() and summary["lr"].eq(0.1).all()


def test_threshold_epoch_is_the_first_epoch_reaching_it(sweep):
    _, summary = _summary(sweep, threshold=0.5)
    assert _row(summary, "init=kaiming_normal,seed=0")["threshold_epoch"] == 3  # 0.3 .45 .6
    assert _row(summary, "init=kaiming_normal,seed=3")["threshold_epoch"] == 2  # 0.35 0.55
    assert math.isnan(_row(summary, "init=orthogonal,seed=0")["threshold_epoch"])  # never
    _, summary = _summary(sweep, threshold=0.45)
    assert _row(summary, "init=kaiming_normal,seed=0")["threshold_epoch"] == 2  # reached exactly


def test_aggregate_mean_std_and_t_interval_by_hand(loaded):
    _, _, aggregate = loaded
    row = aggregate.set_index("init").loc["kaiming_normal"]
    # 0.90, 0.92, 0.94: mean 0.92, sample std 0.02, CI 0.92 ± t(0.975, 2) * 0.02 / sqrt(3)
    assert row["final_test_acc_mean"] == pytest.approx(0.92)
    assert row["final_test_acc_std"] == pytest.approx(0.02)
    assert row["final_test_acc_n"] == 3
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert row["final_test_acc_ci95_low"] == pytest.approx(0.92 - half)
    assert row["final_test_acc_ci95_high"] == pytest.approx(0.92 + half)
    assert (row["runs"], row["n_completed"], row["n_running"]) == (4, 3, 1)
    assert row["seeds"] == "0 1 2"
    assert row["threshold_epoch_mean"] == 3 and row["reached_threshold"] == 3
    xavier = aggregate.set_index("init").loc["xavier_normal"]
    assert xavier["final_test_acc_mean"] == pytest.approx((0.80 + 0.81 + 0.85) / 3)
    assert (xavier["runs"], xavier["n_unknown"]) == (5, 2)


def test_a_single_run_has_no_interval(loaded):
    _, _, aggregate = loaded
    row = aggregate.set_index("init").loc["orthogonal"]
    assert row["final_test_acc_n"] == 1 and row["final_test_acc_mean"] == pytest.approx(0.1)
    assert math.isnan(row["final_test_acc_std"])
    assert math.isnan(row["final_test_acc_ci95_low"]) and math.isnan(
        row["final_test_acc_ci95_high"]
    )
    assert row["n_diverged"] == 1


def test_aggregate_is_ranked_by_final_accuracy(loaded):
    _, _, aggregate = loaded
    assert list(aggregate["init"]) == ["kaiming_normal", "xavier_normal", "orthogonal"]


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 200])
def test_t_quantile_matches_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    assert tables.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_describe_ignores_missing_values():
    described = tables.describe([0.5, np.nan, None, 0.7])
    assert described["n"] == 2 and described["mean"] == pytest.approx(0.6)
    assert tables.describe([])["n"] == 0 and math.isnan(tables.describe([])["mean"])


def test_confidence_interval_stays_within_what_the_figure_can_take():
    # three accuracies near 0: mean 0.02, std 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3)
    accuracies = [0.0, 0.02, 0.04]
    half = tables.t_quantile(0.975, 2) * 0.02 / math.sqrt(3)
    assert 0.02 - half < 0  # the raw interval would reach below 0%
    described = tables.describe(accuracies, (0.0, 1.0))
    assert described["ci95_low"] == 0.0
    assert described["ci95_high"] == pytest.approx(0.02 + half)
    near_one = tables.describe([1.0, 0.98, 0.96], (0.0, 1.0))
    assert near_one["ci95_high"] == 1.0 and near_one["ci95_low"] == pytest.approx(0.98 - half)
    # the aggregate table applies the bounds of accuracy
    assert tables.BOUNDS["final_test_acc"] == (0.0, 1.0)


# ----------------------------------------------------------------------------- configurations


def test_varying_config_becomes_columns_and_groups(tmp_path):
    for lr in (0.1, 0.01):
        for seed in (0, 1):
            # data.root and train.threads change how a run executes, not what it computes
            write_run(
                tmp_path / f"lr={lr},seed={seed}",
                config(
                    "kaiming_normal",
                    seed,
                    optimizer__lr=lr,
                    model__width=32,
                    data__root=f"/data/{seed}",
                    train__threads=seed + 1,
                ),
                accuracies=[0.5, 0.6 + lr],
            )
    write_run(tmp_path / "wide", config("kaiming_normal", 0, optimizer__lr=0.1, model__width=64))
    _, summary = _summary(tmp_path)
    assert summary.attrs["varying"] == ["model.width"]
    assert "data.root" not in summary and "train.threads" not in summary
    aggregate = tables.aggregate_table(summary)
    groups = aggregate.set_index(["lr", "model.width"])["runs"].to_dict()
    assert groups == {(0.1, 32): 2, (0.01, 32): 2, (0.1, 64): 1}
    assert set(aggregate.attrs["keys"]) == {"model", "init", "optimizer", "lr", "model.width"}
    assert set(summary["setting"]) == {"lr=0.1, width=32", "lr=0.01, width=32", "lr=0.1, width=64"}


def test_init_label_names_the_option_that_tells_variants_apart(tmp_path):
    write_run(tmp_path / "a", config("kaiming_normal", 0, init__mode="fan_in"))
    write_run(tmp_path / "b", config("kaiming_normal", 0, init__mode="fan_out"))
    write_run(tmp_path / "c", config("xavier_normal", 0))  # has no mode: absent, not a variant
    _, summary = _summary(tmp_path)
    assert sorted(summary["init_label"]) == [
        "kaiming_normal mode=fan_in",
        "kaiming_normal mode=fan_out",
        "xavier_normal",
    ]
    assert set(summary["setting"]) == {""}


def test_a_second_run_of_the_same_seed_counts_once(tmp_path):
    write_run(
        tmp_path / "first" / "run",
        config("kaiming_normal", 0),
        accuracies=[0.5, 0.6],
        summary={"finished_at": "2025-01-01T00:00:00+00:00"},
    )
    write_run(
        tmp_path / "again" / "run",
        config("kaiming_normal", 0),
        accuracies=[0.5, 0.7],
        summary={"finished_at": "2025-01-03T00:00:00+00:00"},
    )
    _, summary = _summary(tmp_path)
    older = _row(summary, "first/run")
    assert older["duplicate"] and not older["in_aggregate"] and "duplicate of" in older["note"]
    aggregate = tables.aggregate_table(summary)
    assert aggregate.loc[0, "final_test_acc_mean"] == pytest.approx(0.7)


# ----------------------------------------------------------------------------- damaged files


def test_a_line_cut_short_is_dropped_and_noted(tmp_path):
    run = write_run(tmp_path / "run", config(), accuracies=[0.3, 0.6], status="running")
    with open(run / "metrics.csv", "a") as handle:
        handle.write("3,12,0.5,0.7,0.5,0.7")  # no newline: the runner was writing it
    frame, note = tables.read_table(run, "metrics")
    assert list(frame["epoch"]) == [1, 2] and "incomplete last line" in note
    _, summary = _summary(tmp_path)
    assert summary.loc[0, "final_test_acc"] == pytest.approx(0.6)
    assert "incomplete last line" in summary.loc[0, "note"]


@pytest.mark.parametrize("content", [b"", b"epoch,st", b"\xff\xfe\x00garbage\n1,2\n"])
def test_empty_or_garbled_tables_do_not_crash(tmp_path, content):
    run = write_run(tmp_path / "run", config(), status="running")
    (run / "metrics.csv").write_bytes(content)
    (run / "grad_norms.csv").unlink()
    result = make_report([tmp_path], tmp_path / "report")
    assert result["runs"] == 1
    assert pd.read_csv(result["summary"])["status"].tolist() == ["running"]


def test_an_empty_config_does_not_make_every_key_vary(tmp_path):
    write_run(tmp_path / "a", config("kaiming_normal", 0))
    write_run(tmp_path / "b", config("kaiming_normal", 1))
    (tmp_path / "b" / record.CONFIG).write_text(": : not yaml [")
    _, summary = _summary(tmp_path)
    assert summary.attrs["varying"] == []
    assert "config.yaml unreadable" in _row(summary, "/b")["note"]
    assert _row(summary, "/b")["seed"] == 1  # from summary.json


# ----------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def figures(loaded):
    runs, summary, aggregate = loaded
    colors = plots.init_colors(summary["init_label"])
    return colors, {
        "convergence": plots.plot_convergence(tables.curves(runs, summary), colors),
        "gradient_flow": plots.plot_gradient_flow(tables.gradient_flow(runs, summary), colors),
        "layer_std": plots.plot_layer_std(tables.layer_moments(runs, summary), colors),
        "histograms": plots.plot_histograms(
            tables.representative_histograms(runs, summary), colors, "weight"
        ),
        "signal": plots.plot_signal_propagation(tables.probe_profiles(runs, summary), colors),
        "ranking": plots.plot_ranking(summary, aggregate, colors),
        "epoch_time": plots.plot_epoch_time(summary, colors),
    }


def test_colours_are_stable_and_distinct():
    colors = plots.init_colors(["xavier", "kaiming", "xavier", "lsuv"])
    assert colors == plots.init_colors(["lsuv", "kaiming", "xavier"])
    assert len(set(colors.values())) == 3
    twelve = plots.init_colors(f"init{i:02d}" for i in range(12))
    assert len(set(twelve.values())) == 12


def test_convergence_draws_mean_lines_and_marks_other_runs(figures):
    colors, drawn = figures
    loss_axis, acc_axis = drawn["convergence"].axes
    assert loss_axis.get_yscale() == "log" and acc_axis.get_yscale() == "linear"
    assert "epoch" in acc_axis.get_xlabel() and "%" in acc_axis.get_ylabel()
    means = _drawn_lines(acc_axis)
    # a mean line for the two initializers with completed runs; orthogonal only diverged
    assert sorted(line.get_label() for line in means) == ["kaiming_normal", "xavier_normal"]
    kaiming = next(line for line in means if line.get_label() == "kaiming_normal")
    assert list(kaiming.get_ydata()) == pytest.approx([30, 45, 60, 92])
    individual = [line.get_label() for line in acc_axis.get_lines() if line not in means]
    assert any("orthogonal,seed=0" in label and "diverged" in label for label in individual)
    assert any(label.endswith("kaiming_normal,seed=3") for label in individual)  # running
    assert len(acc_axis.collections) == 2  # a min-max band per initializer with 3 seeds
    legend = _legend_texts(drawn["convergence"])
    assert {
        "kaiming_normal",
        "xavier_normal",
        "orthogonal",
        "diverged run",
        "unfinished run",
    } <= set(legend)


def test_gradient_flow_is_per_layer_on_a_log_axis(figures):
    colors, drawn = figures
    axes = drawn["gradient_flow"].axes
    assert [axis.get_title(loc="left").split(" (")[0] for axis in axes] == [
        "Initialization",
        "End of epoch 1",
        "Last logged",
    ]
    for axis in axes:
        assert axis.get_yscale() == "log"
        lines = _drawn_lines(axis)
        assert {line.get_label() for line in lines} >= {"kaiming_normal", "xavier_normal"}
        # the weights of the four layers: no bias, no normalization scale
        assert all(len(line.get_xdata()) == 4 for line in lines)
    xavier = next(line for line in _drawn_lines(axes[0]) if line.get_label() == "xavier_normal")
    ratios = np.diff(np.log2(xavier.get_ydata()))
    assert ratios == pytest.approx([3, 1, 1])  # 0.5 per parameter tensor; bias, norm skipped


def test_the_same_initializer_has_the_same_colour_everywhere(figures):
    colors, drawn = figures
    seen: dict[str, set] = {}
    for name in ("convergence", "gradient_flow", "layer_std", "signal"):
        for axis in drawn[name].axes:
            for line in _drawn_lines(axis):
                seen.setdefault(line.get_label(), set()).add(line.get_color())
    for label, found in seen.items():
        assert found == {colors[label]}, label
    ranking_axis = drawn["ranking"].axes[0]
    for line in _drawn_lines(ranking_axis):
        assert line.get_color() == colors[line.get_label()]


def test_signal_propagation_from_probe_runs(figures):
    _, drawn = figures
    forward, backward = drawn["signal"].axes
    assert forward.get_yscale() == backward.get_yscale() == "log"
    xavier = next(line for line in _drawn_lines(forward) if line.get_label() == "xavier_normal")
    assert list(xavier.get_ydata()) == pytest.approx([1, 0.5, 0.25, 0.125])
    assert "depth" in forward.get_xlabel()


def test_histograms_have_a_row_per_initializer_and_three_layers(figures):
    _, drawn = figures
    axes = drawn["histograms"].axes
    assert len(axes) == 3 * 3  # kaiming_normal, orthogonal, xavier_normal x first/middle/last
    assert "layers.0" in axes[0].get_title(loc="left") and "head" in axes[2].get_title(loc="left")
    assert [axes[row * 3].get_ylabel() for row in range(3)] == [
        "kaiming_normal",
        "orthogonal",
        "xavier_normal",
    ]


def test_ranking_draws_the_interval_and_none_for_a_single_run(figures):
    _, drawn = figures
    axis = drawn["ranking"].axes[0]
    labels = [tick.get_text() for tick in axis.get_yticklabels()]
    assert labels == ["orthogonal  (n=1)", "xavier_normal  (n=3)", "kaiming_normal  (n=3)"]
    bars = [c for c in axis.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(bars) == 2


def test_a_figure_without_data_is_skipped_and_logged(tmp_path, caplog):
    write_run(tmp_path / "runs" / "a", config(), diagnostics=False)
    with caplog.at_level(logging.INFO, logger="initbench.report"):
        result = make_report([tmp_path / "runs"], tmp_path / "report")
    names = sorted(path.stem for path in result["figures"])
    assert names == ["convergence", "epoch_time", "ranking"]
    assert "figure=signal_propagation skipped" in caplog.text
    assert "signal_propagation (no probe run" in result["page"].read_text()


# ----------------------------------------------------------------------------- the report


def test_make_report_writes_tables_figures_and_page(sweep, tmp_path):
    result = make_report([sweep], tmp_path / "out", threshold=0.5)
    assert result["runs"] == 12
    summary = pd.read_csv(result["summary"])
    assert len(summary) == 12 and "init_label" not in summary
    aggregate = pd.read_csv(result["aggregate"])
    assert list(aggregate["init"]) == ["kaiming_normal", "xavier_normal", "orthogonal"]
    assert {path.stem for path in result["figures"]} == {
        "ranking",
        "convergence",
        "gradient_flow",
        "layer_std",
        "histograms_weight",
        "histograms_activation",
        "signal_propagation",
        "epoch_time",
    }
    page = result["page"].read_text()
    for path in result["figures"]:
        assert f"(figures/{path.name})" in page
    assert "2 unknown" in page and "torch" in page and "`cpu`" in page
    assert "<img" in result["html"].read_text()


def test_regenerating_in_place_removes_its_own_stale_figures(tmp_path):
    write_run(tmp_path / "runs" / "a", config(), diagnostics=False)
    write_run(tmp_path / "probes" / "a", config(), probe=[(1.0, 1e-3), (0.5, 2e-3)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    make_report([tmp_path / "runs", tmp_path / "probes"], out)
    assert (out / "figures" / "signal_propagation.png").exists()
    make_report([tmp_path / "runs"], out)  # no probe run this time
    assert not (out / "figures" / "signal_propagation.png").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_refuses_to_write_into_a_run_directory(sweep):
    run = next((sweep / "10-00-00").iterdir())
    with pytest.raises(ValueError, match="inside the run directory"):
        make_report([sweep], run / "report")


@pytest.mark.parametrize("threshold", [0, 1.5, 50])
def test_threshold_must_be_a_fraction(sweep, tmp_path, threshold):
    with pytest.raises(ValueError, match=f"threshold={threshold}"):
        make_report([sweep], tmp_path / "out", threshold=threshold)


def test_missing_directory_or_no_runs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        make_report([tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories"):
        make_report([tmp_path / "empty"], tmp_path / "out")


def test_failed_and_interrupted_runs_are_counted_not_averaged(tmp_path):
    write_run(tmp_path / "ok", config("lsuv", 0), accuracies=[0.5, 0.6])
    write_run(
        tmp_path / "crash",
        config("lsuv", 1),
        accuracies=[0.5],
        status="failed",
        summary={"error": "RuntimeError: CUDA out of memory\nTraceback ..."},
    )
    write_run(tmp_path / "stop", config("lsuv", 2), accuracies=[0.4], status="interrupted")
    _, summary = _summary(tmp_path)
    assert "error: RuntimeError: CUDA out of memory" in _row(summary, "crash")["note"]
    row = tables.aggregate_table(summary).iloc[0]
    assert (row["runs"], row["n_completed"], row["n_failed"], row["n_interrupted"]) == (3, 1, 1, 1)
    assert row["final_test_acc_n"] == 1 and row["final_test_acc_mean"] == pytest.approx(0.6)


def test_overlapping_roots_find_each_run_once(sweep):
    found = tables.find([sweep, sweep / "10-00-00"])
    assert len(found) == 12 and len({run.path for run in found}) == 12
    assert all(run.shown.startswith(str(sweep)) for run in found)


def test_default_out_sits_with_the_runs_never_inside_one(tmp_path):
    run = write_run(tmp_path / "sweep" / "seed=0", config(), diagnostics=False)
    assert make_report([tmp_path / "sweep"])["page"] == tmp_path / "sweep" / "report" / "report.md"
    assert make_report([run])["page"] == tmp_path / "sweep" / "report" / "report.md"


def test_a_spectral_norm_parameter_counts_as_its_layers_weight():
    name = "hidden.0.parametrizations.weight.original"
    assert tables.plain_parameter_name(name) == "hidden.0.weight"
    assert tables.plain_parameter_name("rnn.parametrizations.weight_hh_l0.original") == (
        "rnn.weight_hh_l0"
    )
    assert tables.plain_parameter_name("hidden.0.bias") == "hidden.0.bias"
    assert tables._is_layer_weight(tables.plain_parameter_name(name), {"hidden.0"})
    assert not tables._is_layer_weight("hidden.0.bias", {"hidden.0"})
