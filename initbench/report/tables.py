"""The report's tables: one row per run (``summary.csv``) and one per configuration
(``aggregate.csv``), and the long tables the figures are drawn from.

Every run directory is read through :mod:`initbench.record`. Nothing here trusts a run to be
finished: a table may be missing, empty or cut in the middle of a line, ``summary.json`` may be
absent or unreadable, and each of those is noted in the run's ``note`` column, never raised.

Which runs count where:

- ``summary.csv`` lists every run found, whatever its status.
- ``aggregate.csv`` counts the *results*: runs whose status is in :data:`record.FINISHED`
  (completed or diverged), one per configuration and seed. A run whose summary cannot be read is
  ``unknown`` and is never a result; a second run of the same configuration and seed (a sweep
  started twice) is marked ``duplicate`` and left out.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from initbench import record

log = logging.getLogger(__name__)

UNKNOWN = "unknown"  # summary.json missing or unreadable: maybe running, maybe dead
ALL_STATUSES = (*record.STATUSES, UNKNOWN)
TRAIN, PROBE = "train", "probe"

# Columns every summary row has, whether or not they vary: (column, dotted config key).
IDENTITY = (
    ("model", "model.name"),
    ("init", "init.name"),
    ("optimizer", "optimizer.name"),
    ("lr", "optimizer.lr"),
    ("seed", "seed"),
)
# The figures aggregate.csv summarizes, in this order.
FIGURES = (
    "final_test_acc",
    "best_test_acc",
    "threshold_epoch",
    "final_train_loss",
    "epoch_seconds",
    "total_seconds",
    "images_per_second",
)
# The values each figure can take: its confidence interval is clipped to them (a t-interval of
# three accuracies near 0 would otherwise reach below 0%). The others are counts, losses and
# durations: never negative.
BOUNDS = {"final_test_acc": (0.0, 1.0), "best_test_acc": (0.0, 1.0)}
TEXT_COLUMNS = frozenset({"layer", "tensor", "kind"})


# ----------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path  # resolved
    shown: str  # the path as the user would write it: the given root joined with the rest
    status: str  # one of ALL_STATUSES
    kind: str  # "train" or "probe"
    config: dict[str, Any]  # flattened to dotted keys; empty when config.yaml is unreadable
    summary: dict[str, Any]  # empty when summary.json is missing or unreadable
    notes: list[str] = field(default_factory=list)


def read_table(run_dir: Path, name: str) -> tuple[pd.DataFrame | None, str]:
    """One of a run's CSV tables (``name`` as in :data:`record.TABLES`) and a note on its state.

    The frame has at least the contract's columns, numeric ones as floats. Returns ``(None,
    note)`` when the file is missing or cannot be parsed. A last line without its newline is a
    row the runner was still writing: it is dropped, because a number cut short still parses.
    """
    if name not in record.TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of: {', '.join(record.TABLES)}.")
    columns = record.TABLES[name]
    path = Path(run_dir) / f"{name}.csv"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"no {name}.csv"
    except OSError as error:
        return None, f"{name}.csv unreadable ({error.strerror})"
    note = ""
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        note = f"{name}.csv: incomplete last line dropped"
    if not data.strip():
        return _empty(columns), note or f"{name}.csv empty"
    try:
        # text columns as plain objects: pandas' own string type is slower to build and scan
        text = {column: object for column in columns if column in TEXT_COLUMNS}
        frame = pd.read_csv(io.BytesIO(data), on_bad_lines="skip", dtype=text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        return None, f"{name}.csv unreadable ({type(error).__name__})"
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    for column in frame.columns:
        if column in TEXT_COLUMNS:
            continue
        if pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].astype(float)
        else:  # text where a number belongs: a damaged row
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame, note


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=float) for column in columns})


def load_run(path: Path, shown: str) -> Run:
    notes: list[str] = []
    summary_path = path / record.SUMMARY
    summary = record.read_summary(path)
    if summary is None or not isinstance(summary, dict):
        status = UNKNOWN
        notes.append("summary.json unreadable" if summary_path.exists() else "no summary.json")
        summary = {}
    else:
        status = summary.get("status")
        if status not in record.STATUSES:
            notes.append(f"summary.json has status {status!r}")
            status = UNKNOWN
    config: dict[str, Any] = {}
    try:
        loaded = yaml.safe_load((path / record.CONFIG).read_text())
        if isinstance(loaded, Mapping):
            config = record.flatten(loaded)
        else:
            notes.append("config.yaml is not a mapping")
    except FileNotFoundError:
        notes.append("no config.yaml")
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        notes.append("config.yaml unreadable")
    kind = summary.get("kind")
    if kind not in (TRAIN, PROBE):
        kind = PROBE if (path / "probe.csv").exists() else TRAIN
    return Run(path, shown, status, kind, config, summary, notes)


def find(paths: Iterable[Path]) -> list[Run]:
    """Every run at or below ``paths``, each once, sorted by the path shown."""
    roots = [Path(p) for p in paths]
    missing = [str(p) for p in roots if not p.exists()]
    if missing:
        raise ValueError(
            f"no such directory: {', '.join(missing)}; give run directories or folders that "
            "hold them (outputs/, multirun/)."
        )
    runs = []
    for path in record.find_runs(roots):
        runs.append(load_run(path, _shown(path, roots)))
    return sorted(runs, key=lambda run: run.shown)


def _shown(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            rest = path.relative_to(root.resolve())
        except ValueError:
            continue
        return str(root / rest) if rest.parts else str(root)
    return str(path)


class Runs:
    """The runs of one report, with their tables read once and cached."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        self.by_path = {run.shown: run for run in runs}
        self._tables: dict[tuple[str, str], pd.DataFrame | None] = {}

    def table(self, run: Run, name: str) -> pd.DataFrame | None:
        key = (run.shown, name)
        if key not in self._tables:
            frame, note = read_table(run.path, name)
            if note and (frame is not None or name in _EXPECTED.get(run.kind, ())):
                run.notes.append(note)
            self._tables[key] = frame
        return self._tables[key]

    def drop(self, name: str) -> None:
        """Forget the cached copies of one table (histograms are large and read once)."""
        for key in [key for key in self._tables if key[1] == name]:
            del self._tables[key]


# A missing table is worth a note only where the run should have written it.
_EXPECTED = {TRAIN: ("metrics",), PROBE: ("probe",)}


# ----------------------------------------------------------------------------- summary


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every config (absent counts as a value).

    Configs that are empty (config.yaml unreadable) are left out of the comparison.
    """
    configs = [config for config in configs if config]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    varying = []
    for key in keys:
        values = {_hashable(config.get(key, _ABSENT)) for config in configs}
        if len(values) > 1:
            varying.append(key)
    return varying


_ABSENT = "<absent>"


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def summary_table(runs: Runs, threshold: float) -> pd.DataFrame:
    """One row per run: identity, the configuration that varies, status and figures."""
    check_threshold(threshold)
    varying = [
        key
        for key in varying_keys([run.config for run in runs.runs])
        if key not in record.EXECUTION_KEYS and key not in dict(IDENTITY).values()
    ]
    rows = []
    for run in runs.runs:
        row: dict[str, Any] = {}
        for column, key in IDENTITY:
            value = run.config.get(key, run.summary.get(column))
            row[column] = value
        for key in varying:
            row[key] = run.config.get(key)
        row["kind"] = run.kind
        row["status"] = run.status
        row.update(_figures(runs, run, threshold))
        row["note"] = ""  # filled below, after the tables have added theirs
        row["path"] = run.shown
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    _mark_duplicates(frame, varying)
    frame["note"] = [
        "; ".join(note for note in dict.fromkeys([*runs.by_path[path].notes, extra]) if note)
        for path, extra in zip(frame["path"], frame["note"], strict=True)
    ]
    frame.attrs["varying"] = varying
    frame.attrs["threshold"] = threshold
    return frame


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ValueError(
            f"threshold={threshold!r} is not an accuracy; give a fraction in (0, 1], e.g. 0.5 "
            "for 50% test accuracy."
        )


def _figures(runs: Runs, run: Run, threshold: float) -> dict[str, Any]:
    """The headline numbers of one run: summary.json's where it has them, otherwise what
    metrics.csv says so far (a run still going, or one whose summary is unreadable)."""
    summary = run.summary
    metrics = runs.table(run, "metrics") if run.kind == TRAIN else None
    derived: dict[str, Any] = {}
    if metrics is not None and len(metrics):
        tested = metrics.dropna(subset=["test_acc"])
        losses = metrics["train_loss"].dropna()
        derived["final_train_loss"] = losses.iloc[-1] if len(losses) else np.nan
        derived["epochs_completed"] = metrics["epoch"].max()
        # all images over all training seconds, as summary.json has it
        timed = metrics[["images_per_second", "epoch_seconds"]].dropna()
        timed = timed[np.isfinite(timed).all(axis=1) & (timed["epoch_seconds"] > 0)]
        seconds = timed["epoch_seconds"].sum()
        derived["images_per_second"] = (
            (timed["images_per_second"] * timed["epoch_seconds"]).sum() / seconds
            if seconds > 0 else np.nan
        )  # fmt: skip
        if len(tested):
            derived["final_test_acc"] = tested["test_acc"].iloc[-1]
            best = tested["test_acc"].idxmax()
            derived["best_test_acc"] = tested.loc[best, "test_acc"]
            derived["best_epoch"] = tested.loc[best, "epoch"]
            reached = tested[tested["test_acc"] >= threshold]
            derived["threshold_epoch"] = reached["epoch"].iloc[0] if len(reached) else np.nan
            if tested["test_acc"].max() > 1:
                log.warning(
                    "run=%s test_acc=%.4g is above 1: the threshold %.3g compares with a "
                    "fraction, not a percentage",
                    run.shown,
                    tested["test_acc"].max(),
                    threshold,
                )
        seconds = metrics["epoch_seconds"][metrics["epoch"] > 0].dropna()
        derived["epoch_seconds"] = seconds.median() if len(seconds) else np.nan

    def pick(key: str) -> Any:
        value = summary.get(key)
        return derived.get(key, np.nan) if value is None else value

    divergence = summary.get("divergence") or {}
    if not isinstance(divergence, Mapping):
        divergence = {}
    figures = {
        "final_test_acc": pick("final_test_acc"),
        "best_test_acc": pick("best_test_acc"),
        "best_epoch": pick("best_epoch"),
        "threshold": threshold,
        "threshold_epoch": derived.get("threshold_epoch", np.nan),
        "final_train_loss": pick("final_train_loss"),
        "epochs_completed": pick("epochs_completed"),
        "epoch_seconds": derived.get("epoch_seconds", np.nan),
        "total_seconds": pick("total_seconds"),
        "images_per_second": pick("images_per_second"),
        "divergence_epoch": divergence.get("epoch"),
        "divergence_layer": divergence.get("layer"),
        "device": summary.get("device"),
        "torch_version": summary.get("torch_version"),
        "cuda_version": summary.get("cuda_version"),
        "git_revision": summary.get("git_revision"),
        "started_at": summary.get("started_at"),
        "finished_at": summary.get("finished_at"),
    }
    if not math.isfinite(_float(figures["epoch_seconds"])):
        # no epoch_seconds column: the run's average, when it can be told
        total, epochs = _float(figures["total_seconds"]), _float(figures["epochs_completed"])
        if math.isfinite(total) and epochs > 0:
            figures["epoch_seconds"] = total / epochs
    if run.status in ("failed", "interrupted") and summary.get("error"):
        run.notes.append(f"error: {str(summary['error']).splitlines()[0][:200]}")
    return figures


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mark_duplicates(frame: pd.DataFrame, varying: list[str]) -> None:
    """Add ``duplicate``, ``result`` (finished and not a duplicate) and ``in_aggregate`` (a
    result of a training run). Two runs with the same configuration and seed are one result:
    the finished one, then the later one, counts."""
    keys = ["kind", *[column for column, _ in IDENTITY], *varying]
    finished = frame["status"].isin(record.FINISHED)
    order = pd.DataFrame(
        {
            "finished": finished,
            "time": [
                _timestamp(a, b)
                for a, b in zip(frame["finished_at"], frame["started_at"], strict=True)
            ],
        }
    )
    ranked = frame.assign(_finished=order["finished"], _time=order["time"]).sort_values(
        ["_finished", "_time", "path"], ascending=[False, False, True]
    )
    first = ranked.groupby([_key(ranked[key]) for key in keys], dropna=False, sort=False)[
        "path"
    ].transform("first")
    duplicate_of = first.reindex(frame.index)
    frame["duplicate"] = duplicate_of != frame["path"]
    frame.loc[frame["duplicate"], "note"] = "duplicate of " + duplicate_of[frame["duplicate"]]
    frame["result"] = finished & ~frame["duplicate"]
    frame["in_aggregate"] = frame["result"] & (frame["kind"] == TRAIN)
    for path in frame.loc[frame["duplicate"], "path"]:
        log.info("run=%s duplicate=true: same configuration and seed as another run", path)


def _key(column: pd.Series) -> pd.Series:
    """A column fit to group on: missing values and lists compare as text."""
    return column.map(lambda value: "" if _is_missing(value) else str(value))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _timestamp(*values: Any) -> float:
    for value in values:
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return -math.inf


# ----------------------------------------------------------------------------- aggregate


@functools.lru_cache(maxsize=512)
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with ``df`` degrees of freedom.

    With x = sqrt(df) tan(theta) the t density becomes c cos(theta)^(df - 1) on [0, pi/2), a
    smooth, bounded integrand; the CDF is integrated with Simpson's rule and inverted by
    bisection. (scipy would do it in one call, but is not a dependency of the package.)
    Accurate to about 1e-9 for df >= 1; tested against scipy.
    """
    if not 0.5 <= probability < 1:
        raise ValueError(f"probability={probability} must be in [0.5, 1) for a two-sided CI.")
    if df < 1:
        raise ValueError(f"df={df} must be >= 1.")
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    target = probability - 0.5

    def mass(theta: float) -> float:  # P(0 <= T <= sqrt(df) tan(theta))
        grid = np.linspace(0.0, theta, 2049)
        values = np.cos(grid) ** (df - 1)
        step = theta / 2048
        return (
            scale
            * step
            / 3
            * (values[0] + values[-1] + 4 * values[1:-1:2].sum() + 2 * values[2:-1:2].sum())
        )

    low, high = 0.0, math.pi / 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if mass(middle) < target else (low, middle)
    return math.sqrt(df) * math.tan((low + high) / 2)


def describe(values: Iterable[float], bounds: tuple[float, float] = (0.0, math.inf)
             ) -> dict[str, float]:  # fmt: skip
    """Mean, sample std, count and the 95% t-interval of the mean of the finite values, the
    interval clipped to ``bounds``, the values the quantity can take.

    With fewer than two values the std and the interval are NaN: one run says nothing about
    the spread.
    """
    array = np.asarray([v for v in values if v is not None], dtype=float)
    array = array[np.isfinite(array)]
    n = len(array)
    mean = float(array.mean()) if n else np.nan
    std = float(array.std(ddof=1)) if n > 1 else np.nan
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n) if n > 1 else np.nan
    low, high = bounds
    return {"mean": mean, "std": std, "n": n, "ci95_low": max(mean - half, low),
            "ci95_high": min(mean + half, high)}  # fmt: skip


def aggregate_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Runs grouped by everything but the seed: per figure mean, std, n and 95% CI, plus the
    number of runs of each status (all runs of the group, results or not)."""
    if summary.empty:
        return pd.DataFrame()
    train = summary[(summary["kind"] == TRAIN) & ~summary["duplicate"]]
    if train.empty:
        return pd.DataFrame()
    varying = varying_keys_of(train, summary.attrs.get("varying", []))
    keys = [column for column, _ in IDENTITY if column != "seed"] + varying
    rows = []
    groups = train.groupby([_key(train[key]) for key in keys], dropna=False, sort=False)
    for _, group in groups:
        row = {key: group[key].iloc[0] for key in keys}
        for label in ("init_label", "setting"):  # for the figures; not written to the CSV
            if label in group:
                row[label] = group[label].iloc[0]
        row["runs"] = len(group)
        for status in ALL_STATUSES:
            row[f"n_{status}"] = int((group["status"] == status).sum())
        results = group[group["in_aggregate"]]
        row["seeds"] = " ".join(str(_seed(seed)) for seed in sorted(results["seed"].dropna()))
        row["reached_threshold"] = int(results["threshold_epoch"].notna().sum())
        for figure in FIGURES:
            bounds = BOUNDS.get(figure, (0.0, math.inf))
            for stat, value in describe(results[figure], bounds).items():
                row[f"{figure}_{stat}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(
        "final_test_acc_mean", ascending=False, na_position="last", kind="stable"
    ).reset_index(drop=True)
    frame.attrs["keys"] = keys
    return frame


def varying_keys_of(frame: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """The candidate columns whose values are not all the same within ``frame``."""
    return [key for key in candidates if _key(frame[key]).nunique() > 1]


def _seed(value: Any) -> Any:
    number = _float(value)
    return int(number) if number.is_integer() else value


# ----------------------------------------------------------------------------- labels


def add_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``init_label`` (the initializer, with the options that tell two of its variants
    apart) and ``setting`` (what else varies, e.g. ``model=resnet, lr=0.1``; empty when all
    runs share one setting). A key of a named group (``model.width``) is named only where it
    varies between runs that share the group's name: an MLP has no ``model.blocks``, so the
    key differs between an MLP and a ResNet without saying anything the model name does not.
    """
    frame = frame.copy()
    candidates = [c for c in frame.columns if "." in c]
    init_keys = [c for c in candidates if c.startswith("init.")]
    other_keys = [c for c in candidates if not c.startswith("init.")]
    frame["init_label"] = _compose(frame, "init", init_keys)
    shown = [
        column for column in ("model", "optimizer", "lr") if _key(frame[column]).nunique() > 1
    ]
    parts = [frame[column].map(lambda v, c=column: f"{c}={_text(v)}") for column in shown]
    for key in other_keys:
        group = key.split(".")[0]
        name_column = {"model": "model", "optimizer": "optimizer"}.get(group)
        if _varies_within(frame, key, name_column):
            short = key.split(".", 1)[1] if group in ("model", "optimizer") else key
            parts.append(frame[key].map(lambda v, s=short: f"{s}={_text(v)}"))
    if parts:
        frame["setting"] = [
            ", ".join(p for p in row if not p.endswith("=")) for row in zip(*parts, strict=True)
        ]
    else:
        frame["setting"] = ""
    return frame


def _compose(frame: pd.DataFrame, name_column: str, keys: list[str]) -> pd.Series:
    shown = [key for key in keys if _varies_within(frame, key, name_column)]
    labels = frame[name_column].map(_text)
    for key in shown:
        option = key.split(".", 1)[1]
        labels = labels + frame[key].map(
            lambda v, o=option: "" if _is_missing(v) else f" {o}={_text(v)}"
        )
    return labels


def _varies_within(frame: pd.DataFrame, key: str, name_column: str | None) -> bool:
    if key not in frame or key in record.EXECUTION_KEYS:
        return False
    values = _key(frame[key])
    if name_column is None:
        return values.nunique() > 1
    return bool((values.groupby(_key(frame[name_column])).nunique() > 1).any())


def _text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def labeled(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``init_label`` and ``setting``, computed among runs of the same kind."""
    if summary.empty:
        return summary.assign(init_label=pd.Series(dtype=str), setting=pd.Series(dtype=str))
    parts = [add_labels(part) for _, part in summary.groupby("kind", sort=False)]
    return pd.concat(parts).loc[summary.index]


# ----------------------------------------------------------------------------- figure data
# Long tables, one row per point drawn, each with the run's ``path``, ``init_label``,
# ``setting`` and ``status``. The convergence curves show every run, marked by status; the
# other figures average over results only (finished, not duplicates), like aggregate.csv.


def _runs_of(
    runs: Runs, summary: pd.DataFrame, kind: str, *, results: bool = True
) -> list[tuple[Run, pd.Series]]:
    chosen = summary[(summary["kind"] == kind) & ~summary["duplicate"]]
    if results:
        chosen = chosen[chosen["result"]]
    return [(runs.by_path[row["path"]], row) for _, row in chosen.iterrows()]


def _tag(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    return frame.assign(
        path=row["path"],
        init_label=row["init_label"],
        setting=row["setting"],
        status=row["status"],
        seed=row["seed"],
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every training run, finished or not: epoch, train_loss, test_acc,
    epoch_seconds."""
    frames = []
    for run, row in _runs_of(runs, summary, TRAIN, results=False):
        metrics = runs.table(run, "metrics")
        if metrics is not None and len(metrics):
            columns = ["epoch", "train_loss", "test_acc", "epoch_seconds"]
            frames.append(_tag(metrics[columns], row))
    return _concat(frames)


def weighted_layers(runs: Runs, run: Run) -> list[str]:
    """The run's Linear/Conv/recurrent modules in model order, as distributions.csv names
    them; empty when the run has no distributions.csv."""
    moments = runs.table(run, "distributions")
    if moments is None or not len(moments):
        return []
    return _in_order(moments["layer"])


def _in_order(names: pd.Series) -> list[str]:
    """The distinct values in order of first appearance (the model's order)."""
    values = pd.unique(names.to_numpy(dtype=object))
    return [str(name) for name in values if isinstance(name, str)]


def plain_parameter_name(name: str) -> str:
    """The name a parameter has without a parametrization: under ``init.spectral_norm=true``,
    ``hidden.0.parametrizations.weight.original`` is ``hidden.0.weight``."""
    return re.sub(r"\.parametrizations\.([^.]+)\.original\d*$", r".\1", name)


def _is_layer_weight(name: str, modules: set[str]) -> bool:
    """Whether a parameter is the weight of a Linear/Conv/recurrent layer (not a bias, not a
    normalization scale). Without distributions.csv to say which modules those are, the name
    decides: the last part starts with ``weight`` and the module is not named like a norm."""
    module, _, leaf = name.rpartition(".")
    if not leaf.startswith("weight"):
        return False
    if modules:
        return module in modules
    return not re.search(r"(^|\.)(bn|ln|gn|norm|batchnorm|layernorm)[^.]*$", module)


def gradient_flow(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    """grad_norms.csv of every training run at three points: the first logged step
    (initialization), the last logged step of the first epoch, and the last logged step.
    Only the weights of Linear/Conv/recurrent layers, numbered by ``depth`` in model order."""
    frames = []
    for run, row in _runs_of(runs, summary, TRAIN):
        norms = runs.table(run, "grad_norms")
        if norms is None or not len(norms):
            continue
        norms = norms.assign(layer=norms["layer"].map(plain_parameter_name))
        modules = set(weighted_layers(runs, run))
        names = _in_order(norms["layer"])
        kept = [name for name in names if _is_layer_weight(name, modules)] or names
        # plain arrays: this loop runs once per run, and pandas' per-call cost adds up
        step_of = norms["step"].to_numpy(dtype=float)
        layer_of = norms["layer"].to_numpy(dtype=object)
        depth_of = pd.Index(kept).get_indexer(layer_of)  # -1: not kept
        steps = np.unique(step_of[np.isfinite(step_of)])
        if not len(steps):
            continue
        points = {"initialization": steps[0]}
        metrics = runs.table(run, "metrics")
        if metrics is not None and len(metrics) and metrics["step"].notna().any():
            first_epoch_end = metrics["step"].dropna().iloc[0]
            early = steps[steps <= first_epoch_end]
            if len(early) and early[-1] != steps[0] and early[-1] != steps[-1]:
                points["end of epoch 1"] = early[-1]
        if steps[-1] != steps[0]:
            points["last logged"] = steps[-1]
        chosen = [np.flatnonzero((step_of == step) & (depth_of >= 0)) for step in points.values()]
        rows = np.concatenate(chosen)
        frame = pd.DataFrame(
            {
                "step": step_of[rows],
                "layer": layer_of[rows],
                "grad_norm": norms["grad_norm"].to_numpy(dtype=float)[rows],
                "depth": depth_of[rows],
                "point": np.repeat(list(points), [len(index) for index in chosen]),
            }
        )
        frames.append(_tag(frame, row))
    runs.drop("grad_norms")  # read by this figure only
    return _common_steps(_concat(frames))


def _common_steps(flow: pd.DataFrame) -> pd.DataFrame:
    """Within a setting, a later point compares runs at the same step: the step most runs
    share. A run that stopped elsewhere (diverged, still going) is left out of that point."""
    if flow.empty:
        return flow
    keep = pd.Series(True, index=flow.index)
    for (_, point), part in flow.groupby(["setting", "point"], sort=False):
        if point == "initialization":
            continue
        steps = part.drop_duplicates("path")["step"]
        common = steps.mode().max()
        left_out = part.loc[part["step"] != common, "path"].unique()
        if len(left_out):
            log.info(
                "gradient flow: point=%r step=%d leaves out %d run(s) that stopped elsewhere",
                point,
                common,
                len(left_out),
            )
        keep[part.index[part["step"] != common]] = False
    return flow[keep]


def layer_moments(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    """distributions.csv of every training run at initialization (the first epoch recorded,
    normally 0) and after training (the last), numbered by ``depth`` in model order."""
    frames = []
    for run, row in _runs_of(runs, summary, TRAIN):
        moments = runs.table(run, "distributions")
        if moments is None or not len(moments) or moments["epoch"].isna().all():
            continue
        epoch_of = moments["epoch"].to_numpy(dtype=float)
        first, last = np.nanmin(epoch_of), np.nanmax(epoch_of)
        chosen = epoch_of == first if last == first else (epoch_of == first) | (epoch_of == last)
        at = moments[chosen]
        columns = ["epoch", "layer", "tensor", "std", "zero_fraction", "saturated_fraction"]
        frame = at[columns].assign(
            point=np.where(at["epoch"].to_numpy() == first, "initialization", "after training"),
            depth=pd.Index(weighted_layers(runs, run)).get_indexer(at["layer"]),
        )
        frames.append(_tag(frame, row))
    return _concat(frames)


def representative_histograms(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    """Histograms of three layers (the first, the middle and the last) at initialization and
    after training, from one run per initializer and setting: its completed run with the
    lowest seed (a diverged one when none completed). Only those runs' histograms.csv is
    read."""
    chosen = summary[summary["in_aggregate"]].copy()
    if chosen.empty:
        return pd.DataFrame()
    chosen["_diverged"] = chosen["status"] != "completed"
    chosen["_seed"] = pd.to_numeric(chosen["seed"], errors="coerce")
    chosen = chosen.sort_values(["_diverged", "_seed", "path"])
    frames = []
    for _, row in chosen.groupby(["setting", "init_label"], sort=False).head(1).iterrows():
        run = runs.by_path[row["path"]]
        histograms = runs.table(run, "histograms")
        runs.drop("histograms")
        if histograms is None or not len(histograms):
            continue
        histograms = histograms.dropna(subset=["epoch", "count"])
        # the exact std of each tensor, from distributions.csv (the bins cannot give it: they
        # stay those of initialization, and a distribution that shrank fills one or two)
        moments = runs.table(run, "distributions")
        exact = {} if moments is None else {
            (layer, tensor, epoch): std for layer, tensor, epoch, std in
            moments[["layer", "tensor", "epoch", "std"]].itertuples(index=False)
        }  # fmt: skip
        first, last = histograms["epoch"].min(), histograms["epoch"].max()
        points = {"initialization": first} | ({"after training": last} if last != first else {})
        for tensor, of_tensor in histograms.groupby("tensor", sort=False):
            layers = _in_order(of_tensor.loc[of_tensor["epoch"] == first, "layer"])
            if not layers:
                continue
            positions = {
                "first": layers[0],
                "middle": layers[len(layers) // 2],
                "last": layers[-1],
            }
            for position, layer in positions.items():
                for point, epoch in points.items():
                    at = of_tensor[(of_tensor["layer"] == layer) & (of_tensor["epoch"] == epoch)]
                    columns = ["bin_low", "bin_high", "count"]
                    frames.append(
                        _tag(at[columns], row).assign(
                            tensor=tensor, layer=layer, position=position, point=point,
                            std=exact.get((layer, tensor, epoch), np.nan),
                        )
                    )  # fmt: skip
    return _concat(frames)


def probe_profiles(runs: Runs, summary: pd.DataFrame) -> pd.DataFrame:
    """probe.csv of every probe run: activation and gradient std per layer by depth."""
    frames = []
    for run, row in _runs_of(runs, summary, PROBE):
        probe = runs.table(run, "probe")
        if probe is not None and len(probe):
            columns = ["layer", "depth", "activation_std", "grad_std"]
            frames.append(_tag(probe[columns], row))
    return _concat(frames)
