"""``scaler models`` and ``scaler info``: the registered networks, and one network's size."""

from __future__ import annotations

import click

from models import describe_model, get_arch, list_models, resolve_arch
from scaler.cli.main import ARCH_HELP, HxW, emit_json, main


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(as_json: bool) -> None:
    """List the registered networks."""
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
    table = [("name", "architecture", "description")]
    table += [(r["name"], r["inline"], r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    for row in table:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    click.echo(
        "\nUse a name, or an inline spec such as 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', as ARCH. "
        "NAME+denseclip or NAME+fusion swaps the 1x1 classifier for a language-guided head."
    )


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
@click.option(
    "--classes",
    type=click.IntRange(min=1),
    default=None,
    help="Number of classes (default: the architecture's own, 19 for the named models).",
)
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

    resolved = resolve_arch(arch, num_classes=classes)
    try:
        c = measure_complexity(resolved, input_hw, flops_backend=flops_backend, include_upsample=with_upsample)
    except ValueError as e:
        raise click.UsageError(f"--input: {e}") from None
    data = c.to_dict()
    if as_json:
        emit_json({"name": arch if arch in list_models() else None, **data})
        return
    h, w = input_hw
    a = resolved
    upsample = "with the final upsample" if with_upsample else "up to the head's logits (no final upsample)"
    lines = [
        f"{arch}" if arch == a.inline() else f"{arch}  ({a.inline()})",
        f"  hash         {a.arch_hash()}",
    ]
    lines += [f"  {label:<12} {value}" for label, value in a.structure(h, w)]
    lines += [
        f"  head         {a.head.describe()}",
        f"  classes      {a.num_classes}",
        f"  parameters   {c.params_train:,} (train form, with BatchNorm)",
        f"               {c.params_deploy:,} (deploy form, BatchNorm folded)",
        f"  MACs         {c.macs / 1e9:.2f} G at 1x3x{h}x{w}, deploy form, {upsample}",
        f"               counted by ptflops {c.ptflops_version}, backend '{c.flops_backend}'",
        f"  head output  {a.num_classes}x{c.head_hw[0]}x{c.head_hw[1]} (output stride 16)",
    ]
    click.echo("\n".join(lines))
