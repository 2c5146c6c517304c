"""Can ``scaler bench`` be trusted? Fidelity against torch.utils.benchmark, repeatability, and the GPU runtimes.

    python benchmarks/bench_latency.py --threads 2 --input 512x1024 --out benchmarks/results/latency_cpu

(a) Fidelity: for each model, our median (``measure_latency``, default stopping rule, deploy form,
    no final upsample) against one ``torch.utils.benchmark.Timer`` on the same network, input,
    thread count and allocator, under ``torch.inference_mode``: its median of single runs
    (``timeit(number=1)`` repeated; the goal, within 5%) and ``blocked_autorange`` (shown too). The
    arms alternate order between rounds so drifts of the machine hit all alike; a per-run check
    alternates our timed call with a bare forward every 3 runs.
(b) Repeatability: ``scaler bench --no-cache --json`` run as separate processes, medians compared.
(c) GPU: see ``benchmarks/bench_gpu.py`` (S/M/L at 1x3x1024x2048, every runtime, with its own
    fidelity and repeatability checks).

Writes ``<out>.json`` (every sample and the fingerprint) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import command_line, write_report
from torch.utils import benchmark

from models import LPSNet, get_arch, reparameterize
from scaler.measure import (
    LatencySettings,
    TorchRunner,
    build_network,
    make_input,
    measure_latency,
    steady_cpu_allocator,
)
from scaler.measure.load import OthersCPU, wait_for_quiet

GPU_MODELS = ("lpsnet_s", "lpsnet_m", "lpsnet_l")
GPU_BACKENDS = ("torch", "cudagraph", "onnxruntime", "tensorrt")
GOAL = 0.05


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def wait_quiet(threshold: float, max_wait_s: float) -> dict[str, Any]:
    """:func:`scaler.measure.load.wait_for_quiet`, as the record a round keeps."""
    busy, waited = wait_for_quiet(threshold, max_wait_s, window_s=1.0)
    return {"busy_share": None if busy is None else round(busy, 3), "waited_s": round(waited, 1)}


def clean_round(step: Callable[[], Any], quiet: dict[str, float], retries: int) -> tuple[Any, dict[str, Any]]:
    """Run ``step`` on a quiet machine; run it again (up to ``retries`` times) if others got busy meanwhile."""
    discarded = []
    for attempt in range(retries + 1):
        before = wait_quiet(**quiet)
        # Waited-for `scaler bench` child processes are this benchmark's own work.
        with OthersCPU(children=True) as during:
            value = step()
        share = during.share or 0.0
        if share <= quiet["threshold"] or attempt == retries:
            break
        discarded.append(round(share, 3))
    return value, {**before, "others_share": round(share, 3), "discarded_for_others_share": discarded}


def fidelity(
    name: str, hw: tuple[int, int], threads: int, rounds: int, timer_s: float, quiet: dict[str, float], retries: int
) -> dict[str, Any]:
    """Interleaved rounds of our measurement and torch.utils.benchmark on one network."""
    torch.manual_seed(0)
    model = reparameterize(LPSNet(get_arch(name)).eval())
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))

    @torch.inference_mode()
    def forward(inp: torch.Tensor) -> torch.Tensor:
        return model(inp, upsample=False)

    timer = benchmark.Timer(stmt="forward(x)", globals={"forward": forward, "x": x}, num_threads=threads)

    # The machine's speed drifts by 10-20% over seconds, so both sides get windows of about the
    # same length: the Timer runs at least as long as our last sampling phase took.
    window = [timer_s]

    def run_ours() -> dict[str, Any]:
        r = measure_latency(model, LatencySettings(input_hw=hw, threads=threads)).to_dict()
        window[0] = max(timer_s, sum(r["samples_ms"]) / 1e3)
        return r

    def run_blocked() -> dict[str, Any]:
        m = timer.blocked_autorange(min_run_time=window[0])
        return {
            "median_ms": m.median * 1e3,
            "mean_ms": m.mean * 1e3,
            "iqr_ms": m.iqr * 1e3,
            "number_per_run": m.number_per_run,
            "blocks": len(m.times),
            "min_run_time_s": window[0],
            "block_times_ms": [t * 1e3 for t in m.times],
        }

    def run_single() -> dict[str, Any]:
        # The same Timer, one run per measurement: the statistic ours reports (median of single runs).
        times: list[float] = []
        end = time.perf_counter() + window[0]
        while time.perf_counter() < end or len(times) < 10:
            times.append(timer.timeit(number=1).median * 1e3)
        return {"median_ms": statistics.median(times), "n": len(times), "times_ms": times}

    def one_round(ours_first: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if ours_first:
            o = run_ours()
            single = run_single()
            return o, single, run_blocked()
        blocked = run_blocked()
        single = run_single()
        return run_ours(), single, blocked

    ours: list[dict[str, Any]] = []
    singles: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    machine: list[dict[str, Any]] = []
    for i in range(rounds):
        (o, single, blocked), m = clean_round(lambda first=i % 2 == 0: one_round(first), quiet, retries)
        ours.append(o)
        singles.append(single)
        blocks.append(blocked)
        machine.append(m)
        print(
            f"  {name} round {i + 1}: ours {o['median_ms']:.3f} ms (n={o['n_samples']}, {o['stop_reason']}), "
            f"Timer single runs {single['median_ms']:.3f} ms (n={single['n']}), blocked_autorange "
            f"{blocked['median_ms']:.3f} ms ({blocked['blocks']} blocks of {blocked['number_per_run']}); "
            f"others' CPU share {m['others_share']:.0%}, {len(m['discarded_for_others_share'])} busy tries discarded",
            flush=True,
        )
    ours_median = statistics.median(r["median_ms"] for r in ours)
    single_median = statistics.median(r["median_ms"] for r in singles)
    blocked_median = statistics.median(r["median_ms"] for r in blocks)
    per_round = [o["median_ms"] / s["median_ms"] for o, s in zip(ours, singles, strict=True)]
    per_round_blocked = [o["median_ms"] / b["median_ms"] for o, b in zip(ours, blocks, strict=True)]
    (fine_ours, fine_bare), fine_machine = clean_round(lambda: per_run(model, x, hw, threads), quiet, retries)
    return {
        "ours_median_ms": ours_median,
        "timer_median_ms": single_median,
        "ratio": ours_median / single_median,
        "round_ratios": per_round,
        "paired_ratio": statistics.median(per_round),
        "blocked": {
            "median_ms": blocked_median,
            "ratio": ours_median / blocked_median,
            "round_ratios": per_round_blocked,
            "numbers_per_run": [b["number_per_run"] for b in blocks],
        },
        "per_run": {
            "ours_timed_call_median_ms": statistics.median(fine_ours),
            "bare_forward_median_ms": statistics.median(fine_bare),
            "ratio": statistics.median(fine_ours) / statistics.median(fine_bare),
            "n": len(fine_ours),
            "machine": fine_machine,
        },
        "machine": machine,
        "ours": ours,
        "timer_single": singles,
        "timer_blocked": blocks,
    }


def per_run(
    model: torch.nn.Module, x: torch.Tensor, hw: tuple[int, int], threads: int, alternations: int = 40, block: int = 3
) -> tuple[list[float], list[float]]:
    """Our timed call and a bare ``model(x)`` alternated every ``block`` runs: the same seconds for both.

    Uses the library's own runner (copy of the network, input, timed call) so that the comparison is
    free of the machine's drift between windows, which dominates the round-level ratios above.
    """
    s = LatencySettings(input_hw=hw, threads=threads)
    ours: list[float] = []
    bare: list[float] = []
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            runner = TorchRunner(build_network(model.arch, model, s), make_input(s), s)
            runner.warm_up(s.warmup)
            for _ in range(s.warmup):
                model(x, upsample=False)
            for _ in range(alternations):
                ours.extend(runner.time_once() for _ in range(block))
                for _ in range(block):
                    t0 = time.perf_counter()
                    model(x, upsample=False)
                    bare.append((time.perf_counter() - t0) * 1e3)
            runner.close()
    finally:
        torch.set_num_threads(prev)
    return ours, bare


def repeatability(
    name: str, hw: tuple[int, int], threads: int, repeats: int, quiet: dict[str, float], retries: int
) -> dict[str, Any]:
    """``scaler bench --no-cache`` as separate processes, as a user runs it."""
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LPS_SCALER_CACHE": cache}
        argv = [
            sys.executable,
            "-m",
            "scaler.cli",
            "bench",
            name,
            "--input",
            f"{hw[0]}x{hw[1]}",
            "--threads",
            str(threads),
            "--no-cache",
            "--json",
        ]

        def run() -> dict[str, Any]:
            return json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)

        for i in range(repeats):
            r, m = clean_round(run, quiet, retries)
            runs.append(
                {**{k: r[k] for k in ("median_ms", "p10_ms", "p90_ms", "iqr_ms", "n_samples", "stable")}, "machine": m}
            )
            print(
                f"  run {i + 1}: median {r['median_ms']:.3f} ms (n={r['n_samples']}, stable={r['stable']}); "
                f"others' CPU share {m['others_share']:.0%}, "
                f"{len(m['discarded_for_others_share'])} busy tries discarded",
                flush=True,
            )
    medians = [r["median_ms"] for r in runs]
    mid = statistics.median(medians)
    return {
        "command": " ".join(shlex.quote(a) for a in ["scaler", *argv[3:]]),
        "runs": runs,
        "medians_ms": medians,
        "median_of_medians_ms": mid,
        "range_rel": (max(medians) - min(medians)) / mid,
        "cv": statistics.stdev(medians) / statistics.fmean(medians) if len(medians) > 1 else 0.0,
    }


def to_markdown(report: dict[str, Any]) -> str:
    fp = report["fingerprint"]
    shape = "x".join(map(str, fp["input_shape"]))
    lines = [
        "# Latency measurement: fidelity against torch.utils.benchmark, and repeatability (CPU)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {fp['device_name']} ({fp['logical_cpus']} logical CPUs), torch {fp['torch']}, "
        f"{fp['threads']} threads, input {shape}, {fp['dtype']}, eager PyTorch under inference_mode, deploy form "
        f"(BatchNorm folded), up to the head's logits (no final upsample). Load average (1/5/15 min) before: "
        f"{report['loadavg_before']}, after: {report['loadavg_after']}. This machine is shared with other "
        f"sessions: before each round the script waited until other processes used less than "
        f"{report['quiet']['threshold']:.0%} of the CPUs (at most {report['quiet']['max_wait_s']:g} s), and a "
        f"round during which they used more was run again (at most {report['retries']} times); the tables give "
        "other processes' share of the CPUs during the kept rounds and how many tries were discarded.",
        "",
        "## (a) Fidelity",
        "",
        f"Ours: `measure_latency` with its default stopping rule ({report['rule']}): the median of single "
        "runs. Theirs: one `torch.utils.benchmark.Timer` on the same network object, input, threads and CPU "
        f"allocator ({report['cpu_allocator']}), used two ways: `timeit(number=1)` repeated (the median of single "
        "runs, the same statistic as ours: the goal is checked on it) and `blocked_autorange(min_run_time=...)` "
        "(the median of block means; for a network of a few ms it times blocks of 10 back-to-back runs). Each arm "
        f"runs at least {report['timer_s']:g} s and at least as long as our last sampling phase, because this "
        f"machine's speed drifts by 10-20% over seconds. {report['rounds']} rounds per model, in the order ours, "
        "single, blocked in odd rounds and the reverse in even ones; the table gives the median over rounds of "
        "each arm's median (ms), and the median of the per-round ratios (ours / single runs).",
        "",
        "| model | ours | Timer, single runs | ratio | median of per-round ratios | Timer, blocked_autorange "
        "| ours / blocked | runs per block | others' CPU share per round | tries discarded | within 5% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["fidelity"].items():
        busy = ", ".join(f"{m['others_share']:.0%}" for m in f["machine"])
        discarded = sum(len(m["discarded_for_others_share"]) for m in f["machine"])
        numbers = sorted(set(f["blocked"]["numbers_per_run"]))
        ok = "yes" if abs(f["ratio"] - 1) <= GOAL else "NO"
        lines.append(
            f"| {name} | {f['ours_median_ms']:.3f} | {f['timer_median_ms']:.3f} | {f['ratio']:.3f} | "
            f"{f['paired_ratio']:.3f} | {f['blocked']['median_ms']:.3f} | {f['blocked']['ratio']:.3f} | "
            f"{', '.join(map(str, numbers))} | {busy} | {discarded} | {ok} |"
        )
    lines += ["", "Per-round ratios, ours / single runs:", ""]
    for name, f in report["fidelity"].items():
        lines.append(f"- {name}: {', '.join(f'{r:.3f}' for r in f['round_ratios'])}")
    lines += [
        "",
        "Per run, without the drift between windows: our timed call (the library's runner: its copy of the "
        "network and its input) alternated every 3 runs with a bare `model(x)` on the benchmark's network, "
        "medians in ms:",
        "",
        "| model | our timed call | bare forward | ratio | runs each | others' CPU share |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in report["fidelity"].items():
        pr = f["per_run"]
        lines.append(
            f"| {name} | {pr['ours_timed_call_median_ms']:.3f} | {pr['bare_forward_median_ms']:.3f} | "
            f"{pr['ratio']:.3f} | {pr['n']} | {pr['machine']['others_share']:.0%} |"
        )
    rep = report["repeatability"]
    lines += [
        "",
        "## (b) Repeatability",
        "",
        f"`{rep['command']}` run {len(rep['runs'])} times as separate processes (an empty cache folder).",
        "",
        "| run | median | p10 | p90 | IQR | n | stable | others' CPU share | tries discarded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rep["runs"], 1):
        lines.append(
            f"| {i} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | {r['iqr_ms']:.2f} | "
            f"{r['n_samples']} | {'yes' if r['stable'] else 'no'} | {r['machine']['others_share']:.0%} | "
            f"{len(r['machine']['discarded_for_others_share'])} |"
        )
    lines += [
        "",
        f"Medians: {', '.join(f'{m:.2f}' for m in rep['medians_ms'])} ms; (max - min) / median = "
        f"{rep['range_rel']:.1%}, coefficient of variation {rep['cv']:.1%}.",
        "",
        "## (c) GPU",
        "",
        report["gpu_note"],
        "",
        "## Verdict",
        "",
        report["verdict"],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lpsnet_tiny,lpsnet_s,lpsnet_m")
    p.add_argument("--input", default="512x1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="Interleaved fidelity rounds per model.")
    p.add_argument(
        "--timer-s",
        type=float,
        default=1.0,
        help="Shortest min_run_time for blocked_autorange; it also runs at least as long as our last sampling took.",
    )
    p.add_argument("--repeat-model", default="lpsnet_s")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.1,
        help="Before each round, wait until other processes use less than this share of the CPUs.",
    )
    p.add_argument("--max-wait", type=float, default=300.0, help="Longest wait for a quiet machine per round (s).")
    p.add_argument("--retries", type=int, default=5, help="Times a round is run again when others got busy during it.")
    p.add_argument("--out", default="benchmarks/results/latency_cpu")
    args = p.parse_args()
    hw = tuple(int(v) for v in args.input.lower().split("x"))
    # measure_latency switches the process's malloc to keep freed memory (it would otherwise page a
    # forward pass's activations in afresh on every run); the Timer must run under the same allocator.
    allocator = steady_cpu_allocator()
    quiet = {"threshold": args.quiet_threshold, "max_wait_s": args.max_wait}
    before = loadavg()
    print("(a) fidelity", flush=True)
    fid = {
        name: fidelity(name, hw, args.threads, args.rounds, args.timer_s, quiet, args.retries)
        for name in args.models.split(",")
    }
    print("(b) repeatability", flush=True)
    rep = repeatability(args.repeat_model, hw, args.threads, args.repeats, quiet, args.retries)
    print("(c) GPU", flush=True)
    gpu_note = "GPU: `python benchmarks/bench_gpu.py` (results in benchmarks/results/latency_gpu.md)."
    after = loadavg()
    missed = [n for n, f in fid.items() if abs(f["ratio"] - 1) > GOAL]
    ratios = ", ".join(f"{n} {f['ratio']:.3f}" for n, f in fid.items())
    if missed:
        verdict = f"Fidelity goal MISSED (ours / Timer single runs: {ratios}; goal within {GOAL:.0%}). "
    else:
        verdict = (
            f"Fidelity: our median is within {GOAL:.0%} of torch.utils.benchmark's median of single runs for every "
            f"model ({ratios}). "
        )
    paired = ", ".join(f"{n} {f['paired_ratio']:.3f}" for n, f in fid.items())
    runs = ", ".join(f"{n} {f['per_run']['ratio']:.3f}" for n, f in fid.items())
    blocked = ", ".join(f"{n} {f['blocked']['ratio']:.3f}" for n, f in fid.items())
    verdict += (
        f"Median of per-round ratios: {paired}. Per run, alternated every 3 runs: {runs}. "
        f"Against blocked_autorange's median of block means: {blocked}. "
    )
    verdict += (
        f"Repeatability: the medians of {args.repeats} separate `scaler bench` runs span {rep['range_rel']:.1%} "
        f"of their median (CV {rep['cv']:.1%})."
    )
    first = next(iter(fid.values()))["ours"][0]
    report = {
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d"),
        "fingerprint": first["fingerprint"],
        "fingerprint_hash": first["fingerprint_hash"],
        "rule": first["rule"],
        "timer_s": args.timer_s,
        "rounds": args.rounds,
        "quiet": quiet,
        "retries": args.retries,
        "cpu_allocator": allocator,
        "loadavg_before": before,
        "loadavg_after": after,
        "fidelity": fid,
        "repeatability": rep,
        "gpu_note": gpu_note,
        "verdict": verdict,
    }
    write_report(args.out, report, to_markdown)
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
