"""The ``scaler`` command group and what its commands share: error handling, option types, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from scaler import __version__
from scaler.errors import USER_ERRORS

__all__ = ["ARCH_HELP", "HxW", "ScalerGroup", "classes_option", "emit_json", "main", "quiet_optuna"]

# For every command that takes an ARCH and may change its class count.
classes_option = click.option(
    "--classes",
    type=click.IntRange(min=1),
    default=None,
    help="Number of classes (default: the architecture's own, 19 for the named models).",
)

ARCH_HELP = (
    "ARCH is a registered name (see 'scaler models'; NAME+fusion or NAME+denseclip adds a language-guided "
    "head), an inline spec such as 'lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25' or "
    "'mobilenetv2:m=0.5;h=fusion', or the path of an arch.json."
)


class HxW(click.ParamType):
    """An image size written ``HxW`` (``1024x2048``)."""

    name = "HxW"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "HxW"

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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(cls=ScalerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lps-scaler")
def main() -> None:
    """lps-scaler: find fast and accurate LPS-Nets for your device.

    Grows a tiny LPS-Net one dimension at a time (depth, width, input resolution), measures real
    latency on the target device and accuracy from short training runs, and keeps every result.
    """
    quiet_optuna()


def quiet_optuna() -> None:
    """Optuna at WARNING: it logs every trial at INFO, and the commands print their own progress.

    Set here, where a command starts, and not when :mod:`scaler` is imported, so a program that
    uses the library keeps the logging level it chose.
    """
    import optuna  # here, not at the top: ``scaler --help`` should not pay for it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
