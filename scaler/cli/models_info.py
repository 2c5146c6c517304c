"""``scaler models`` and ``scaler info``: the registered networks, and one network's size."""

from __future__ import annotations

import click

from models import describe_model, get_arch, list_models, resolve_arch
from scaler.cli.main import ARCH_HELP, HxW, classes_option, emit_json, main


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(as_json: bool) -> None:
    """List the registered networks."""
    from scaler.report.render import format_models

    rows = []
    for name in list_models():
        arch = get_arch(name)
        rows.append(
            {
                "name": name,
                "description": describe_model(name),
                "inline": arch.inline(),
                "arch_hash": arch.arch_hash(),
                **arch.to_dict(),
            }
        )
    if as_json:
        emit_json(rows)
        return
    click.echo(format_models(rows))


@main.command("info", epilog=ARCH_HELP)
@click.argument("arch")
@click.option(
    "--input",
    "input_hw",
    type=HxW(),
    default="1024x2048",
    show_default=True,
    help="Image size HxW the MACs are counted at.",
)
@classes_option
@click.option(
    "--flops-backend",
    type=click.Choice(["aten", "pytorch"]),
    default="aten",
    show_default=True,
    help="ptflops backend: 'aten' counts convolutions (as the paper does); 'pytorch' also "
    "counts BatchNorm, ReLU, additions and resizes.",
)
@click.option(
    "--with-upsample",
    is_flag=True,
    help="Count the final upsample of the logits to the input size (default: up to the head).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_cmd(
    arch: str, input_hw: tuple[int, int], classes: int | None, flops_backend: str, with_upsample: bool, as_json: bool
) -> None:
    """Parameters and MACs of ARCH."""
    from scaler.measure.complexity import measure_complexity
    from scaler.report.render import format_info

    resolved = resolve_arch(arch, num_classes=classes)
    try:
        c = measure_complexity(resolved, input_hw, flops_backend=flops_backend, include_upsample=with_upsample)
    except ValueError as e:
        raise click.UsageError(f"--input: {e}") from None
    data = c.to_dict()
    if as_json:
        emit_json({"name": arch if arch in list_models() else None, **data})
        return
    click.echo(format_info(arch, resolved, c, input_hw, with_upsample))
