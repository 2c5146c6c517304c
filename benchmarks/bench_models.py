"""CPU latency of the named LPS-Nets: eval form vs deploy form (BN folded), each with and without
channels_last, measured side by side (interleaved rounds) in one process.

    python benchmarks/bench_models.py --threads 2 --input 512x1024 --out benchmarks/results/models_cpu

writes ``<out>.json`` (every sample and the machine fingerprint) and ``<out>.md`` (the table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import command_line, machine, machine_line, write_report

from models import create_model, reparameterize

VARIANTS = ("eval", "deploy", "eval+channels_last", "deploy+channels_last")


def build(name: str, variant: str, hw: tuple[int, int]) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    if variant.startswith("deploy"):
        model = reparameterize(model)
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    if variant.endswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    return model, x


def percentile(sorted_ms: list[float], q: float) -> float:
    k = (len(sorted_ms) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (k - lo)


def summarise(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    med = statistics.median(s)
    return {
        "median_ms": med,
        "p10_ms": percentile(s, 0.1),
        "p90_ms": percentile(s, 0.9),
        "iqr_ms": percentile(s, 0.75) - percentile(s, 0.25),
        "rel_spread": (percentile(s, 0.9) - percentile(s, 0.1)) / med,
        "n": len(s),
    }


def run(models: list[str], hw: tuple[int, int], threads: int, repeats: int, warmup: int) -> dict:
    torch.set_num_threads(threads)
    results = {}
    for name in models:
        built = {v: build(name, v, hw) for v in VARIANTS}
        with torch.inference_mode():
            ref = built["eval"][0](built["eval"][1], upsample=False)
            for v, (m, x) in built.items():
                out = m(x, upsample=False)
                err = (out - ref).abs().max().item()
                if err > 1e-3 * max(1.0, ref.abs().max().item()):
                    raise SystemExit(f"{name} {v}: output differs from eval form by {err}")
                for _ in range(warmup):
                    m(x, upsample=False)
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            # Interleaved rounds: slow drifts of the machine hit every variant alike.
            for _ in range(repeats):
                for v, (m, x) in built.items():
                    t0 = time.perf_counter()
                    m(x, upsample=False)
                    samples[v].append((time.perf_counter() - t0) * 1e3)
        results[name] = {v: {**summarise(s), "samples_ms": s} for v, s in samples.items()}
        base = results[name]["eval"]["median_ms"]
        for v in VARIANTS:
            results[name][v]["ratio_to_eval"] = results[name][v]["median_ms"] / base
        print(name, {v: round(results[name][v]["median_ms"], 2) for v in VARIANTS}, flush=True)
    return results


def to_markdown(report: dict) -> str:
    fp = report["fingerprint"]
    lines = [
        "# CPU latency of the named LPS-Nets: eval vs deploy form, NCHW vs channels_last",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(fp)}, batch 1, input 1x3x{fp['input'][0]}x{fp['input'][1]}, fp32, eager PyTorch, "
        "network up to the head's logits (no final upsample). "
        f"{fp['repeats']} interleaved rounds after {fp['warmup']} warm-up runs; median and p10-p90 in ms.",
        "",
        "| model | " + " | ".join(VARIANTS) + " | deploy / eval |",
        "|---|" + "---|" * (len(VARIANTS) + 1),
    ]
    for name, r in report["results"].items():
        cells = [f"{r[v]['median_ms']:.2f} ({r[v]['p10_ms']:.2f}-{r[v]['p90_ms']:.2f})" for v in VARIANTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['deploy']['ratio_to_eval']:.3f} |")
    lines += ["", report["verdict"], ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lpsnet_tiny,lpsnet_s,lpsnet_m,lpsnet_l")
    p.add_argument("--input", default="512x1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/models_cpu")
    args = p.parse_args()
    hw = tuple(int(v) for v in args.input.lower().split("x"))
    results = run(args.models.split(","), hw, args.threads, args.repeats, args.warmup)
    slower = [n for n, r in results.items() if r["deploy"]["median_ms"] > r["eval"]["p90_ms"]]
    verdict = (
        "Deploy form is not slower than eval form for any model (its median is within the eval form's p90)."
        if not slower
        else f"Deploy form SLOWER than eval form for: {', '.join(slower)}."
    )
    report = {
        "command": command_line(),
        "fingerprint": {**machine(args.threads), "input": list(hw), "repeats": args.repeats, "warmup": args.warmup},
        "results": results,
        "verdict": verdict,
    }
    write_report(args.out, report, to_markdown)
    if slower:
        sys.exit(1)


if __name__ == "__main__":
    main()
