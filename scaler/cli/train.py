"""``scaler train``: train one network briefly and report its mIoU."""

from __future__ import annotations

import sys

import click

from models import resolve_arch
from scaler.cli.main import ARCH_HELP, HxW, emit_json, main


@main.command("train", epilog=ARCH_HELP)
@click.argument("arch")
@click.option(
    "--dataset",
    default="synthetic",
    show_default=True,
    help="Dataset SPEC: synthetic[:size=HxW,train=N,val=N], cityscapes:PATH, camvid:PATH, ade20k:PATH or folder:PATH.",
)
@click.option("--iters", type=click.IntRange(min=1), default=300, show_default=True, help="Training iterations.")
@click.option("--crop", type=HxW(), default="128x256", show_default=True, help="Training crop HxW.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per iteration.")
@click.option(
    "--eval-size",
    type=HxW(),
    default=None,
    help="Input size HxW for evaluation (the search's input size); images are also resized to it "
    "before the random scale. Default: the images' own size.",
)
@click.option("--lr", type=float, default=0.05, show_default=True, help="Peak learning rate (SGD, poly schedule).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Fixes initial weights, data order and augmentation."
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Data loader processes (results do not depend on it).",
)
@click.option("--val-limit", type=click.IntRange(min=1), default=None, help="Evaluate on at most N val images.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the trained weights (with architecture, config and result) to this file.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(
    arch: str,
    dataset: str,
    iters: int,
    crop: tuple[int, int],
    batch: int,
    eval_size: tuple[int, int] | None,
    lr: float,
    device: str,
    seed: int,
    workers: int,
    val_limit: int | None,
    save: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train ARCH briefly and report its mIoU on the validation split.

    The recipe is fixed (SGD momentum 0.9, weight decay 5e-4, poly(0.9) learning rate, cross-entropy
    ignoring the ignore label; random scale 0.5-2.0, crop, flip, colour jitter) and so is the data
    stream for a given seed, so results of different architectures are comparable. A run that fails
    (non-finite loss, out of memory, bad data) prints the reason and exits with status 1.
    """
    from scaler.proxy.train import TrainConfig, train_and_evaluate
    from scaler.report.render import format_train

    resolved = resolve_arch(arch)
    config = TrainConfig(
        dataset=dataset,
        iters=iters,
        batch=batch,
        crop=crop,
        eval_size=eval_size,
        lr=lr,
        seed=seed,
        device=device,
        workers=workers,
        val_limit=val_limit,
    )
    result = train_and_evaluate(resolved, config, progress=False if quiet or as_json else None, save=save)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(format_train(arch, resolved.inline(), config, result, save))
    if not result.ok:
        if as_json:
            click.echo(f"error: training failed: {result.reason}", err=True)
        sys.exit(1)
