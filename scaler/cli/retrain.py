"""``scaler retrain``: train chosen architectures of a run again from scratch, with one recipe."""

from __future__ import annotations

import click

from scaler.cli.main import emit_json, main


@main.command("retrain")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--frontier", is_flag=True, help="Retrain every trial of the run's frontier.")
@click.option("--trial", "trials", type=int, multiple=True, metavar="N", help="Retrain trial N (repeatable).")
@click.option("--iters", type=int, default=None, help="Training iterations (default: the run's).")
@click.option("--seed", type=int, default=None, help="Training seed (default: the run's).")
@click.option("--device", default=None, help="Train on this device instead of the run's (cpu, cuda:N).")
@click.option("--quiet", is_flag=True, help="Only the table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def retrain_cmd(
    run_dir: str,
    frontier: bool,
    trials: tuple[int, ...],
    iters: int | None,
    seed: int | None,
    device: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train chosen architectures of RUN again, from scratch, with one recipe, and record them in
    the run's study (kind `retrain`, never on the search's frontier).

    A search's proxy mIoUs depend on how it trained (inherited weights, its schedule); retrained
    numbers can be compared across runs and with from-scratch searches. A retrain already done with
    the same recipe is reused. No search may be running on RUN.
    """
    from scaler.report import pareto_front, trials_frame
    from scaler.report.render import format_retrain
    from scaler.search.retrain import retrain_run
    from scaler.search.store import open_run

    chosen = list(trials)
    if frontier:
        chosen += [int(n) for n in pareto_front(trials_frame(open_run(run_dir)))["number"]]
    recipe, results = retrain_run(
        run_dir,
        trials=sorted(set(chosen)),
        iters=iters,
        seed=seed,
        device=device,
        log=(lambda m: None) if quiet or as_json else click.echo,
        progress=False if quiet or as_json else None,
    )
    if as_json:
        emit_json({"run_dir": run_dir, "recipe": recipe, "retrained": [r.to_dict() for r in results]})
        return
    click.echo(format_retrain(run_dir, recipe, results))
