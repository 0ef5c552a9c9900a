"""The report page: every table and figure in one file, with the setup that produced them.

The page is built once as a list of blocks and rendered twice: ``report.md`` (GitHub-flavoured
Markdown) and ``report.html`` (self-contained but for the PNGs, which it links relatively).
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from initbench.report import tables

# What each figure answers, in the order the page shows them.
FIGURE_CAPTIONS = {
    "ranking": "Which initializer ends best? Final test accuracy of each configuration: the "
    "mean over seeds (large dot) with its 95% t-interval (bar; none when there is one run), "
    "every counted run (small dots, crosses for diverged runs).",
    "convergence": "How fast does each initializer learn? Train loss (log scale) and test "
    "accuracy per epoch: the mean over completed seeds (line) and their min–max (band); a "
    "diverged run is dotted and ends with a cross, an unfinished run is dashed.",
    "gradient_flow": "Do gradients vanish or explode with depth? The gradient norm of each "
    "layer's weight (log scale) at the first logged step, at the end of the first epoch and at "
    "the last logged step most runs share (a run that stopped elsewhere, e.g. diverged, is left "
    "out of that panel); geometric mean over finished seeds, band min–max.",
    "layer_std": "Does the scale of weights and activations hold with depth? Standard deviation "
    "per layer (log scale) at initialization and after training; geometric mean over finished "
    "seeds.",
    "histograms_weight": "Weight histograms of the first, middle and last layer, one row per "
    "initializer (one run each, its lowest finished seed): at initialization (filled) and "
    "after training (line).",
    "histograms_activation": "Activation histograms of the first, middle and last layer, as "
    "above (each layer's output after its nonlinearity; the classifier's logits).",
    "signal_propagation": "Does the signal survive the depth at initialization? Activation std "
    "(forward) and gradient std (backward) per layer from probe runs; geometric mean over "
    "finished seeds.",
    "epoch_time": "What does each configuration cost? Seconds per epoch: each run's median over "
    "its epochs (small dots) and the mean over runs (large dot).",
}


@dataclass
class Page:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, frame: pd.DataFrame, *, folded: str | None = None) -> None:
        self.blocks.append(("table", (frame, folded)))

    def image(self, path: str, caption: str) -> None:
        self.blocks.append(("image", (path, caption)))


# ----------------------------------------------------------------------------- content


def build(
    *,
    summary: pd.DataFrame,
    aggregate: pd.DataFrame,
    figures: dict[str, str],
    roots: Sequence[str],
    threshold: float,
    common: dict[str, Any],
    skipped: dict[str, str],
) -> Page:
    """The page's content. ``figures`` maps a figure's name to its path relative to the page;
    ``common`` holds the configuration values every run shares; ``skipped`` maps a figure
    left out to the reason."""
    page = Page("initbench report")
    train = summary[summary["kind"] == tables.TRAIN] if len(summary) else summary
    page.text(
        f"{len(summary)} runs found below {', '.join(f'`{root}`' for root in roots)}: "
        + _counts(summary["status"] if len(summary) else [])
        + ". Tables: [summary.csv](summary.csv) (one row per run), "
        "[aggregate.csv](aggregate.csv) (one row per configuration, over seeds)."
    )

    page.heading("Setup")
    page.text(_setup(summary, train))
    varying = summary.attrs.get("varying", [])
    if varying:
        page.text("Varies across runs: " + ", ".join(f"`{key}`" for key in varying) + ".")
    if common:
        frame = pd.DataFrame({"key": list(common), "value": [_cell(v) for v in common.values()]})
        page.table(frame, folded=f"Configuration shared by every run ({len(common)} values)")

    page.heading("Results")
    if len(aggregate):
        page.text(
            "One row per configuration; a figure is the mean ± sample std over the runs counted "
            "(completed or diverged, one per seed), with the 95% confidence interval of the mean "
            "(t distribution, kept within 0–100% for accuracies; empty with one run). "
            f"*Epoch to threshold*: the first epoch whose test accuracy reached {threshold:g}, "
            "averaged over the runs that reached it (*reached* says how many)."
        )
        page.table(_results(aggregate))
    else:
        page.text("No finished training run yet, so there is nothing to aggregate.")

    page.heading("Figures")
    for name, caption in FIGURE_CAPTIONS.items():
        if name in figures:
            page.image(figures[name], caption)
    if skipped:
        page.text(
            "Not drawn: " + "; ".join(f"{name} ({reason})" for name, reason in skipped.items())
        )

    page.heading("Runs")
    below = _common_folder(summary["path"]) if len(summary) > 1 else ""
    if below:
        page.text(f"Paths below `{below}`.")
    unfinished = summary[~summary["status"].isin(("completed",))] if len(summary) else summary
    if len(unfinished):
        page.text("Runs that did not complete:")
        page.table(_run_rows(unfinished, below))
    page.table(_run_rows(summary, below), folded=f"Every run ({len(summary)})")
    return page


def _counts(values) -> str:
    counts = Counter(values)
    order = [status for status in tables.ALL_STATUSES if counts.get(status)]
    return ", ".join(f"{counts[status]} {status}" for status in order) or "none"


def _setup(summary: pd.DataFrame, train: pd.DataFrame) -> str:
    if summary.empty:
        return "No runs."
    lines = [
        f"Runs: {len(train)} training, {len(summary) - len(train)} probe; "
        f"statuses: {_counts(summary['status'])}."
    ]
    for column, name in (
        ("device", "Devices"),
        ("torch_version", "torch"),
        ("cuda_version", "CUDA"),
        ("git_revision", "git revisions"),
    ):
        if column in summary and summary[column].notna().any():
            lines.append(f"{name}: {_counts_of(summary[column])}.")
    started = pd.to_datetime(summary["started_at"], errors="coerce", utc=True).dropna()
    finished = pd.to_datetime(summary["finished_at"], errors="coerce", utc=True).dropna()
    if len(started):
        last = f" to {finished.max():%Y-%m-%d %H:%M} UTC" if len(finished) else ""
        lines.append(f"Started from {started.min():%Y-%m-%d %H:%M} UTC{last}.")
    return " ".join(lines)


def _counts_of(column: pd.Series) -> str:
    counts = Counter(str(value) for value in column.dropna())
    return ", ".join(f"`{value}` ×{count}" for value, count in counts.most_common())


def _results(aggregate: pd.DataFrame) -> pd.DataFrame:
    keys = aggregate.attrs.get("keys", [])
    frame = pd.DataFrame({key: aggregate[key].map(_cell) for key in keys if key in aggregate})
    frame["runs"] = aggregate["runs"]
    frame["counted"] = aggregate["final_test_acc_n"]
    frame["final acc %"] = [
        _estimate(row, "final_test_acc", 100) for _, row in aggregate.iterrows()
    ]
    frame["best acc %"] = [_estimate(row, "best_test_acc", 100) for _, row in aggregate.iterrows()]
    frame["epoch to threshold"] = [
        _estimate(row, "threshold_epoch", 1, ci=False) for _, row in aggregate.iterrows()
    ]
    frame["reached"] = aggregate["reached_threshold"]
    frame["s / epoch"] = [
        _estimate(row, "epoch_seconds", 1, ci=False) for _, row in aggregate.iterrows()
    ]
    frame["diverged"] = aggregate["n_diverged"]
    return frame


def _estimate(row: pd.Series, figure: str, scale: float, ci: bool = True) -> str:
    mean, std = row[f"{figure}_mean"], row[f"{figure}_std"]
    if not math.isfinite(mean):
        return ""
    text = f"{mean * scale:.2f}"
    if math.isfinite(std):
        text += f" ± {std * scale:.2f}"
        low, high = row[f"{figure}_ci95_low"], row[f"{figure}_ci95_high"]
        if ci and math.isfinite(low):
            text += f" [{low * scale:.2f}, {high * scale:.2f}]"
    return text


def _run_rows(summary: pd.DataFrame, below: str) -> pd.DataFrame:
    columns = ["path", "status", "init", "seed", *summary.attrs.get("varying", [])]
    columns = [column for column in dict.fromkeys(columns) if column in summary]
    frame = summary[columns].map(_cell)
    if below:
        frame["path"] = [str(Path(path).relative_to(below)) for path in frame["path"]]
    frame["final acc %"] = summary["final_test_acc"].map(lambda v: _cell(_scaled(v)))
    frame["epochs"] = summary["epochs_completed"].map(_cell)
    frame["note"] = summary["note"].map(_cell)
    return frame


def _common_folder(paths: pd.Series) -> str:
    """The folder every path lies below, or "" when they share none."""
    try:
        common = os.path.commonpath(list(paths))
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if common in ("", ".", os.sep) or common in set(paths) else common


def _scaled(value: Any) -> Any:
    try:
        return round(float(value) * 100, 2)
    except (TypeError, ValueError):
        return value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ----------------------------------------------------------------------------- rendering


def to_markdown(page: Page) -> str:
    lines = [f"# {page.title}", ""]
    for kind, content in page.blocks:
        if kind == "heading":
            level, text = content
            lines += ["#" * level + " " + text, ""]
        elif kind == "text":
            lines += [content, ""]
        elif kind == "image":
            path, caption = content
            lines += [f"![{_first_sentence(caption)}]({path})", "", f"*{caption}*", ""]
        elif kind == "table":
            frame, folded = content
            body = _markdown_table(frame)
            if folded:
                lines += [
                    f"<details><summary>{html.escape(folded)}</summary>",
                    "",
                    *body,
                    "",
                    "</details>",
                    "",
                ]
            else:
                lines += [*body, ""]
    return "\n".join(lines)


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    def cell(value: Any) -> str:
        return _cell(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return [header, rule, *rows]


def _first_sentence(caption: str) -> str:
    return caption.split("?")[0] + "?" if "?" in caption else caption.split(".")[0]


def to_html(page: Page) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(page.title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
        "padding:0 1em;line-height:1.45}table{border-collapse:collapse;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        "img{max-width:100%;border:1px solid #eee}figcaption{color:#444;margin-bottom:2em}"
        "code{background:#f4f4f4;padding:0 3px}</style>",
        f"</head><body><h1>{html.escape(page.title)}</h1>",
    ]
    for kind, content in page.blocks:
        if kind == "heading":
            level, text = content
            parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        elif kind == "text":
            parts.append(f"<p>{_inline(content)}</p>")
        elif kind == "image":
            path, caption = content
            parts.append(
                f'<figure><a href="{html.escape(path)}"><img src="{html.escape(path)}" '
                f'alt="{html.escape(_first_sentence(caption))}"></a>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        elif kind == "table":
            frame, folded = content
            table = _html_table(frame)
            if folded:
                table = f"<details><summary>{html.escape(folded)}</summary>{table}</details>"
            parts.append(table)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """The few Markdown marks the page uses: `code`, *emphasis* and [links](target)."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', escaped)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", escaped)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def write(page: Page, out: Path) -> tuple[Path, Path]:
    """Write report.md and report.html into ``out``; return their paths."""
    from initbench import record

    markdown, page_html = Path(out) / "report.md", Path(out) / "report.html"
    record.atomic_write_bytes(markdown, to_markdown(page).encode())
    record.atomic_write_bytes(page_html, to_html(page).encode())
    return markdown, page_html
