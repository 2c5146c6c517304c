"""``scaler bench``: the latency of one network on a device."""

from __future__ import annotations

import click

from models import list_models, resolve_arch
from scaler.cli.main import ARCH_HELP, HxW, classes_option, emit_json, main
from scaler.measure.settings import (
    BACKENDS,
    DEFAULT_MAX_OTHERS_SHARE,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_TARGET_REL_SPREAD,
    DEFAULT_TIME_CAP_S,
    DEFAULT_WARMUP,
    DTYPES,
)


@main.command("bench", epilog=ARCH_HELP)
@click.argument("arch")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--input", "input_hw", type=HxW(), default="1024x2048", show_default=True, help="Image size HxW.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per forward pass.")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp32", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
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
@classes_option
@click.option(
    "--warmup", type=click.IntRange(min=0), default=DEFAULT_WARMUP, show_default=True, help="Untimed runs first."
)
@click.option("--min-samples", type=click.IntRange(min=1), default=DEFAULT_MIN_SAMPLES, show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=DEFAULT_MAX_SAMPLES, show_default=True)
@click.option(
    "--target-spread",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TARGET_REL_SPREAD,
    show_default=True,
    help="Stop once IQR/median of the samples is at most this.",
)
@click.option(
    "--time-cap",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIME_CAP_S,
    show_default=True,
    help="Stop sampling after this many seconds.",
)
@click.option(
    "--max-load",
    type=click.FloatRange(min=0, max=1),
    default=DEFAULT_MAX_OTHERS_SHARE,
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
    from scaler.measure import LatencyCache, LatencySettings, measure_latency
    from scaler.report.render import format_latency

    resolved = resolve_arch(arch, num_classes=classes)
    cache = LatencyCache(cache_dir)
    settings = LatencySettings(
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
    )
    r = measure_latency(resolved, settings, cache=cache, refresh=no_cache)
    entry = cache.entry_path(r.cache_key)
    if as_json:
        emit_json({"name": arch if arch in list_models() else None, **r.to_dict(), "cache_entry": str(entry)})
        return
    click.echo(format_latency(arch, r, cache_entry=entry, refreshed=no_cache))
    if r.under_load:
        click.echo(
            f"warning: other processes used {r.others_cpu_share:.0%} of the CPUs during the measurement (limit "
            f"{max_load:.0%}), even after waiting for them: this latency is likely inflated; stop them and run again",
            err=True,
        )
