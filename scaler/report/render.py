"""Text for people: how reports, results and records read in a terminal.

The CLI prints what these functions return; ``--json`` prints the records' ``to_dict()`` instead.
"""

from __future__ import annotations

import math
import shlex
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from models import SegArch
from scaler.report.summary import FrontierReport
from scaler.report.table import finite

if TYPE_CHECKING:  # the records rendered here; importing them would load torch-heavy modules for nothing
    from scaler.measure import LatencyResult
    from scaler.measure.complexity import Complexity
    from scaler.proxy.train import TrainConfig, TrainResult
    from scaler.report.explain import CandidateExplanation, RunExplanation, StepExplanation
    from scaler.report.export import ExportResult
    from scaler.search.retrain import Retrained
    from scaler.search.run import SearchSummary

__all__ = [
    "format_explain",
    "format_export",
    "format_frontier",
    "format_info",
    "format_latency",
    "format_models",
    "format_retrain",
    "format_search",
    "format_train",
]


def _fallback_lines(fallbacks: dict[int, str]) -> list[str]:
    """One line for the trials that trained from scratch instead of inheriting, with the first reason."""
    if not fallbacks:
        return []
    numbers = ", ".join(f"#{n}" for n in sorted(fallbacks))
    first = fallbacks[min(fallbacks)]
    return [
        f"{len(fallbacks)} trial{'s' if len(fallbacks) > 1 else ''} trained from scratch instead of inheriting "
        f"({numbers}): {first}"
    ]


def format_frontier(report: FrontierReport) -> str:
    """A run's frontier report: one frontier trial per line, fastest first; then named models, hypervolume."""
    words = {
        "COMPLETE": "complete",
        "FAIL": "failed",
        "RUNNING": "running",
        "WAITING": "queued",
        "PRUNED": "pruned",
        "STOPPED": "stopped (queued again)",
        "DIED": "cut short by a dead worker (queued again)",
        "INTERRUPTED": "interrupted (worker gone)",
    }
    counts = ", ".join(f"{n} {words[s]}" for s, n in report.counts.items() if s != "total" and n)
    lines = [
        f"{report.run_dir}: {report.info.space}, strategy {report.info.strategy or '?'}; "
        f"{report.counts['total']} trials ({counts or 'none'})" + (f"; {report.status}" if report.status else ""),
        f"latency on {report.info.setup()}",
        *(
            [
                "mIoU: proxy, from inherited training (each candidate started from its parent's trained weights); "
                "not comparable with from-scratch numbers"
            ]
            if report.info.inherited
            else []
        ),
        *_fallback_lines(report.scratch_fallbacks),
        "",
    ]
    if report.frontier.empty:
        lines.append("no completed trials yet")
    else:
        lines += _table(report.frontier, "trial")
    if not report.references.empty:
        lines += ["", "named models measured for comparison (not in the frontier):"]
        lines += _table(report.references, "model")
    hv = report.hypervolume
    lines.append("")
    if hv.ref_latency_ms is None:
        lines.append("hypervolume: no reference point (no completed trials and no --ref-latency)")
    else:
        lines.append(
            f"hypervolume {hv.value:.6g} (ms x mIoU fraction, {hv.n_points} frontier points) against the "
            f"reference point latency {hv.ref_latency_ms:.6g} ms, mIoU {100 * hv.ref_miou:g}% ({hv.rule})"
        )
    if report.files:
        lines.append("wrote " + ", ".join(str(p) for p in report.files.values()))
    return "\n".join(lines)


def _table(df: pd.DataFrame, first: str) -> list[str]:
    header = f"{first:>8}  {'latency ms':>10}  {'p10-p90 ms':>15}  {'mIoU %':>6}  {'step':>4}  {'grew':<10}  arch"
    lines = [header]
    for r in df.itertuples(index=False):
        label = r.reference if first == "model" else str(r.number)
        spread = (
            f"{r.latency_p10_ms:.3f}-{r.latency_p90_ms:.3f}"
            if finite(r.latency_p10_ms) and finite(r.latency_p90_ms)
            else "-"
        )
        miou = f"{100 * r.miou:6.2f}" if finite(r.miou) else f"{'-':>6}"
        step = "-" if r.step is pd.NA else str(r.step)
        lines.append(
            f"{label:>8}  {r.latency_ms:10.3f}  {spread:>15}  {miou}  {step:>4}  {r.dimension or '':<10}  {r.arch}"
        )
    return lines


def _title(label: str, inline: str) -> str:
    return label if label == inline else f"{label}  ({inline})"


def format_models(rows: Sequence[dict[str, Any]]) -> str:
    """The registry as a table (name, architecture, description), with a hint on how to name one."""
    table = [("name", "architecture", "description")]
    table += [(r["name"], r["inline"], r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in table]
    lines.append(
        "\nUse a name, or an inline spec such as 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', as ARCH. "
        "NAME+denseclip or NAME+fusion swaps the 1x1 classifier for a language-guided head."
    )
    return "\n".join(lines)


def format_info(label: str, arch: SegArch, c: Complexity, input_hw: tuple[int, int], include_upsample: bool) -> str:
    """``scaler info``: structure, head, parameters and MACs of one architecture."""
    h, w = input_hw
    upsample = "with the final upsample" if include_upsample else "up to the head's logits (no final upsample)"
    lines = [_title(label, arch.inline()), f"  hash         {arch.arch_hash()}"]
    lines += [f"  {row:<12} {value}" for row, value in arch.structure(h, w)]
    lines += [
        f"  head         {arch.head.describe()}",
        f"  classes      {arch.num_classes}",
        f"  parameters   {c.params_train:,} (train form, with BatchNorm)",
        f"               {c.params_deploy:,} (deploy form, BatchNorm folded)",
        f"  MACs         {c.macs / 1e9:.2f} G at 1x3x{h}x{w}, deploy form, {upsample}",
        f"               counted by ptflops {c.ptflops_version}, backend '{c.flops_backend}'",
        f"  head output  {arch.num_classes}x{c.head_hw[0]}x{c.head_hw[1]} (output stride 16)",
    ]
    return "\n".join(lines)


def format_train(label: str, inline: str, config: TrainConfig, r: TrainResult, save: str | None) -> str:
    """``scaler train``: the schedule, then mIoU (per class), loss, throughput and time; or why it failed."""
    crop = f"{config.crop[0]}x{config.crop[1]}"
    lines = [
        _title(label, inline),
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


def format_search(summary: SearchSummary, files: Sequence[str]) -> str:
    """The summary a search session ends with: why it stopped, its trials, where its time went, its files."""
    overhead = summary.seconds - summary.latency_seconds - summary.train_seconds
    elsewhere = ""
    if summary.worker_train_seconds:
        # Workers train in parallel: their time is not a share of the session's; "other" then
        # includes waiting for them.
        elsewhere = f" (waiting included); workers trained {summary.worker_train_seconds:.0f} s in parallel"
    return (
        f"{summary.strategy} search in {summary.run_dir}: {summary.stop_reason}\n"
        f"  trials       {summary.trials} ({_trial_counts(summary)})\n"
        f"  time         {summary.seconds:.0f} s: latency {summary.latency_seconds:.0f} s, training "
        f"{summary.train_seconds:.0f} s, other {overhead:.0f} s{elsewhere}\n"
        f"  study        {summary.study_name}\n"
        f"  files        {', '.join(files)}\n"
        f"  next         scaler export {shlex.quote(str(summary.run_dir))} --max-latency MS --format onnx -o DIR\n"
    )


def _trial_counts(summary: SearchSummary) -> str:
    """``18 complete, 0 failed, 1 stopped (queued again)``: stops and dead workers only when there were any."""
    parts = [f"{summary.complete} complete", f"{summary.failed} failed"]
    if summary.pruned:
        parts.append(f"{summary.pruned} stopped by successive halving")
    if summary.stopped:
        parts.append(f"{summary.stopped} stopped (queued again)")
    if summary.died:
        parts.append(f"{summary.died} cut short by a dead worker (queued again)")
    return ", ".join(parts)


def format_latency(label: str, r: LatencyResult, *, cache_entry: Path, refreshed: bool) -> str:
    """``scaler bench``: median and spread, whether it is stable, what it ran on, where it is cached."""
    target = r.rule["target_rel_spread"]
    if r.stable:
        stable = f"yes: IQR/median {r.rel_spread:.1%} <= {target:.1%} after {r.n_samples} samples"
    else:
        limit = f"{r.rule['max_samples']} samples" if r.stop_reason == "max_samples" else f"{r.rule['time_cap_s']:g} s"
        stable = f"no: stopped at {limit} with IQR/median {r.rel_spread:.1%} > {target:.1%}"
    if r.from_cache:
        source = f"from the cache (measured {r.measured_at}; --no-cache measures again): {cache_entry}"
    elif r.under_load:
        source = "not stored: measured under load"
    else:
        source = f"measured now{' (--no-cache)' if refreshed else ''}, stored in {cache_entry}"
    batch = r.fingerprint["batch"]
    lines = [
        _title(label, r.arch.inline()),
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
    return "\n".join(lines)


def format_export(result: ExportResult, run_dir: str | Path) -> str:
    """``scaler export``: which trial, its latency and mIoU, and every file written (with its check)."""
    r = result
    miou = "-" if r.miou is None else f"{100 * r.miou:.2f}%"
    latency = "-" if r.latency_ms is None else f"{r.latency_ms:.3f} ms"
    lines = [
        f"trial {r.trial} of {run_dir} ({r.selected_by}): {r.arch.inline()}",
        f"  latency      {latency} (input {'x'.join(map(str, r.timed_shape or r.input_shape))}, "
        f"{'with' if r.include_upsample else 'no'} final upsample)",
        f"  mIoU         {miou}",
    ]
    if r.timed_shape and r.timed_shape != r.input_shape:
        lines.append(f"  exported at  input {'x'.join(map(str, r.input_shape))} (the latency above is the run's)")
    for fmt, path in r.files.items():
        check = r.checks.get(fmt, {})
        note = f"  (max abs diff vs PyTorch {check['max_abs_diff']:.1e})" if "max_abs_diff" in check else ""
        if check.get("dynamic_axes"):
            note += f"  batch free (checked at {' and '.join(map(str, check['checked_batches']))})"
        lines.append(f"  {fmt:<12} {path}{note}")
    lines.append(f"  {'model card':<12} {r.model_card}")
    if any(f in r.files for f in ("onnx", "torchscript")):
        lines.append(f"  {'weights':<12} {r.weights}")
    return "\n".join(lines)


def format_explain(ex: RunExplanation) -> str:
    """``scaler explain``: per greedy step, every candidate's gains and slope (with intervals when the
    step was paired), the winner, how sure the decision was, and what was done to make it."""
    head = f"{ex.run_dir}: strategy {ex.strategy or '?'}" + (f", {ex.status}" if ex.status else "")
    if ex.stop_reason:
        head += f" ({ex.stop_reason})"
    if not ex.steps:
        return head + "\nno greedy steps recorded: nothing to explain (only the greedy strategy records its decisions)"
    lines = [
        head,
        "Each candidate against its step's parent: latency gain (ms), mIoU gain (points) and slope (mIoU points",
        "gained per ms added; the largest wins, * marks it). [low, high]: intervals from the paired rounds.",
    ]
    if any(a.startswith("mIoU gains are measured against the control") for st in ex.steps for a in st.actions):
        lines.append("With inherited weights the mIoU gain is over the step's control: the parent trained as far.")
    for step in ex.steps:
        lines += ["", *_explain_step(step)]
    return "\n".join(lines)


def _explain_step(s: StepExplanation) -> list[str]:
    parent_ms = "-" if s.parent_latency_ms is None else f"{s.parent_latency_ms:.3f} ms"
    parent_miou = "-" if s.parent_miou is None else f"mIoU {100 * s.parent_miou:.2f}"
    target = "-" if s.target_ms is None else f"{s.target_ms:.3f} ms"
    where = " timed with its candidates" if s.paired else ""
    lines = [f"step {s.step}: parent #{s.parent} ({parent_ms}{where}, {parent_miou}); target {target}"]
    if s.probe_passes:
        lines.append(
            f"  grown to the target in {s.probe_passes} paired probes of {s.probe_rounds} rounds "
            "(each network's latency: the parent's times their per-round ratio)"
        )
    if s.paired:
        others = "" if s.others_cpu_share is None else f"; other processes used {s.others_cpu_share:.0%} of the CPUs"
        start = "" if s.parent_start_ratio is None else f"; parent = {s.parent_start_ratio:.3f} x the start network"
        lines.append(f"  timed with its parent in {s.rounds} paired rounds{others}{start}")
    else:
        lines.append("  no paired measurement: point values from single measurements, each in its own time window")
    if s.dropped_over_budget:
        lines.append(f"  {s.dropped_over_budget} candidates over the latency budget, dropped")
    if s.candidates:
        width = 28 if s.paired else 11
        ratios = any(c.start_ratio is not None for c in s.candidates)
        lines.append(
            f"  {'':1} {'trial':>5}  {'grew':<22} {'ms':>7}  "
            + (f"{'x start':>7}  " if ratios else "")
            + f"{'Δlatency ms':<{width}} {'ΔmIoU':>6}  slope points/ms"
        )
        lines += [_explain_candidate(c, s.paired, width, ratios) for c in s.candidates]
    if s.decided:
        verdict = f"#{s.winner}" if s.winner is not None else "none, the search stopped here"
        lines.append(f"  winner     {verdict}: {s.reason}")
        lines.append(f"  certainty  {s.certainty}")
    else:
        lines.append(f"  {s.certainty}" + (f": {s.reason}" if s.reason else ""))
    lines += [f"  did        {a}" for a in s.actions]
    return lines


def _explain_candidate(c: CandidateExplanation, paired: bool, width: int, ratios: bool) -> str:
    trial = "-" if c.trial is None else str(c.trial)
    grew = f"{'+'.join(c.operators)} x{c.steplen}"
    ms = "-" if c.latency_ms is None else f"{c.latency_ms:.3f}"
    if ratios:
        ms += "  " + format("-" if c.start_ratio is None else f"{c.start_ratio:.3f}", ">7")
    delta = "-" if c.delta_ms is None else f"{c.delta_ms:+.3f}"
    if paired and c.delta_ms is not None:
        delta += f" [{_end(c.delta_low, '+.3f')}, {_end(c.delta_high, '+.3f')}]"
    gain = "-" if c.miou_gain is None else f"{100 * c.miou_gain:+.2f}"
    slope = "-" if c.slope is None else f"{100 * c.slope:.4g}"
    if c.slope_low is not None and c.slope_high is not None:
        slope += f" [{100 * c.slope_low:.4g}, {100 * c.slope_high:.4g}]"
    notes = f"  [{'; '.join(c.notes)}]" if c.notes else ""
    return f"  {'*' if c.winner else ' '} {trial:>5}  {grew:<22} {ms:>7}  {delta:<{width}} {gain:>6}  {slope}{notes}"


def _end(x: float | None, spec: str) -> str:
    """An interval end; an unbounded one (too few rounds) is written as such."""
    return "unbounded" if x is None or not math.isfinite(x) else format(x, spec)


def format_retrain(run_dir: str, recipe: Mapping[str, Any], results: Sequence[Retrained]) -> str:
    """``scaler retrain``: each retrained trial's search mIoU beside its from-scratch one."""
    lines = [
        f"{run_dir}: retrained from scratch, {recipe['iters']} iterations, seed {recipe['seed']}",
        f"  {'trial':>5}  {'ms':>7}  {'search mIoU':>11}  {'retrained':>9}  {'as trial':>8}  arch",
    ]
    for r in results:
        ms = "-" if r.latency_ms is None else f"{r.latency_ms:.3f}"
        search = "-" if r.search_miou is None else f"{100 * r.search_miou:.2f}"
        again = "failed" if r.miou is None else f"{100 * r.miou:.2f}"
        note = " (done before)" if r.reused else ""
        fail = f"  [{r.fail_reason}]" if r.fail_reason else ""
        lines.append(
            f"  {r.trial:>5}  {ms:>7}  {search:>11}  {again:>9}  {'#' + str(r.retrain):>8}  {r.arch}{note}{fail}"
        )
    return "\n".join(lines)
