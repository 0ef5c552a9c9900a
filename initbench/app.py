"""Hydra behind the CLI: compose and check configs, then launch runs (one or a sweep).

Every combination of a sweep is composed and validated *before* Hydra starts, so a typo stops
the command with one message and leaves no run directory behind. Then Hydra's own entry point
runs, with its override grammar, launchers and sweepers intact.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import initbench.config  # noqa: F401 - registers the schemas with the ConfigStore
from initbench import record, sweep  # sweep registers the ${initbench.dirname:...} resolver
from initbench.config import ConfigError, validate

log = logging.getLogger(__name__)

CONFIG_MODULE = "initbench.configs"
MAX_CHECKED_COMBINATIONS = 2000


class UsageError(ValueError):
    """Bad command-line input; the message is meant for the user as it is."""


def compose_config(overrides: list[str] | None = None, *, hydra_node: bool = False) -> DictConfig:
    """Compose the primary config with ``overrides``, outside of a run (tests, checks)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=list(overrides or []),
                           return_hydra_config=hydra_node)  # fmt: skip
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(explain(error)) from error


def explain(error: BaseException) -> str:
    """Hydra's message with the cause it wraps (the wrapped one names the type problem)."""
    parts = [str(error).strip()]
    cause = error.__cause__ or error.__context__
    while cause is not None:
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        # "$VALUE": OmegaConf's unfilled message template, which says nothing new
        if text and text not in parts[-1] and "$VALUE" not in text:
            parts.append(text)
        cause = cause.__cause__ or cause.__context__
    message = "\n".join(parts)
    # Hydra lists its search path after the valid options; users need only the options.
    return message.split("\nConfig search path:")[0]


def sweep_combinations(overrides: list[str], base: DictConfig) -> list[list[str]]:
    """The override lists a basic sweep would run, in order (Hydra's own expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + overrides
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [combination for batch in batches for combination in batch]


def search_corners(overrides: list[str], base: DictConfig) -> list[list[str]]:
    """The corners of a search space (``hydra.sweeper.params`` and the command line): every
    combination of its choices and of its intervals' ends, as override lists."""
    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + overrides
    values: dict[str, list[str]] = {}  # later arguments win, as in the sweepers
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_interval_sweep():
            interval = override.value()
            values[override.get_key_element()] = [str(interval.start), str(interval.end)]
        elif override.is_sweep_override():
            values[override.get_key_element()] = list(override.sweep_string_iterator())
        else:
            values[override.get_key_element()] = [override.get_value_element_as_str()]
    return [[f"{key}={value}" for key, value in zip(values, combination, strict=True)]
            for combination in itertools.product(*values.values())]  # fmt: skip


def check(overrides: list[str], multirun: bool) -> int:
    """Compose and validate every run the command would start; return how many."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as error:
        raise UsageError(explain(error)) from error
    if not multirun:
        cfg = compose_config(overrides, hydra_node=True)
        _validate(cfg, overrides)
        _check_writable(OmegaConf.select(cfg, "hydra.run.dir"))
        _check_not_taken(cfg, OmegaConf.select(cfg, "hydra.run.dir"))
        if OmegaConf.select(cfg, "hydra.sweeper.params"):
            log.warning("this config defines a sweep (hydra.sweeper.params, e.g. from an "
                        "experiment preset) but -m was not given: running its single default "
                        "run only; add -m to run the whole sweep")  # fmt: skip
        _check_data(cfg)
        return 1
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose_config(plain, hydra_node=True)
    _check_writable(OmegaConf.select(base, "hydra.sweep.dir"))
    sweeper = OmegaConf.select(base, "hydra.sweeper._target_") or ""
    if not sweeper.endswith("BasicSweeper"):
        # an Optuna-like sweeper picks values as it goes: check every choice and interval end
        for combination in search_corners(overrides, base)[:MAX_CHECKED_COMBINATIONS]:
            _validate(compose_config(combination), combination)
        return int(OmegaConf.select(base, "hydra.sweeper.n_trials") or 1)
    combinations = sweep_combinations(overrides, base)
    _check_distinct_directories(combinations, base)
    rerun = Path(OmegaConf.select(base, "hydra.sweep.dir")).exists()
    for combination in combinations[:MAX_CHECKED_COMBINATIONS]:
        cfg = compose_config(combination)
        _validate(cfg, combination)
        if cfg.resume == "never" or rerun:  # where Hydra will put this run: <sweep dir>/<subdir>
            job = compose_config(combination, hydra_node=True).hydra.sweep
            _check_not_taken(cfg, str(Path(job.dir) / job.subdir))
    return len(combinations)


def _check_distinct_directories(combinations: list[list[str]], base: DictConfig) -> None:
    """Refuse a sweep over a key that run directory names leave out (data.root, threads, ...):
    its runs would share one directory and overwrite each other."""
    excluded = set(OmegaConf.select(base, "hydra.job.config.override_dirname.exclude_keys") or [])
    names: dict[tuple[str, ...], list[str]] = {}
    for combination in combinations:
        kept = tuple(sorted(o for o in combination if o.split("=", 1)[0].lstrip("+~") not in
                            excluded))  # fmt: skip
        names.setdefault(kept, []).append(" ".join(combination))
    clashes = [runs for runs in names.values() if len(runs) > 1]
    if clashes:
        swept = sorted({o.split("=", 1)[0] for runs in clashes for run in runs
                        for o in run.split()} & excluded)  # fmt: skip
        raise UsageError(
            f"sweeping {', '.join(swept) or 'these keys'} would put several runs in one "
            f"directory: run directory names leave out {', '.join(sorted(excluded))}, so that a "
            "sweep can be resumed from another machine or data copy. Run one sweep per value, "
            "each with its own hydra.sweep.dir."
        )


def _validate(cfg: DictConfig, overrides: list[str]) -> None:
    try:
        validate(cfg)
    except ConfigError as error:
        where = f" (in the run with {' '.join(overrides)})" if overrides else ""
        raise UsageError(f"{error}{where}") from error


def _check_writable(directory: str | None) -> None:
    if not directory:
        return
    path = Path(directory).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write the output directory {path}: {existing} is not a writable folder. "
            "Run from a writable folder or set hydra.run.dir=... (hydra.sweep.dir=... for -m) "
            "to a folder you can write."
        )


def _check_not_taken(cfg: DictConfig, directory: str | None) -> None:
    """Refuse here, before Hydra writes its .hydra/ copies into an earlier run: resume=never
    into any run, and resume=auto into a run made with another configuration."""
    if cfg.resume == "force" or not directory:
        return
    path = Path(directory).absolute()
    summary = record.read_summary(path)
    if summary is not None or (path / "metrics.csv").exists():
        status = (summary or {}).get("status", "unknown")
        run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        differences = record.config_differences(
            path, OmegaConf.to_container(run_cfg, resolve=True)
        )
        if differences:
            from initbench.train import different_run_message

            raise UsageError(different_run_message(path, status, differences))
        if cfg.resume != "never":
            return
        raise UsageError(
            f"{path} already holds a run (status {status}); resume=never refuses to touch it. "
            "Choose another hydra.run.dir (hydra.sweep.dir for -m), or resume=auto to continue "
            "or skip it, or resume=force to start again (the old files are kept in a "
            "_previous-* folder)."
        )


def _check_data(cfg: DictConfig) -> None:
    """The dataset's path and layout (not its images), so a typo costs no run directory."""
    from initbench.data import DataError, check_source

    try:
        check_source(cfg.data, Path.cwd())
    except DataError as error:
        raise UsageError(str(error)) from error


# ----------------------------------------------------------------------------- launching


_results: list[dict[str, Any]] = []


def _task(cfg: DictConfig) -> dict[str, Any] | float:
    """The Hydra task: one run, never raising on an ordinary failure, so a sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    from initbench.train import RunDirTaken, run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except KeyboardInterrupt:
        raise
    except RunDirTaken as error:  # the directory is another run's: write nothing into it
        log.error("%s", error)
        summary = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                   "run_dir": str(run_dir), "refused": True}  # fmt: skip
    except Exception as error:  # recorded in the run's own summary and log
        log.error("run in %s failed: %s: %s", run_dir, type(error).__name__, error)
        summary = record.read_summary(run_dir)
        if summary is None or summary.get("status") == "running":
            summary = {
                **(summary or {}),
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "run_dir": str(run_dir),
            }
            record.atomic_write_json(run_dir / record.SUMMARY, summary)
    _results.append(summary)
    if sweep.is_search(HydraConfig.get()):
        return sweep.search_value(summary)  # an Optuna sweeper needs a number, not a dict
    return summary


def launch(overrides: list[str], *, multirun: bool = False, hydra_flags: list[str] = (),
           task: Callable[[DictConfig], Any] = _task) -> list[dict[str, Any]]:  # fmt: skip
    """Run Hydra's entry point as if called as ``initbench [-m] [flags] overrides``.

    Returns the summaries of the runs this process executed (a joblib or submitit launcher
    runs them elsewhere: see the sweep's ``sweep_summary.csv`` for those).
    """
    import hydra

    GlobalHydra.instance().clear()
    _results.clear()
    entry = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}",
                       config_name="config")(task)  # fmt: skip
    argv = sys.argv
    sys.argv = ["initbench", *(["--multirun"] if multirun else []), *hydra_flags, *overrides]
    try:
        entry()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return list(_results)
