"""``initbench report``: many run directories in, one comparison out.

    from initbench.report import make_report
    make_report([Path("multirun/2025-01-02")], Path("report"), threshold=0.5)

writes into ``out``::

    summary.csv      one row per run: the configuration that varies, status, figures, path
    aggregate.csv    one row per configuration (all but the seed): mean, std, n, 95% CI
    figures/*.png    one question per figure (see page.FIGURE_CAPTIONS)
    report.md        every table and figure, with the setup that produced them
    report.html      the same page as HTML

The report is derived data: running it again rewrites these files in place (and removes a
figure of its own that no longer has data), and leaves anything else in ``out`` alone. It never
writes into a run directory: ``out`` inside one is refused. Without ``out`` it goes to
``<first path>/report`` (see :func:`default_out`).
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from initbench import record
from initbench.report import page, plots, tables

__all__ = ["make_report", "default_out", "FIGURES"]

log = logging.getLogger(__name__)

FIGURES = tuple(page.FIGURE_CAPTIONS)
FIGURE_FOLDER = "figures"
DPI = 110


def default_out(paths: Sequence[Path]) -> Path:
    """Where a report goes when no ``out`` is given: ``report/`` inside the first path (a sweep
    or a folder of runs: the report sits with the runs it describes, and two sweeps never share
    one), or beside it when the first path is itself a run directory."""
    first = Path(paths[0])
    return first.parent / "report" if record.is_run_dir(first) else first / "report"


def make_report(
    paths: Sequence[Path], out: Path | None = None, *, threshold: float = 0.5
) -> dict[str, Any]:
    """Find every run at or below ``paths`` and write the report into ``out`` (by default
    :func:`default_out`).

    Returns ``{"summary", "aggregate", "page", "html": Path, "figures": [Path], "runs": int,
    "statuses": {status: count}}``. Raises ValueError when a path does not exist, no run is
    found, ``out`` is inside a run directory, or ``threshold`` is not in (0, 1].
    """
    tables.check_threshold(threshold)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no directories given; name one or more run directories or sweeps.")
    found = tables.find(paths)
    if not found:
        raise ValueError(
            f"no run directories below {', '.join(map(str, paths))}; a run directory holds "
            f"{record.SUMMARY} or {record.CONFIG}."
        )
    out = default_out(paths) if out is None else Path(out)
    _check_out(out)
    log.info("report runs=%d out=%s", len(found), out)

    runs = tables.Runs(found)
    summary = tables.labeled(tables.summary_table(runs, threshold))
    aggregate = tables.aggregate_table(summary)
    colors = plots.init_colors(summary["init_label"].dropna())

    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURE_FOLDER).mkdir(exist_ok=True)
    summary_path, aggregate_path = out / "summary.csv", out / "aggregate.csv"
    _write_csv(summary.drop(columns=["init_label", "setting"]), summary_path)
    _write_csv(aggregate.drop(columns=["init_label", "setting"], errors="ignore"), aggregate_path)

    drawn, skipped = {}, {}
    for name, draw, reason in _figures(runs, summary, aggregate, colors):
        target = out / FIGURE_FOLDER / f"{name}.png"
        try:
            figure = draw()
        except Exception as error:  # one figure's defect must not cost the rest of the report
            log.error("report figure=%s failed: %s: %s", name, type(error).__name__, error)
            skipped[name] = f"could not be drawn ({type(error).__name__}: {error})"
            target.unlink(missing_ok=True)
            continue
        if figure is None:
            skipped[name] = reason
            target.unlink(missing_ok=True)  # a figure of an earlier report, now without data
            log.info("report figure=%s skipped: %s", name, reason)
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        record.atomic_write_bytes(target, buffer.getvalue())
        drawn[name] = target

    content = page.build(
        summary=summary,
        aggregate=aggregate,
        figures={name: f"{FIGURE_FOLDER}/{path.name}" for name, path in drawn.items()},
        roots=[str(p) for p in paths],
        threshold=threshold,
        common=_common_config(found),
        skipped=skipped,
    )
    markdown, html = page.write(content, out)
    statuses = summary["status"].value_counts().to_dict()
    log.info("report written page=%s figures=%d statuses=%s", markdown, len(drawn), statuses)
    return {
        "summary": summary_path,
        "aggregate": aggregate_path,
        "figures": list(drawn.values()),
        "page": markdown,
        "html": html,
        "runs": len(found),
        "statuses": statuses,
    }


def _figures(runs, summary, aggregate, colors):
    """(name, draw, reason if absent) for each figure, in page order; each draws lazily so
    that a skipped figure reads nothing."""
    histograms = functools.cache(lambda: tables.representative_histograms(runs, summary))
    return [
        (
            "ranking",
            lambda: plots.plot_ranking(summary, aggregate, colors),
            "no finished training run with a test accuracy",
        ),
        (
            "convergence",
            lambda: plots.plot_convergence(tables.curves(runs, summary), colors),
            "no metrics.csv rows",
        ),
        (
            "gradient_flow",
            lambda: plots.plot_gradient_flow(tables.gradient_flow(runs, summary), colors),
            "no grad_norms.csv rows",
        ),
        (
            "layer_std",
            lambda: plots.plot_layer_std(tables.layer_moments(runs, summary), colors),
            "no distributions.csv rows",
        ),
        *[
            (
                f"histograms_{tensor}",
                lambda tensor=tensor: plots.plot_histograms(histograms(), colors, tensor),
                f"no {tensor} rows in histograms.csv",
            )
            for tensor in ("weight", "activation")
        ],
        (
            "signal_propagation",
            lambda: plots.plot_signal_propagation(tables.probe_profiles(runs, summary), colors),
            "no probe run (probe.csv)",
        ),
        ("epoch_time", lambda: plots.plot_epoch_time(summary, colors), "no run with epoch times"),
    ]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file; give a folder for the report, e.g. report/.")
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):
        if record.is_run_dir(folder):
            raise ValueError(
                f"out={out} is inside the run directory {folder}; a report never writes into a "
                "run. Choose a folder outside it, e.g. report/ or <sweep>/report."
            )


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    record.atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.6g").encode())


def _common_config(found: list[tables.Run]) -> dict[str, Any]:
    """Configuration values that every run with a readable config.yaml shares."""
    configs = [run.config for run in found if run.config]
    if not configs:
        return {}
    varying = set(tables.varying_keys(configs))
    return {key: value for key, value in configs[0].items() if key not in varying}
