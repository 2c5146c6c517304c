"""``scaler explain``: why a greedy run went where it went, step by step."""

from __future__ import annotations

import click

from scaler.cli.main import emit_json, main


@main.command("explain")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def explain_cmd(run_dir: str, as_json: bool) -> None:
    """Every greedy step of a run: each candidate's latency gain and mIoU gain over the parent, its
    slope (mIoU points per ms), the winner, and how sure the decision was.

    Steps timed with a paired pass show intervals and whether the winner's slope stood apart from
    the runner-up's; steps of older runs show point values only. Reads the run; writes nothing.
    """
    from scaler.report.explain import explain_run
    from scaler.report.render import format_explain

    explanation = explain_run(run_dir)
    if as_json:
        emit_json(explanation.to_dict())
        return
    click.echo(format_explain(explanation))
