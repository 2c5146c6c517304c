"""``scaler frontier``, ``scaler plot`` and ``scaler export``: read, draw and export a run."""

from __future__ import annotations

import json

import click

from scaler.cli.main import HxW, emit_json, main


@main.command("frontier")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option(
    "--ref-latency",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MS",
    help="Reference latency of the hypervolume (default: the space's latency budget, else 1.1 x the slowest "
    "completed trial). Give the same value to compare runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def frontier_cmd(run_dir: str, ref_latency: float | None, as_json: bool) -> None:
    """The Pareto frontier of a run (latency vs mIoU) and its hypervolume.

    Also writes RUN/trials.csv (every trial), RUN/frontier.csv and RUN/path.csv (the greedy
    trajectory). mIoU is printed in percent; the hypervolume is in ms x mIoU (as a fraction).
    """
    from scaler.report import format_frontier, summarize_run

    report = summarize_run(run_dir, ref_latency_ms=ref_latency)
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else format_frontier(report))


@main.command("plot")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option(
    "--compare",
    multiple=True,
    metavar="RUN",
    type=click.Path(file_okay=False),
    help="Another run whose frontier is drawn too; repeat for several.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Latency-vs-mIoU figure, .png or .svg; the per-step figure goes next to it as NAME_steps.SUFFIX "
    "[default: RUN/plots/frontier.png and RUN/plots/steps.png].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON.")
def plot_cmd(run_dir: str, compare: tuple[str, ...], output: str | None, as_json: bool) -> None:
    """Draw a run: latency vs mIoU (every candidate, the frontier, the greedy path, named models),
    and latency and mIoU per greedy step."""
    from scaler.report.draw import plot_run

    paths = plot_run(run_dir, output, compare=compare)
    if as_json:
        emit_json({k: str(v) for k, v in paths.items()})
        return
    for path in paths.values():
        click.echo(str(path))


@main.command("export")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--trial", type=click.IntRange(min=0), default=None, help="Export this trial.")
@click.option(
    "--max-latency",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MS",
    help="Export the most accurate trial at most this slow.",
)
@click.option(
    "--min-miou",
    type=click.FloatRange(min=0, max=100),
    default=None,
    metavar="X",
    help="Export the fastest trial reaching this mIoU, in percent (62.5 means 62.5%).",
)
@click.option(
    "--format",
    "formats",
    default="json",
    show_default=True,
    help="json (arch.json), onnx, torchscript, pt (the kept proxy-trained weights); comma-separated for several.",
)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--upsample/--no-upsample",
    default=None,
    help="End the ONNX/TorchScript models with the upsample to the input size [default: as the run timed them].",
)
@click.option(
    "--dynamic-axes",
    type=click.Choice(["none", "batch"]),
    default="none",
    show_default=True,
    help="none: the ONNX model takes the one shape the run timed; batch: its batch dimension is free "
    "(checked with onnxruntime at two batch sizes). Height and width are always fixed: export at the "
    "size you deploy at with --input-size.",
)
@click.option(
    "--input-size",
    type=HxW(),
    default=None,
    help="Export the ONNX/TorchScript models for this HxW input instead of the run's. Any size at which "
    "every path's input is at least 1x1 (an LPS-Net path of resolution r sees int(H*r) x int(W*r)); "
    "the card's latency stays the run's [default: the run's input size].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def export_cmd(
    run_dir: str,
    trial: int | None,
    max_latency: float | None,
    min_miou: float | None,
    formats: str,
    out_dir: str,
    upsample: bool | None,
    dynamic_axes: str,
    input_size: tuple[int, int] | None,
    as_json: bool,
) -> None:
    """Export one trial of a run: arch.json, ONNX, TorchScript, weights, and a MODEL_CARD.md.

    ONNX and TorchScript hold the deploy form (BatchNorm folded) at the run's input size (or
    --input-size), and are checked against PyTorch's output before they are kept. Their height and
    width are fixed: an LPS-Net resizes its input to each path's size when exported, so a model
    exported at one size computes nothing sensible at another; export once per deployed size.
    """
    from scaler.report.export import export_trial
    from scaler.report.render import format_export

    if sum(v is not None for v in (trial, max_latency, min_miou)) != 1:
        raise click.UsageError("choose the trial with exactly one of --trial N, --max-latency MS or --min-miou X")
    result = export_trial(
        run_dir,
        out_dir,
        formats=formats,
        trial=trial,
        max_latency_ms=max_latency,
        min_miou=None if min_miou is None else min_miou / 100,
        upsample=upsample,
        dynamic_axes=dynamic_axes,
        input_size=input_size,
    )
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(format_export(result, run_dir))
