"""The report's figures, one question each.

Every function takes the long tables of :mod:`initbench.report.tables` and the colour of each
initializer, and returns a :class:`matplotlib.figure.Figure`, or ``None`` when its data is
absent (the caller logs the skip). Figures are built without pyplot, so nothing here touches a
global backend or leaks open figures; ``Figure.savefig`` renders them with Agg.

Conventions shared by all figures:

- one colour per initializer label, from :func:`init_colors`, the same in every figure;
- one row of panels per *setting* (what varies besides the initializer and the seed), so
  that curves of different models or learning rates never share a panel;
- means over seeds are arithmetic for accuracies, losses and times, geometric for norms and
  standard deviations (which span decades); a band shows the min-max over seeds;
- legends sit outside the axes, to the right, and never cover data.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

# tab10, then ten darker named colours that stay distinct from it and legible on white
PALETTE = [
    *(matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors),
    *(
        matplotlib.colors.to_hex(name)
        for name in (
            "black",
            "navy",
            "darkgoldenrod",
            "teal",
            "maroon",
            "yellowgreen",
            "deeppink",
            "indigo",
            "sienna",
            "darkslategray",
        )
    ),
]
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH = 4.6, 3.0, 2.6
BAND_ALPHA = 0.18
BANDS_UP_TO = 6  # initializers in one depth-profile panel


def init_colors(labels: Iterable[str]) -> dict[str, str]:
    """A colour per initializer label: the sorted labels take the palette in order, so the
    same set of initializers gets the same colours in every figure and every report."""
    names = sorted(set(labels))
    if len(names) > len(PALETTE):
        log.warning(
            "initializers=%d colours=%d: colours repeat; compare fewer initializers per report",
            len(names),
            len(PALETTE),
        )
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(names)}


# ----------------------------------------------------------------------------- helpers


def _settings(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["setting"].fillna("").unique())


def _figure(
    rows: int,
    columns: int,
    *,
    width: float = PANEL_WIDTH,
    height: float = PANEL_HEIGHT,
    legend: bool = True,
    **subplots,
) -> tuple[Figure, np.ndarray]:
    extra = LEGEND_WIDTH if legend else 0.0
    figure = Figure(figsize=(columns * width + extra, rows * height + 0.6), layout="constrained")
    figure.panels_width = columns * width  # for _suptitle
    axes = figure.subplots(rows, columns, squeeze=False, **subplots)
    return figure, axes


def _suptitle(figure: Figure, text: str) -> None:
    """The figure's title, centred over the panels and wrapped to their width, so that it never
    runs into the legend beside them (a one-column figure is narrower than most titles)."""
    width, _ = figure.get_size_inches()
    panels = getattr(figure, "panels_width", width)
    # about 11 characters per inch at the title's 12 points
    figure.suptitle(textwrap.fill(text, max(30, int(panels * 11))), x=panels / 2 / width,
                    ha="center")  # fmt: skip


def _legend(
    figure: Figure,
    colors: Mapping[str, str],
    labels: Iterable[str],
    *,
    extra: list[tuple[Line2D | Patch, str]] = (),
    title: str = "initializer",
) -> None:
    handles = [Line2D([], [], color=colors[label], lw=2.5) for label in labels]
    names = list(labels)
    for handle, name in extra:
        handles.append(handle)
        names.append(name)
    figure.legend(
        handles,
        names,
        loc="outside right upper",
        title=title,
        fontsize="small",
        title_fontsize="small",
        frameon=False,
    )


def _row_title(axis, setting: str, text: str) -> None:
    axis.set_title(f"{text}\n{setting}" if setting else text, fontsize="medium", loc="left")


def _log_summary(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Geometric mean, min and max of the positive finite ``value`` per group."""
    positive = frame[np.isfinite(frame[value]) & (frame[value] > 0)]
    if positive.empty:
        return pd.DataFrame(columns=[*by, "center", "low", "high"])
    logged = positive.assign(_log=np.log10(positive[value]))
    grouped = logged.groupby(by, sort=True)
    return pd.DataFrame(
        {
            "center": 10 ** grouped["_log"].mean(),
            "low": grouped[value].min(),
            "high": grouped[value].max(),
        }
    ).reset_index()


def _depth_axis(axis, frame: pd.DataFrame) -> None:
    """Label a few depths with the layer name, so a 100-layer axis stays readable."""
    names = frame.drop_duplicates("depth").set_index("depth")["layer"].sort_index()
    if names.empty:
        return
    depths = names.index.to_numpy()
    # every layer of a shallow model; the first, middle and last of a deep one
    ticks = (
        depths if len(depths) <= 5 else sorted({depths[0], depths[len(depths) // 2], depths[-1]})
    )
    axis.set_xticks(ticks, [f"{int(d)}\n{_short(names[d])}" for d in ticks], fontsize="x-small")


def _short(name: str, limit: int = 18) -> str:
    name = name.removesuffix(".weight")
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def _widths(labels: list[str]) -> dict[str, float]:
    """Line widths that shrink along the drawing order, so that two initializers with the same
    profile (kaiming_normal and kaiming_uniform, say) show as nested stripes, not as one."""
    if len(labels) < 2:
        return dict.fromkeys(labels, 1.8)
    return {label: 3.2 - 2.0 * index / (len(labels) - 1) for index, label in enumerate(labels)}


# ----------------------------------------------------------------------------- convergence


def plot_convergence(curves: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Is one initializer faster or better? Train loss (log) and test accuracy against epoch.

    Completed runs: the mean over seeds as a line, the min-max over seeds as a band. Diverged
    runs: a dotted line each, ending with a cross at the last finite value. Runs not finished
    (running, failed, interrupted, unknown): a dashed line each.
    """
    if curves.empty:
        return None
    settings = _settings(curves)
    figure, axes = _figure(len(settings), 2)
    _suptitle(figure, "Convergence: mean of completed seeds (line), min–max over seeds (band)")
    statuses = set(curves["status"])
    for row, setting in enumerate(settings):
        of_setting = curves[curves["setting"].fillna("") == setting]
        loss_axis, acc_axis = axes[row]
        for axis, value, scale in ((loss_axis, "train_loss", 1.0), (acc_axis, "test_acc", 100.0)):
            for label, of_init in of_setting.groupby("init_label", sort=True):
                _draw_curves(axis, of_init, value, scale, colors[label], label)
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
        loss_axis.set_yscale("log")
        loss_axis.set_ylabel("train loss (log scale)")
        acc_axis.set_ylabel("test accuracy (%)")
        _row_title(loss_axis, setting, "Train loss")
        _row_title(acc_axis, setting, "Test accuracy")
    extra = []
    if "diverged" in statuses:
        extra.append((Line2D([], [], color="0.3", ls=":", marker="x"), "diverged run"))
    if statuses - {"completed", "diverged"}:
        extra.append((Line2D([], [], color="0.3", ls="--"), "unfinished run"))
    _legend(figure, colors, sorted(curves["init_label"].unique()), extra=extra)
    return figure


def _draw_curves(
    axis, of_init: pd.DataFrame, value: str, scale: float, color: str, label: str
) -> None:
    points = of_init[np.isfinite(of_init[value]) & of_init["epoch"].notna()]
    if value == "train_loss":
        points = points[points[value] > 0]
    completed = points[points["status"] == "completed"]
    if len(completed):
        stats = completed.groupby("epoch")[value].agg(["mean", "min", "max"]).sort_index()
        # with few epochs a line alone can be a single invisible point: mark each epoch
        marker = "o" if len(stats) <= 12 else None
        axis.plot(stats.index, stats["mean"] * scale, color=color, lw=1.8, label=label,
                  marker=marker, ms=4)  # fmt: skip
        if completed["path"].nunique() > 1:
            axis.fill_between(
                stats.index,
                stats["min"] * scale,
                stats["max"] * scale,
                color=color,
                alpha=BAND_ALPHA,
                lw=0,
            )
    for path, run in points[points["status"] != "completed"].groupby("path", sort=True):
        run = run.sort_values("epoch")
        diverged = run["status"].iloc[0] == "diverged"
        axis.plot(
            run["epoch"],
            run[value] * scale,
            color=color,
            lw=1.0,
            ls=":" if diverged else "--",
            label=f"_{path}",
        )
        if diverged:
            axis.plot(
                run["epoch"].iloc[-1:],
                run[value].iloc[-1:] * scale,
                color=color,
                marker="x",
                ms=8,
                mew=2,
                ls="none",
                label=f"_diverged {path}",
            )


# ----------------------------------------------------------------------------- gradient flow


def plot_gradient_flow(flow: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Do gradients vanish or explode with depth? The gradient norm of each layer's weight,
    input to output, on a log axis, at initialization and later. Line: geometric mean over
    seeds; band: min-max, drawn for up to BANDS_UP_TO initializers (more bands hide the
    lines)."""
    if flow.empty:
        return None
    settings = _settings(flow)
    points = [
        p for p in ("initialization", "end of epoch 1", "last logged") if p in set(flow.point)
    ]
    figure, axes = _figure(len(settings), len(points), sharey="row")
    labels = sorted(flow["init_label"].unique())
    bands = len(labels) <= BANDS_UP_TO
    _suptitle(
        figure,
        "Gradient flow: gradient norm per layer (geometric mean over seeds"
        + (", band min–max)" if bands else ")"),
    )
    widths = _widths(labels)
    for row, setting in enumerate(settings):
        of_setting = flow[flow["setting"].fillna("") == setting]
        for column, point in enumerate(points):
            axis = axes[row, column]
            at = of_setting[of_setting["point"] == point]
            stats = _log_summary(at, ["init_label", "depth"], "grad_norm")
            for label, line in stats.groupby("init_label", sort=True):
                axis.plot(
                    line["depth"],
                    line["center"],
                    color=colors[label],
                    lw=widths[label],
                    label=label,
                )
                if bands and at.loc[at["init_label"] == label, "path"].nunique() > 1:
                    axis.fill_between(
                        line["depth"],
                        line["low"],
                        line["high"],
                        color=colors[label],
                        alpha=BAND_ALPHA,
                        lw=0,
                    )
            axis.set_yscale("log")
            axis.grid(alpha=0.3, which="major")
            steps = sorted(at["step"].dropna().unique())
            if not steps:  # a run with no row at this point (e.g. stopped at step 0)
                when = "no data"
            elif len(steps) == 1:
                when = f"step {int(steps[0])}"
            else:
                when = f"steps {int(steps[0])}–{int(steps[-1])}"
            _row_title(axis, setting, f"{point.capitalize()} ({when})")
            axis.set_xlabel("layer (input → output)")
            _depth_axis(axis, at)
            if column == 0:
                axis.set_ylabel("gradient norm (log scale)")
            if at["grad_norm"].notna().any() and not np.isfinite(at["grad_norm"]).all():
                axis.text(
                    0.01,
                    0.02,
                    "non-finite norms not drawn",
                    transform=axis.transAxes,
                    fontsize="x-small",
                    color="0.35",
                )
    _legend(figure, colors, sorted(flow["init_label"].unique()))
    return figure


# ----------------------------------------------------------------------------- distributions


def plot_layer_std(moments: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Does the scale of weights and activations hold up with depth? Standard deviation per
    layer (log axis) at initialization and after training; geometric mean over seeds."""
    if moments.empty or moments["std"].notna().sum() == 0:
        return None
    settings = _settings(moments)
    tensors = [t for t in ("weight", "activation") if t in set(moments["tensor"])]
    points = [p for p in ("initialization", "after training") if p in set(moments["point"])]
    rows = [(setting, tensor) for setting in settings for tensor in tensors]
    figure, axes = _figure(len(rows), len(points), sharey="row")
    _suptitle(figure, "Scale per layer: standard deviation (geometric mean over seeds)")
    widths = _widths(sorted(moments["init_label"].unique()))
    for row, (setting, tensor) in enumerate(rows):
        of_row = moments[
            (moments["setting"].fillna("") == setting) & (moments["tensor"] == tensor)
        ]
        for column, point in enumerate(points):
            axis = axes[row, column]
            at = of_row[of_row["point"] == point]
            stats = _log_summary(at, ["init_label", "depth"], "std")
            for label, line in stats.groupby("init_label", sort=True):
                axis.plot(
                    line["depth"],
                    line["center"],
                    color=colors[label],
                    lw=widths[label],
                    marker="." if len(line) < 30 else None,
                    label=label,
                )
            axis.set_yscale("log")
            axis.grid(alpha=0.3)
            _row_title(axis, setting, f"{tensor.capitalize()}s, {point}")
            axis.set_xlabel("layer (input → output)")
            _depth_axis(axis, at)
            if column == 0:
                axis.set_ylabel(f"{tensor} std (log scale)")
    _legend(figure, colors, sorted(moments["init_label"].unique()))
    return figure


def plot_histograms(
    histograms: pd.DataFrame, colors: Mapping[str, str], tensor: str
) -> Figure | None:
    """What do the ``tensor`` values ("weight" or "activation") of the first, middle and last
    layer look like, at initialization (filled) and after training (line)? One row per
    initializer, one run each (its lowest finished seed). Each panel has its own x range, since
    scales differ by orders of magnitude between initializers (the layer_std figure compares
    scales); the std before → after (exact, from distributions.csv) is printed in the corner."""
    if histograms.empty:
        return None
    of_tensor = histograms[histograms["tensor"] == tensor]
    if of_tensor.empty:
        return None
    positions = [p for p in ("first", "middle", "last") if p in set(of_tensor["position"])]
    rows = list(
        of_tensor[["setting", "init_label"]]
        .drop_duplicates()
        .sort_values(["setting", "init_label"])
        .itertuples(index=False, name=None)
    )
    figure, axes = _figure(len(rows), len(positions), height=1.4, legend=True)
    _suptitle(
        figure,
        f"{tensor.capitalize()} histograms of the first, middle and last layer: "
        "at initialization (filled) and after training (line); each panel its own x range",
    )
    previous_setting = None
    for row, (setting, label) in enumerate(rows):
        of_row = of_tensor[(of_tensor["setting"] == setting) & (of_tensor["init_label"] == label)]
        for column, position in enumerate(positions):
            axis = axes[row, column]
            at = of_row[of_row["position"] == position]
            spreads = {}
            for point, drawn in at.groupby("point"):
                drawn = drawn.sort_values("bin_low")
                width = (drawn["bin_high"] - drawn["bin_low"]).replace(0, np.nan)
                density = drawn["count"] / (drawn["count"].sum() * width)
                edges = np.append(drawn["bin_low"].to_numpy(), drawn["bin_high"].iloc[-1])
                std = drawn["std"].iloc[0] if "std" in drawn else math.nan
                spreads[point] = std if math.isfinite(std) else _histogram_std(drawn)
                if point == "initialization":
                    axis.stairs(
                        density.fillna(0).to_numpy(),
                        edges,
                        fill=True,
                        color=colors[label],
                        alpha=0.3,
                        label=f"{label}, {point}",
                    )
                else:
                    axis.stairs(
                        density.fillna(0).to_numpy(),
                        edges,
                        color=colors[label],
                        lw=1.3,
                        label=f"{label}, {point}",
                    )
            if spreads:
                text = " → ".join(f"{spreads[p]:.2g}" for p in POINTS if p in spreads)
                axis.text(
                    0.99,
                    0.95,
                    f"std {text}",
                    transform=axis.transAxes,
                    ha="right",
                    va="top",
                    fontsize="x-small",
                    color="0.25",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
                )
            axis.set_yticks([])
            axis.tick_params(labelsize="x-small")
            if row == 0 or setting != previous_setting:
                layer = at["layer"].iloc[0] if len(at) else ""
                title = f"{position} layer: {_short(layer, 28)}"
                _row_title(axis, setting if column == 0 else "", title)
            if column == 0:
                axis.set_ylabel(
                    label,
                    rotation=0,
                    ha="right",
                    va="center",
                    fontsize="small",
                )
            if row == len(rows) - 1:
                axis.set_xlabel(f"{tensor} value")
        previous_setting = setting
    extra = [
        (Patch(color="0.5", alpha=0.3), "at initialization"),
        (Line2D([], [], color="0.3"), "after training"),
    ]
    _legend(figure, colors, [], extra=extra, title="density (per panel)")
    return figure


POINTS = ("initialization", "after training")


def _histogram_std(drawn: pd.DataFrame) -> float:
    centers = ((drawn["bin_low"] + drawn["bin_high"]) / 2).to_numpy()
    counts = drawn["count"].to_numpy(dtype=float)
    if counts.sum() <= 0:
        return math.nan
    mean = np.average(centers, weights=counts)
    return float(np.sqrt(np.average((centers - mean) ** 2, weights=counts)))


# ----------------------------------------------------------------------------- probe


def plot_signal_propagation(probe: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Does the signal survive the depth at initialization? Activation std (forward) and
    gradient std (backward) per layer from probe runs, log axis, geometric mean over seeds."""
    if probe.empty:
        return None
    settings = _settings(probe)
    figure, axes = _figure(len(settings), 2)
    _suptitle(
        figure, "Signal propagation at initialization (probe runs; geometric mean over seeds)"
    )
    widths = _widths(sorted(probe["init_label"].unique()))
    for row, setting in enumerate(settings):
        of_setting = probe[probe["setting"].fillna("") == setting]
        for column, (value, title) in enumerate(
            (("activation_std", "Forward: activation std"), ("grad_std", "Backward: gradient std"))
        ):
            axis = axes[row, column]
            stats = _log_summary(of_setting, ["init_label", "depth"], value)
            for label, line in stats.groupby("init_label", sort=True):
                axis.plot(
                    line["depth"],
                    line["center"],
                    color=colors[label],
                    lw=widths[label],
                    label=label,
                )
            axis.set_yscale("log")
            axis.grid(alpha=0.3)
            axis.set_xlabel("depth (layer index, input → output)")
            axis.set_ylabel(f"{value.replace('_', ' ')} (log scale)")
            _depth_axis(axis, of_setting)
            _row_title(axis, setting, title)
    _legend(figure, colors, sorted(probe["init_label"].unique()))
    return figure


# ----------------------------------------------------------------------------- ranking and time


def _group_label(frame: pd.DataFrame) -> pd.Series:
    multiple = frame["setting"].fillna("").nunique() > 1
    if not multiple:
        return frame["init_label"]
    return frame["init_label"] + " | " + frame["setting"].fillna("")


def plot_ranking(
    summary: pd.DataFrame, aggregate: pd.DataFrame, colors: Mapping[str, str]
) -> Figure | None:
    """Which initializer ends best? Final test accuracy per configuration: each counted run
    as a small dot (a cross if it diverged), the mean as a large dot, the 95% t-interval of the
    mean as a bar (none with a single run), best at the top; mean and interval also as numbers
    to the right."""
    if aggregate.empty or aggregate["final_test_acc_n"].sum() == 0:
        return None
    groups = aggregate[aggregate["final_test_acc_n"] > 0].copy()
    groups["label"] = _group_label(groups)
    groups = groups.sort_values("final_test_acc_mean", ascending=True, kind="stable")
    counted = summary[summary["in_aggregate"]].copy()
    counted["label"] = _group_label(counted)
    figure = Figure(figsize=(9.5, 1.2 + 0.38 * len(groups)), layout="constrained")
    axis = figure.subplots()
    for y, group in enumerate(groups.itertuples()):
        color = colors[group.init_label]
        runs = counted[counted["label"] == group.label]
        finite = runs[np.isfinite(runs["final_test_acc"].astype(float))]
        for status, marker in (("completed", "o"), ("diverged", "x")):
            values = finite.loc[finite["status"] == status, "final_test_acc"].astype(float) * 100
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            axis.scatter(
                values,
                y + np.asarray(jitter)[: len(values)],
                marker=marker,
                s=14 if marker == "o" else 40,
                color=color,
                alpha=0.7,
                lw=1.5,
                zorder=2,
            )
        low, high = group.final_test_acc_ci95_low, group.final_test_acc_ci95_high
        mean = group.final_test_acc_mean * 100
        if np.isfinite(low) and np.isfinite(high):
            axis.errorbar(
                mean,
                y,
                xerr=[[mean - low * 100], [high * 100 - mean]],
                fmt="none",
                ecolor=color,
                elinewidth=2,
                capsize=4,
                zorder=3,
            )
        axis.plot(mean, y, "o", color=color, ms=8, mec="white", zorder=4, label=group.init_label)
        # the numbers, at the right edge: close means overlap on any scale that fits them all
        interval = f"  [{low * 100:.1f}, {high * 100:.1f}]" if np.isfinite(low) else ""
        axis.annotate(
            f"{mean:.1f}{interval}",
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
            color="0.2",
        )
    axis.set_yticks(
        range(len(groups)),
        [f"{g.label}  (n={int(g.final_test_acc_n)})" for g in groups.itertuples()],
    )
    axis.set_xlabel("final test accuracy (%)")
    # the runs and their intervals set the range, cut at 0 and 100% (a t-interval of three
    # seeds can run past either)
    bounds = [groups[c].astype(float) * 100 for c in
              ("final_test_acc_ci95_low", "final_test_acc_ci95_high")]  # fmt: skip
    shown = pd.concat([counted["final_test_acc"].astype(float) * 100, *bounds]).clip(0, 100)
    shown = shown[np.isfinite(shown)]
    if len(shown):
        margin = max(1.0, 0.05 * (shown.max() - shown.min()))
        axis.set_xlim(max(0.0, shown.min() - margin), min(100.0, shown.max() + margin))
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(
        "Final test accuracy: mean (●) with 95% CI (t), each run (·, × diverged)",
        fontsize="medium",
    )
    return figure


def plot_epoch_time(summary: pd.DataFrame, colors: Mapping[str, str]) -> Figure | None:
    """Does an initializer (or the model around it) cost time? Seconds per epoch: each run's
    median over its epochs as a small dot, the mean over runs as a large dot; fastest at top."""
    runs = summary[(summary["kind"] == "train") & ~summary["duplicate"]].copy()
    runs = runs[np.isfinite(runs["epoch_seconds"].astype(float))]
    if runs.empty:
        return None
    runs["label"] = _group_label(runs)
    order = runs.groupby("label")["epoch_seconds"].mean().sort_values(ascending=False)
    figure = Figure(figsize=(8.5, 1.2 + 0.38 * len(order)), layout="constrained")
    axis = figure.subplots()
    for y, (label, mean) in enumerate(order.items()):
        of_label = runs[runs["label"] == label]
        color = colors[of_label["init_label"].iloc[0]]
        values = of_label["epoch_seconds"].astype(float)
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        axis.scatter(values, y + np.asarray(jitter), s=14, color=color, alpha=0.6, zorder=2)
        axis.plot(
            mean,
            y,
            "o",
            color=color,
            ms=9,
            mec="white",
            zorder=3,
            label=of_label["init_label"].iloc[0],
        )
    axis.set_yticks(range(len(order)), list(order.index))
    axis.set_xlabel("seconds per epoch")
    axis.set_xlim(0, runs["epoch_seconds"].astype(float).max() * 1.08)
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(
        "Time per epoch: each run's median over epochs (·), mean over runs (●)", fontsize="medium"
    )
    return figure
