"""The command line: Typer parses, Hydra composes, plain functions do the work.

initbench run [-m] [OVERRIDES...]      train (one run, or a sweep with -m)
initbench probe [-m] [OVERRIDES...]    signal propagation at initialization, no training
initbench report DIR [DIR...]          tables and plots from finished runs
initbench list                         config groups, their choices, the initializers
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from importlib import resources
from pathlib import Path

import typer

from initbench.app import UsageError

EXIT_FAILED_RUN = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

GROUP_HELP = {
    "model": "the network: MLP, small CNN, deep ResNet (norm: batch|none), LSTM, plain deep CNN",
    "init": "the weight initializer (biases: init.bias)",
    "optimizer": "optimizer and learning-rate schedule",
    "data": "cifar10 (torchvision download or data.root=local copy) or synthetic",
    "experiment": "ready-made comparisons (use with -m)",
}
# Hydra flags that take a value; everything else not starting with '-' is an override.
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp",
                          "--config-name", "-cn", "--config-dir", "-cd",
                          "--experimental-rerun"}  # fmt: skip
HYDRA_INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--resolve",
                    "--shell-completion", "-sc"}  # fmt: skip


def group_choices() -> dict[str, list[str]]:
    """Each config group and its choices, read from the installed package's configs."""
    root = resources.files("initbench.configs")
    groups = {}
    for group in GROUP_HELP:
        folder = root / group
        if folder.is_dir():
            groups[group] = sorted(
                p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")
            )
    return groups


def groups_help() -> str:
    lines = ["Config groups (choose with GROUP=CHOICE; change one value with GROUP.KEY=VALUE):"]
    for group, choices in group_choices().items():
        lines.append(f"  {group}: {', '.join(choices)}  -- {GROUP_HELP[group]}")
    lines.append(
        "Other settings: train.epochs, train.batch_size, train.max_steps, train.device, "
        "data.root, data.train_subset, seed, resume (auto|never|force), diagnostics.* ; "
        "see `initbench run --cfg job` for every key."
    )
    lines.append(
        "Sweeps (-m) run one job at a time; hydra/launcher=parallel runs several on this "
        "machine (joblib), hydra/launcher=local or slurm through submitit; experiment=search "
        "looks for the best initializer with Optuna. Re-running a sweep skips its finished "
        "runs and redoes the failed ones (--force: all)."
    )
    return "\n\n".join(lines)


app = typer.Typer(
    name="initbench",
    help="Which weight initialization should this network use, and what does it do to "
    "training? Train models under initializers on CIFAR-10, record what happens inside, "
    "and report it.\n\n" + groups_help(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def split_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra overrides from Hydra's own flags (--cfg job, --info, ...)."""
    overrides, flags = [], []
    iterator = iter(args)
    for arg in iterator:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in HYDRA_FLAGS_WITH_VALUE:
                value = next(iterator, None)
                if value is not None:
                    flags.append(value)
        else:
            overrides.append(arg)
    return overrides, flags


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"initbench: error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM outside a run (starting up, between the runs of a sweep) stops like Ctrl-C: the
    command exits 130, not silently. Inside a run, the run's own handler takes over and lets
    the current step finish first."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch(ctx: typer.Context, multirun: bool, task, force: bool = False) -> None:
    from initbench import app as hydra_app
    from initbench import sweep

    overrides, flags = split_arguments(list(ctx.args))
    if force:  # finished runs too: their files move into _previous-*, never deleted
        overrides = [o for o in overrides if not o.startswith("resume=")] + ["resume=force"]
    custom_configs = any(flag.startswith(("--config", "-c")) and flag not in ("-c", "--cfg")
                         for flag in flags)  # fmt: skip
    if multirun and any(flag in HYDRA_INFO_FLAGS for flag in flags):
        _fail("--cfg, --info and --resolve show one composed config, not a sweep: drop -m and the "
              "comma lists (e.g. initbench run experiment=convergence --cfg job shows the first "
              "run's config).")  # fmt: skip
    if not custom_configs:
        try:
            count = hydra_app.check(overrides, multirun)
        except UsageError as error:
            _fail(str(error))
        if multirun and not any(flag in HYDRA_INFO_FLAGS for flag in flags):
            typer.echo(f"initbench: {count} run(s) checked; starting the sweep", err=True)
    sweep.last_sweep.clear()
    try:
        with _sigterm_as_interrupt():
            results = hydra_app.launch(overrides, multirun=multirun, hydra_flags=flags,
                                       task=task)  # fmt: skip
    except KeyboardInterrupt:
        typer.echo("initbench: interrupted; what was written is kept (resume=auto continues "
                   "the run)", err=True)  # fmt: skip
        raise typer.Exit(EXIT_INTERRUPTED) from None
    statuses = [row["status"] for row in sweep.last_sweep.get("rows", [])] or \
        [summary.get("status") for summary in results]  # fmt: skip
    if multirun and sweep.last_sweep and task.__name__ == "probe_task":
        from initbench.probe import plot_sweep

        plot_sweep(sweep.last_sweep["dir"])
    if multirun and sweep.last_sweep:
        typer.echo(f"initbench: sweep directory {sweep.last_sweep['dir']} "
                   f"(sweep_summary.csv lists every run)", err=True)  # fmt: skip
        best = sweep.last_sweep.get("best")
        if best:
            settings = " ".join(f"{key}={value}" for key, value in best["params"].items())
            where = f"; run {best['run']}" if best.get("run") else ""
            typer.echo(f"initbench: best trial: {sweep.SEARCH_METRIC}={best['value']:.4f} with "
                       f"{settings} (optimization_results.yaml{where})", err=True)  # fmt: skip
    elif results:
        typer.echo(f"initbench: run directory {results[-1].get('run_dir')} "
                   f"(status: {results[-1].get('status')})", err=True)  # fmt: skip
    if sweep.last_sweep.get("rows"):
        # a run that found its directory taken wrote nothing there, so the sweep's table (read
        # from the disk) shows the other run's status; count this failure too
        statuses += [summary["status"] for summary in results if summary.get("refused")]
    failed = sum(status in ("failed", "interrupted") for status in statuses)
    if failed:
        typer.echo(f"initbench: {failed} of {len(statuses)} run(s) failed; see their run.log",
                   err=True)  # fmt: skip
        raise typer.Exit(EXIT_FAILED_RUN)


@app.command(
    context_settings=PASSTHROUGH,
    help="Train: one run, or a sweep with -m. "
    "OVERRIDES use Hydra's grammar: init=kaiming model=resnet train.epochs=5, and "
    "with -m comma lists (init=xavier,kaiming seed=0,1,2).\n\n" + groups_help(),
)
def run(
    ctx: typer.Context,
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep over comma lists."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Run again even runs that finished "
        "(resume=force); their files move into a _previous-* folder.",
    ),  # fmt: skip
) -> None:
    from initbench.app import _task

    _launch(ctx, multirun, _task, force=force)


@app.command(
    context_settings=PASSTHROUGH,
    help="Initialize the configured model and run one "
    "forward and backward pass on a real batch, without training; writes probe.csv "
    "and probe.png (activation and gradient spread per layer).\n\n" + groups_help(),
)
def probe(
    ctx: typer.Context,
    multirun: bool = typer.Option(False, "--multirun", "-m", help="Sweep over comma lists."),
) -> None:
    from initbench.probe import probe_task

    _launch(ctx, multirun, probe_task)


@app.command(
    help="Tables (summary.csv, aggregate.csv), PNG plots and report.md from every "
    "run found below the given directories."
)
def report(
    paths: list[Path] = typer.Argument(..., help="Run or sweep directories to read."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Where to write [default: report/ beside the first path]."
    ),
    threshold: float = typer.Option(0.5, help="Test accuracy for the 'epochs to reach' column."),
) -> None:
    from initbench.report import make_report

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such directory: {', '.join(missing)}. Give run or sweep directories, "
              "e.g. multirun/2026-12-04/10-00-00.")  # fmt: skip
    if not 0 < threshold <= 1:
        _fail(f"--threshold {threshold} must be an accuracy in (0, 1], e.g. 0.5.")
    try:
        result = make_report(paths, out, threshold=threshold)
    except ValueError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"cannot write the report: {error}. Choose an --out folder that can be created "
              "and written.")  # fmt: skip
    typer.echo(f"initbench: report of {result['runs']} run(s) in {result['page']}", err=True)


@app.command(
    "list",
    help="Show the config groups with their choices, and the initializers "
    "with their formulas and papers.",
)
def list_choices() -> None:
    from rich.console import Console
    from rich.table import Table

    from initbench.inits import describe_initializers

    console = Console()
    groups = Table(title="Config groups", show_lines=False)
    for column in ("group", "choices", "what"):
        groups.add_column(column)
    for group, choices in group_choices().items():
        groups.add_row(group, ", ".join(choices), GROUP_HELP[group])
    console.print(groups)
    inits = Table(title="Initializers (init=NAME)", show_lines=True)
    for column in ("name", "aliases", "formula", "paper", "options"):
        inits.add_column(column, overflow="fold")
    for row in describe_initializers():
        inits.add_row(*(str(row.get(column, "")) for column in
                        ("name", "aliases", "formula", "paper", "options")))  # fmt: skip
    console.print(inits)


def main() -> None:
    logging.captureWarnings(True)
    try:
        app()
    except UsageError as error:  # raised outside a command's own handling
        typer.echo(f"initbench: error: {error}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
