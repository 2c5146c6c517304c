"""The ``scaler`` command line. Thin: each command parses options and calls the library."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from models import describe_model, get_arch, list_models, resolve_arch

from . import __version__
from .errors import USER_ERRORS

ARCH_HELP = (
    "ARCH is a registered name (see 'scaler models'), an inline spec such as "
    "'lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25', or the path of an arch.json."
)


class HxW(click.ParamType):
    """An image size written ``HxW`` (``1024x2048``)."""

    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).lower().replace("×", "x")
        parts = text.split("x")
        try:
            h, w = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not HxW (for example 1024x2048)", param, ctx)
        if h < 1 or w < 1:
            self.fail(f"{value!r}: height and width must be >= 1", param, ctx)
        return h, w


class ScalerGroup(click.Group):
    """Turns every user error into one line on stderr and a non-zero exit, never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as e:
            if standalone:
                sys.exit(e.exit_code)
            raise
        except click.Abort:
            click.echo("error: aborted", err=True)
            code = 130
        except click.ClickException as e:
            hint = ""
            if isinstance(e, click.UsageError) and e.ctx is not None:
                hint = f" (see '{e.ctx.command_path} --help')"
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            code = e.exit_code
        except USER_ERRORS as e:
            click.echo(f"error: {e}", err=True)
            code = 2
        if standalone:
            sys.exit(code)
        raise SystemExit(code)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(cls=ScalerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lps-scaler")
def main() -> None:
    """lps-scaler: find fast and accurate LPS-Nets for your device.

    Grows a tiny LPS-Net one dimension at a time (depth, width, input resolution), measures real
    latency on the target device and accuracy from short training runs, and keeps every result.
    """


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
        _emit_json(rows)
        return
    table = [("name", "depth", "width", "resolution", "description")]
    for r in rows:
        table.append(
            (
                r["name"],
                ",".join(map(str, r["depth"])),
                ",".join(map(str, r["width"])),
                ",".join(f"{x:g}" for x in r["resolution"]),
                r["description"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    click.echo("\nUse a name, or an inline spec such as 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', as ARCH.")


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
    from .complexity import measure_complexity

    resolved = resolve_arch(arch, num_classes=classes)
    try:
        c = measure_complexity(resolved, input_hw, flops_backend=flops_backend, include_upsample=with_upsample)
    except ValueError as e:
        raise click.UsageError(f"--input: {e}") from None
    data = c.to_dict()
    if as_json:
        _emit_json({"name": arch if arch in list_models() else None, **data})
        return
    h, w = input_hw
    a = resolved
    paths = ", ".join(f"{ph}x{pw}" for ph, pw in c.path_inputs)
    upsample = "with the final upsample" if with_upsample else "up to the head's logits (no final upsample)"
    lines = [
        f"{arch}" if arch == a.inline() else f"{arch}  ({a.inline()})",
        f"  hash         {a.arch_hash()}",
        f"  depth        {' '.join(map(str, a.depth))}",
        f"  width        {' '.join(map(str, a.width))}",
        f"  resolution   {' '.join(f'{r:g}' for r in a.resolution)}  "
        f"({a.num_paths} path{'s' if a.num_paths > 1 else ''}; inputs {paths})",
        f"  classes      {a.num_classes}",
        f"  parameters   {c.params_train:,} (train form, with BatchNorm)",
        f"               {c.params_deploy:,} (deploy form, BatchNorm folded)",
        f"  MACs         {c.macs / 1e9:.2f} G at 1x3x{h}x{w}, deploy form, {upsample}",
        f"               counted by ptflops {c.ptflops_version}, backend '{c.flops_backend}'",
        f"  head output  {a.num_classes}x{c.head_hw[0]}x{c.head_hw[1]} (output stride 16)",
    ]
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    main()
