"""Can ``scaler bench`` be trusted? Fidelity against torch.utils.benchmark, repeatability, and the GPU runtimes.

    python benchmarks/bench_latency.py --threads 2 --input 512x1024 --out benchmarks/results/latency_cpu

(a) Fidelity: for each model, our median (``measure_latency``, default stopping rule, deploy form,
    no final upsample) and ``torch.utils.benchmark.Timer.blocked_autorange`` on the same network,
    input and thread count, under ``torch.inference_mode``, in interleaved rounds (ours first in
    odd rounds, the Timer first in even ones) so drifts of the machine hit both alike. Goal: the
    ratio of the medians within 5%.
(b) Repeatability: ``scaler bench --no-cache --json`` run as separate processes, medians compared.
(c) GPU (only where ``torch.cuda.is_available()``): S/M/L at 1x3x1024x2048, fp32 and fp16, eager vs
    CUDA graph vs onnxruntime (and TensorRT if installed), written to ``--gpu-out``.

Writes ``<out>.json`` (every sample and the fingerprint) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from models import LPSNet, get_arch, reparameterize
from scaler.errors import UserError
from scaler.latency import measure_latency, steady_cpu_allocator

GPU_MODELS = ("lpsnet_s", "lpsnet_m", "lpsnet_l")
GPU_BACKENDS = ("torch", "cudagraph", "onnxruntime", "tensorrt")
GOAL = 0.05


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]), idle


def busy_share(window_s: float = 1.0) -> float:
    """Share of all CPUs busy over ``window_s`` while this process sleeps: other processes' load."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(window_s)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):  # not Linux: cannot tell, assume quiet
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(threshold: float, max_wait_s: float) -> dict[str, float]:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold`` of the CPUs.

    On a shared machine another process on the same cores stalls an OpenMP team at every barrier,
    which turns a 3 ms forward pass into 140 ms; measuring then says nothing about either tool.
    """
    start = time.perf_counter()
    busy = busy_share()
    while busy > threshold and time.perf_counter() - start < max_wait_s:
        busy = busy_share(2.0)
    return {"busy_share": round(busy, 3), "waited_s": round(time.perf_counter() - start, 1)}


def _own_cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for `scaler bench` processes
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class OthersCPU:
    """Share of all CPUs that other processes used while the ``with`` block ran (``.share``)."""

    share = 0.0

    def __enter__(self) -> OthersCPU:
        self._own = _own_cpu_s()
        try:
            self._cpu = _cpu_times()
        except (OSError, ValueError, IndexError):
            self._cpu = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cpu is None:
            return
        total1, idle1 = _cpu_times()
        tick = os.sysconf("SC_CLK_TCK")
        total = (total1 - self._cpu[0]) / tick
        busy = total - (idle1 - self._cpu[1]) / tick
        self.share = max(0.0, busy - (_own_cpu_s() - self._own)) / max(total, 1e-9)


def clean_round(step: Callable[[], Any], quiet: dict[str, float], retries: int) -> tuple[Any, dict[str, Any]]:
    """Run ``step`` on a quiet machine; run it again (up to ``retries`` times) if others got busy meanwhile."""
    discarded = []
    for attempt in range(retries + 1):
        before = wait_for_quiet(**quiet)
        with OthersCPU() as during:
            value = step()
        if during.share <= quiet["threshold"] or attempt == retries:
            break
        discarded.append(round(during.share, 3))
    return value, {**before, "others_share": round(during.share, 3), "discarded_for_others_share": discarded}


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
        r = measure_latency(model, input_hw=hw, threads=threads).to_dict()
        window[0] = max(timer_s, sum(r["samples_ms"]) / 1e3)
        return r

    def run_theirs() -> dict[str, Any]:
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

    def one_round(ours_first: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        if ours_first:
            o = run_ours()
            return o, run_theirs()
        th = run_theirs()
        return run_ours(), th

    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    machine: list[dict[str, Any]] = []
    for i in range(rounds):
        (o, th), m = clean_round(lambda first=i % 2 == 0: one_round(first), quiet, retries)
        ours.append(o)
        theirs.append(th)
        machine.append(m)
        print(
            f"  {name} round {i + 1}: ours {o['median_ms']:.3f} ms (n={o['n_samples']}, {o['stop_reason']}), "
            f"torch.utils.benchmark {th['median_ms']:.3f} ms ({th['blocks']} blocks of {th['number_per_run']}); "
            f"others' CPU share {m['others_share']:.0%}, {len(m['discarded_for_others_share'])} busy tries discarded",
            flush=True,
        )
    ours_median = statistics.median(r["median_ms"] for r in ours)
    theirs_median = statistics.median(r["median_ms"] for r in theirs)
    per_round = [o["median_ms"] / t["median_ms"] for o, t in zip(ours, theirs, strict=True)]
    return {
        "ours_median_ms": ours_median,
        "timer_median_ms": theirs_median,
        "ratio": ours_median / theirs_median,
        "round_ratios": per_round,
        "machine": machine,
        "ours": ours,
        "timer": theirs,
    }


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


def gpu_section(out: Path) -> str:
    """S/M/L at 1x3x1024x2048 on the GPU; returns a note for the CPU report."""
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} has no CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
        note = f"GPU section skipped: torch.cuda.is_available() is False ({why})."
        print(note)
        return note
    rows = []
    for name in GPU_MODELS:
        for dtype in ("fp32", "fp16"):
            for backend in GPU_BACKENDS:
                try:
                    r = measure_latency(name, input_hw=(1024, 2048), device="cuda", dtype=dtype, backend=backend)
                    rows.append({"model": name, "dtype": dtype, "backend": backend, **r.to_dict()})
                    print(f"  {name} {dtype} {backend}: {r.median_ms:.3f} ms (n={r.n_samples}, stable={r.stable})")
                except UserError as e:
                    rows.append({"model": name, "dtype": dtype, "backend": backend, "skipped": str(e)})
                    print(f"  {name} {dtype} {backend}: skipped ({e})")
    done = [r for r in rows if "fingerprint" in r]
    fp = done[0]["fingerprint"] if done else {}
    report = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [
        "# GPU latency of LPS-Net S/M/L at 1x3x1024x2048 (batch 1, deploy form, no final upsample)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Device: {fp.get('device_name')} (CUDA {fp.get('cuda')}, cuDNN {fp.get('cudnn')}, "
        f"TF32 convolutions {'on' if fp.get('cudnn_allow_tf32') else 'off'} for torch fp32), torch {fp.get('torch')}. "
        "Median of single runs in ms (p10-p90); CUDA events for torch/cudagraph/TensorRT, wall clock for onnxruntime.",
        "",
        "| model | dtype | " + " | ".join(GPU_BACKENDS) + " |",
        "|---|---|" + "---|" * len(GPU_BACKENDS),
    ]
    for name in GPU_MODELS:
        for dtype in ("fp32", "fp16"):
            cells = []
            for backend in GPU_BACKENDS:
                r = next(r for r in rows if (r["model"], r["dtype"], r["backend"]) == (name, dtype, backend))
                if "skipped" in r:
                    cells.append("skipped")
                else:
                    cells.append(f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})")
            lines.append(f"| {name} | {dtype} | " + " | ".join(cells) + " |")
    skipped = sorted({f"{r['backend']}: {r['skipped']}" for r in rows if "skipped" in r})
    if skipped:
        lines += ["", "Skipped:", *[f"- {s}" for s in skipped]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return f"GPU results: {out.with_suffix('.md')}."


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
        f"Ours: `measure_latency` with its default stopping rule ({report['rule']}). Theirs: "
        f"`torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`, same network object, input, "
        f"threads and CPU allocator ({report['cpu_allocator']}), with min_run_time at least {report['timer_s']:g} s "
        "and at least as long as our last sampling phase (this machine's speed drifts by 10-20% over seconds, so "
        "both sides get windows of similar length). "
        f"{report['rounds']} rounds per model, ours first in odd rounds and the Timer first in even ones; the table "
        "gives the median over rounds of each side's median (ms).",
        "",
        "| model | ours | torch.utils.benchmark | ratio | per-round ratios | others' CPU share per round "
        "| tries discarded | within 5% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["fidelity"].items():
        rounds = ", ".join(f"{r:.3f}" for r in f["round_ratios"])
        busy = ", ".join(f"{m['others_share']:.0%}" for m in f["machine"])
        discarded = sum(len(m["discarded_for_others_share"]) for m in f["machine"])
        ok = "yes" if abs(f["ratio"] - 1) <= GOAL else "NO"
        lines.append(
            f"| {name} | {f['ours_median_ms']:.3f} | {f['timer_median_ms']:.3f} | {f['ratio']:.3f} | {rounds} | "
            f"{busy} | {discarded} | {ok} |"
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
    p.add_argument("--rounds", type=int, default=15, help="Interleaved fidelity rounds per model.")
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
    p.add_argument("--gpu-out", default="benchmarks/results/latency_gpu")
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
    gpu_note = gpu_section(Path(args.gpu_out))
    after = loadavg()
    missed = [n for n, f in fid.items() if abs(f["ratio"] - 1) > GOAL]
    ratios = ", ".join(f"{n} {f['ratio']:.3f}" for n, f in fid.items())
    if missed:
        verdict = f"Fidelity goal MISSED (ratios {ratios}; goal within {GOAL:.0%}). "
    else:
        verdict = f"Fidelity: our median is within {GOAL:.0%} of torch.utils.benchmark's for every model ({ratios}). "
    verdict += (
        f"Repeatability: the medians of {args.repeats} separate `scaler bench` runs span {rep['range_rel']:.1%} "
        f"of their median (CV {rep['cv']:.1%})."
    )
    first = next(iter(fid.values()))["ours"][0]
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
