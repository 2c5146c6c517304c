"""``scaler search`` and ``scaler worker``: run or resume a search; help one from any host."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from scaler.cli.main import emit_json, main


def _same_command(name: str) -> str:
    """The command line this process was started with, as ``scaler NAME ...`` (for the resume hint)."""
    args = sys.argv[1:]
    # Started as `scaler search ...` or `python -m scaler.cli search ...`: argv[1:] begins with the command.
    if name in args:
        args = args[args.index(name) + 1 :]
    return shlex.join(["scaler", name, *args])


class StrategyChoice(click.Choice):
    """The registered strategies (:func:`~scaler.search.strategies.list_strategies`), read when
    first needed so that ``scaler --help`` does not import the search (and Optuna)."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from scaler.search.strategies import list_strategies

        return tuple(list_strategies())

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # fixed by the registry


@main.command("search")
@click.option(
    "--space",
    "space_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Search-space YAML (see search_spaces/).",
)
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: created, or resumed when it holds this search.",
)
@click.option(
    "--storage",
    default=None,
    help="Study storage URL for several hosts (postgresql://user:pw@host/db); default: a journal "
    "file in the run folder.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Local worker processes that train candidates; 0 trains in this process.",
)
@click.option(
    "--strategy",
    type=StrategyChoice(),
    default="greedy",
    show_default=True,
    help="greedy is the method; the others are Optuna-sampler baselines.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the baseline samplers.")
@click.option("--keep-weights", is_flag=True, help="Keep every candidate's proxy-trained weights in RUN/weights.")
@click.option(
    "--artifacts",
    "artifacts_url",
    default=None,
    metavar="URL",
    help="Where inherited weights (training.init: inherit) are kept, for workers on several hosts: "
    "s3://BUCKET[/PREFIX] (endpoint and keys from the AWS settings, such as AWS_ENDPOINT_URL; needs "
    "lps-scaler[s3]) or a folder on a shared mount; recorded in the run. Default: RUN/artifacts.",
)
@click.option("--quiet", is_flag=True, help="Only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def search_cmd(
    space_file: str,
    run_dir: str,
    storage: str | None,
    workers: int,
    strategy: str,
    seed: int,
    keep_weights: bool,
    artifacts_url: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Grow networks from the space's start, measuring latency here and mIoU by short training.

    Every candidate is kept as a trial of an Optuna study in the run. Running the same command
    again resumes the search: finished evaluations are reused, and a candidate whose worker died or
    was stopped is evaluated again. Other machines can help with `scaler worker --storage URL --study NAME`.

    Ctrl-C (SIGINT) or SIGTERM stops the search cleanly: the candidate in training is marked stopped
    (not failed) and queued again, and the command exits 130 (SIGINT) or 143 (SIGTERM) with one
    line saying how to resume.
    """

    from scaler.report.outputs import write_run_outputs
    from scaler.report.render import format_frontier, format_search
    from scaler.search.run import run_search
    from scaler.search.space import load_space
    from scaler.search.stops import Stopped

    space = load_space(space_file)

    def log(message: str) -> None:
        # Warnings reach stderr even with --quiet or --json (stdout keeps only the summary).
        if message.startswith("warning:") or not (quiet or as_json):
            click.echo(message, err=True)

    try:
        summary = run_search(
            space,
            Path(run_dir),
            space_file=space_file,
            storage_url=storage,
            strategy=strategy,
            workers=workers,
            seed=seed,
            keep_weights=keep_weights,
            artifacts_url=artifacts_url,
            log=log,
            progress=False if quiet or as_json else None,
        )
    except Stopped as stop:
        click.echo(f"search {_stopped_line(stop)}; resume with the same command: {_same_command('search')}", err=True)
        raise SystemExit(stop.exit_code) from None
    files, report = write_run_outputs(Path(run_dir))
    data = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()},
        "files": files,
        "frontier": report.to_dict(),
    }
    if as_json:
        emit_json(data)
        return
    click.echo(format_search(summary, files))
    click.echo(format_frontier(report))


@main.command("worker")
@click.option(
    "--storage", required=True, help="The search's storage: postgresql://... or journal:/shared/path/RUN/study.journal."
)
@click.option("--study", "study_name", required=True, help="Study name (printed by scaler search).")
@click.option("--device", default=None, help="Train on this device instead of the space's (cpu, cuda:N).")
@click.option(
    "--weights-dir", type=click.Path(file_okay=False), default=None, help="Keep the proxy-trained weights here."
)
@click.option("--max-idle", type=float, default=None, help="Exit after this many seconds without work.")
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The run folder, as this host sees it (a shared mount): inherited weights (training.init: inherit) "
    "are fetched from and kept in its artifacts/, and kept weights inside it are recorded relative to it.",
)
@click.option(
    "--artifacts",
    "artifacts_url",
    default=None,
    metavar="URL",
    help="This host's way to the run's store of inherited weights (s3://BUCKET[/PREFIX] or a folder); "
    "default: the one given to scaler search, else --run-dir's artifacts/.",
)
@click.option("--quiet", is_flag=True, help="No progress bars or per-trial lines.")
def worker_cmd(
    storage: str,
    study_name: str,
    device: str | None,
    weights_dir: str | None,
    max_idle: float | None,
    parent_pid: int | None,
    run_dir: str | None,
    artifacts_url: str | None,
    quiet: bool,
) -> None:
    """Train queued candidates of a search until it finishes (run it on any machine)."""

    from scaler.search.stops import Stopped
    from scaler.search.worker import run_worker

    def log(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    try:
        n = run_worker(
            storage,
            study_name,
            device=device,
            weights_dir=Path(weights_dir) if weights_dir else None,
            max_idle_s=max_idle,
            parent_pid=parent_pid,
            run_dir=Path(run_dir) if run_dir else None,
            artifacts_url=artifacts_url,
            log=log,
            progress=False if quiet else None,
        )
    except Stopped as stop:
        # Local workers of a search are stopped with it; the search says what happened.
        if parent_pid is None:
            click.echo(f"worker {_stopped_line(stop)}; start it again to go on: {_same_command('worker')}", err=True)
        raise SystemExit(stop.exit_code) from None
    if not quiet:
        click.echo(f"worker done: {n} candidate(s) evaluated")


def _stopped_line(stop: Any) -> str:
    """``stopped by SIGINT; the candidate in training is queued again as trial #7 ...``: what a stop did."""
    if not stop.requeued:
        return f"{stop.reason}; no trial was in training"
    numbers = ", ".join(f"#{n}" for n in stop.requeued)
    if len(stop.requeued) == 1:
        return f"{stop.reason}; the candidate in training is queued again as trial {numbers} (a stop, not a failure)"
    return (
        f"{stop.reason}; the {len(stop.requeued)} candidates in training are queued again as trials {numbers} "
        "(stops, not failures)"
    )
