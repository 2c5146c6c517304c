"""The ``scaler`` command line. Thin: each command parses options and calls the library."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from models import LPSNetArch, describe_model, get_arch, list_models, resolve_arch

from . import __version__
from .errors import USER_ERRORS

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
    ]
    if isinstance(a, LPSNetArch):
        lines += [
            f"  depth        {' '.join(map(str, a.depth))}",
            f"  width        {' '.join(map(str, a.width))}",
            f"  resolution   {' '.join(f'{r:g}' for r in a.resolution)}  "
            f"({a.num_paths} path{'s' if a.num_paths > 1 else ''}; inputs {paths})",
        ]
    else:
        lines += [
            f"  backbone     MobileNetV2-style, width x{a.width_mult:g} (output stride 16)",
            f"  channels     {a.stem_channels} {' '.join(map(str, a.stage_channels))}",
        ]
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
    from .train import TrainConfig, train_and_evaluate

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
        _emit_json(result.to_dict())
    else:
        click.echo(_format_train(arch, resolved.inline(), config, result, save))
    if not result.ok:
        if as_json:
            click.echo(f"error: training failed: {result.reason}", err=True)
        sys.exit(1)


def _format_train(name: str, inline: str, config: Any, r: Any, save: str | None) -> str:
    crop = f"{config.crop[0]}x{config.crop[1]}"
    head = f"{name}" if name == inline else f"{name}  ({inline})"
    lines = [
        head,
        f"  schedule     {config.iters} iterations, batch {config.batch}, crop {crop}, lr {config.lr:g}, "
        f"seed {config.seed}, on {r.device}, dataset {config.dataset}",
    ]
    if not r.ok:
        lines.append(f"  FAILED       {r.reason}")
        return "\n".join(lines)
    size = "native size" if config.eval_size is None else f"{config.eval_size[0]}x{config.eval_size[1]}"
    lines += [
        f"  mIoU         {100 * r.miou:.2f}  ({r.num_val_images} val images at {size}; "
        f"pixel accuracy {100 * r.pixel_accuracy:.2f})",
        *textwrap.wrap(
            ", ".join(f"{n} {'-' if v is None else f'{100 * v:.1f}'}" for n, v in r.per_class_iou.items()),
            width=100,
            initial_indent="  per class    ",
            subsequent_indent=" " * 15,
            break_on_hyphens=False,
        ),
        f"  loss         {r.loss_first:.3f} -> {r.loss_last:.3f} (mean of the last 10%; min {r.loss_min:.3f})",
        f"  throughput   {r.images_per_s:.1f} images/s; data loading {100 * r.data_time_share:.0f}% of training time",
        f"  time         training {r.train_seconds:.1f} s, evaluation {r.eval_seconds:.1f} s",
    ]
    if save:
        lines.append(f"  saved        {save}")
    return "\n".join(lines)


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
    type=click.Choice(["greedy", "random", "tpe", "nsga2"]),
    default="greedy",
    show_default=True,
    help="greedy is the method; the others are Optuna-sampler baselines.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the baseline samplers.")
@click.option("--keep-weights", is_flag=True, help="Keep every candidate's proxy-trained weights in RUN/weights.")
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
    quiet: bool,
    as_json: bool,
) -> None:
    """Grow networks from the space's start, measuring latency here and mIoU by short training.

    Every candidate is kept as a trial of an Optuna study in the run. Running the same command
    again resumes the search: finished evaluations are reused, and a candidate whose worker died is
    evaluated again. Other machines can help with `scaler worker --storage URL --study NAME`.
    """

    from .search import run_search
    from .space import load_space

    space = load_space(space_file)

    def log(message: str) -> None:
        # Warnings reach stderr even with --quiet or --json (stdout keeps only the summary).
        if message.startswith("warning:") or not (quiet or as_json):
            click.echo(message, err=True)

    summary = run_search(
        space,
        Path(run_dir),
        space_file=space_file,
        storage_url=storage,
        strategy=strategy,
        workers=workers,
        seed=seed,
        keep_weights=keep_weights,
        log=log,
        progress=False if quiet or as_json else None,
    )
    files, report = _write_run_outputs(Path(run_dir))
    data = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()},
        "files": files,
        "frontier": report.to_dict(),
    }
    if as_json:
        _emit_json(data)
        return
    overhead = summary.seconds - summary.latency_seconds - summary.train_seconds
    click.echo(
        f"{summary.strategy} search in {run_dir}: {summary.stop_reason}\n"
        f"  trials       {summary.trials} ({summary.complete} complete, {summary.failed} failed)\n"
        f"  time         {summary.seconds:.0f} s: latency {summary.latency_seconds:.0f} s, training "
        f"{summary.train_seconds:.0f} s, other {overhead:.0f} s\n"
        f"  study        {summary.study_name}\n"
        f"  files        {', '.join(files)}\n"
        f"  next         scaler export {run_dir} --max-latency MS --format onnx -o DIR\n"
    )
    click.echo(report.format())


def _write_run_outputs(run_dir: Any) -> tuple[list[str], Any]:
    """The run's tables, plots and frontier report, written at the end of every search session."""
    from .frontier import FRONTIER_CSV, PATH_CSV, TRIALS_CSV, summarize_run
    from .plotting import plot_run

    report = summarize_run(run_dir)
    plots = plot_run(run_dir)
    tables = [str(Path(run_dir) / name) for name in (TRIALS_CSV, FRONTIER_CSV, PATH_CSV)]
    return tables + [str(p) for p in plots.values()], report


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
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, hidden=True)
@click.option("--quiet", is_flag=True, help="No progress bars or per-trial lines.")
def worker_cmd(
    storage: str,
    study_name: str,
    device: str | None,
    weights_dir: str | None,
    max_idle: float | None,
    parent_pid: int | None,
    run_dir: str | None,
    quiet: bool,
) -> None:
    """Train queued candidates of a search until it finishes (run it on any machine)."""

    from .search import run_worker

    def log(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    n = run_worker(
        storage,
        study_name,
        device=device,
        weights_dir=Path(weights_dir) if weights_dir else None,
        max_idle_s=max_idle,
        parent_pid=parent_pid,
        run_dir=Path(run_dir) if run_dir else None,
        log=log,
        progress=False if quiet else None,
    )
    if not quiet:
        click.echo(f"worker done: {n} candidate(s) evaluated")


@main.command("bench", epilog=ARCH_HELP)
@click.argument("arch")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--input", "input_hw", type=HxW(), default="1024x2048", show_default=True, help="Image size HxW.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per forward pass.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["torch", "cudagraph", "onnxruntime", "tensorrt"]),
    default="torch",
    show_default=True,
    help="Runtime: eager PyTorch, a replayed CUDA graph, onnxruntime, or TensorRT.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads, pinned for the measurement (default: torch's current count).",
)
@click.option("--channels-last", is_flag=True, help="Run the torch backends in channels_last memory format.")
@click.option("--with-upsample", is_flag=True, help="Time the final upsample to the input size too (default: not).")
@click.option("--train-form", is_flag=True, help="Time the train form (BatchNorm, eval mode), not the deploy form.")
@click.option(
    "--classes",
    type=click.IntRange(min=1),
    default=None,
    help="Number of classes (default: the architecture's own, 19 for the named models).",
)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--min-samples", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--target-spread",
    type=click.FloatRange(min=0, min_open=True),
    default=0.05,
    show_default=True,
    help="Stop once IQR/median of the samples is at most this.",
)
@click.option(
    "--time-cap",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Stop sampling after this many seconds.",
)
@click.option(
    "--max-load",
    type=click.FloatRange(min=0, max=1),
    default=0.2,
    show_default=True,
    metavar="SHARE",
    help="CPU only: while other processes use more than this share of all CPUs, wait for a quiet "
    "machine and measure again (twice at most); a result still taken under load is flagged and "
    "not cached. 1 turns the check off.",
)
@click.option("--no-cache", is_flag=True, help="Measure even if the cache holds this result, and replace the entry.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Latency cache folder (default: $LPS_SCALER_CACHE or ~/.cache/lps-scaler/latency).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with every sample) instead of text.")
def bench_cmd(
    arch: str,
    device: str,
    input_hw: tuple[int, int],
    batch: int,
    dtype: str,
    backend: str,
    threads: int | None,
    channels_last: bool,
    with_upsample: bool,
    train_form: bool,
    classes: int | None,
    warmup: int,
    min_samples: int,
    max_samples: int,
    target_spread: float,
    time_cap: float,
    max_load: float,
    no_cache: bool,
    cache_dir: str | None,
    as_json: bool,
) -> None:
    """Latency of ARCH on a device: median of single forward passes, until stable or capped.

    Times the deploy form (BatchNorm folded) up to the head's logits, as the paper does, unless
    told otherwise. Results are cached by architecture + device fingerprint + stopping rule.
    """
    from .latency import LatencyCache, measure_latency

    resolved = resolve_arch(arch, num_classes=classes)
    cache = LatencyCache(cache_dir)
    r = measure_latency(
        resolved,
        input_hw=input_hw,
        device=device,
        batch=batch,
        dtype=dtype,
        backend=backend,
        threads=threads,
        channels_last=channels_last,
        include_upsample=with_upsample,
        deploy=not train_form,
        warmup=warmup,
        min_samples=min_samples,
        max_samples=max_samples,
        target_rel_spread=target_spread,
        time_cap_s=time_cap,
        max_others_share=None if max_load >= 1 else max_load,
        cache=cache,
        refresh=no_cache,
    )
    entry = cache.entry_path(r.cache_key)
    if as_json:
        _emit_json({"name": arch if arch in list_models() else None, **r.to_dict(), "cache_entry": str(entry)})
        return
    target = r.rule["target_rel_spread"]
    if r.stable:
        stable = f"yes: IQR/median {r.rel_spread:.1%} <= {target:.1%} after {r.n_samples} samples"
    else:
        limit = f"{r.rule['max_samples']} samples" if r.stop_reason == "max_samples" else f"{r.rule['time_cap_s']:g} s"
        stable = f"no: stopped at {limit} with IQR/median {r.rel_spread:.1%} > {target:.1%}"
    if r.from_cache:
        source = f"from the cache (measured {r.measured_at}; --no-cache measures again): {entry}"
    elif r.under_load:
        source = "not stored: measured under load"
    else:
        source = f"measured now{' (--no-cache)' if no_cache else ''}, stored in {entry}"
    lines = [
        f"{arch}" if arch == resolved.inline() else f"{arch}  ({resolved.inline()})",
        f"  median       {r.median_ms:.3f} ms per forward pass (batch {batch})",
        f"  spread       p10 {r.p10_ms:.3f}  p90 {r.p90_ms:.3f}  IQR {r.iqr_ms:.3f} ms  (n={r.n_samples})",
        f"  stable       {stable}",
        f"  measured on  {r.describe_setup()}",
        f"  fingerprint  {r.fingerprint_hash}  (host {r.fingerprint['host']})",
        f"  cache        {source}",
    ]
    if r.others_cpu_share is not None and not r.fingerprint["device"].startswith("cuda"):
        retried = f", measured again {r.load_retries}x after waiting" if r.load_retries else ""
        lines.insert(-2, f"  other load   others used {r.others_cpu_share:.0%} of the CPUs meanwhile{retried}")
    if r.fingerprint["device"].startswith("cuda") and r.fingerprint["backend"] == "torch":
        lines.append(
            "  note         eager CUDA at batch 1 times how fast the host launches kernels as much as the GPU: "
            "separate measurements of LPS-Net S/M/L on an H100 varied by 30-60%; --backend cudagraph "
            "measures the GPU (within 2% across runs there)"
        )
    click.echo("\n".join(lines))
    if r.under_load:
        click.echo(
            f"warning: other processes used {r.others_cpu_share:.0%} of the CPUs during the measurement (limit "
            f"{max_load:.0%}), even after waiting for them: this latency is likely inflated; stop them and run again",
            err=True,
        )


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
    from .frontier import summarize_run

    report = summarize_run(run_dir, ref_latency_ms=ref_latency)
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format())


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
    from .plotting import plot_run

    paths = plot_run(run_dir, output, compare=compare)
    if as_json:
        _emit_json({k: str(v) for k, v in paths.items()})
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def export_cmd(
    run_dir: str,
    trial: int | None,
    max_latency: float | None,
    min_miou: float | None,
    formats: str,
    out_dir: str,
    upsample: bool | None,
    as_json: bool,
) -> None:
    """Export one trial of a run: arch.json, ONNX, TorchScript, weights, and a MODEL_CARD.md.

    ONNX and TorchScript hold the deploy form (BatchNorm folded) at the run's input size, and are
    checked against PyTorch's output before they are kept.
    """
    from .export import export_trial

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
    )
    if as_json:
        _emit_json(result.to_dict())
        return
    r = result
    miou = "-" if r.miou is None else f"{100 * r.miou:.2f}%"
    latency = "-" if r.latency_ms is None else f"{r.latency_ms:.3f} ms"
    lines = [
        f"trial {r.trial} of {run_dir} ({r.selected_by}): {r.arch.inline()}",
        f"  latency      {latency} (input {'x'.join(map(str, r.input_shape))}, "
        f"{'with' if r.include_upsample else 'no'} final upsample)",
        f"  mIoU         {miou}",
    ]
    for fmt, path in r.files.items():
        check = r.checks.get(fmt, {})
        note = f"  (max abs diff vs PyTorch {check['max_abs_diff']:.1e})" if "max_abs_diff" in check else ""
        lines.append(f"  {fmt:<12} {path}{note}")
    lines.append(f"  {'model card':<12} {r.model_card}")
    if any(f in r.files for f in ("onnx", "torchscript")):
        lines.append(f"  {'weights':<12} {r.weights}")
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    main()
