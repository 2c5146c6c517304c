"""Does the greedy expansion find a better speed/accuracy frontier than Optuna's samplers, for the same work?

    python benchmarks/bench_search.py --space search_spaces/lpsnet_demo.yaml --budget-ms 2.0 \
        --seeds 0 1 2 --out benchmarks/results/search_strategies

For each seed: the greedy search runs first on the space (training seed = the seed, latency budget
``--budget-ms``); the number of candidates it trained is the evaluation budget each baseline
(random, nsga2, tpe; sampler seed = the seed) then gets as ``stopping.max_trials``. Baseline
proposals over the latency budget are recorded without training, as in any search, and do not
count against that budget. Every run shares one fresh latency cache, so an architecture measured
once has the same latency in every run: the comparison is between strategies, not between
measurements. Hypervolume is taken against one reference point for all runs, (budget, mIoU 0).

Also reported per run: wall time split into training, latency measurement and the tool's own
overhead (strategy, storage, bookkeeping: the rest), and the share of the CPUs other processes
used while the run went on.

Writes ``<out>.json`` (every run's trials and timings), ``<out>.md`` (the tables) and
``<out>_seed<first>.png`` (the first seed's frontiers, drawn by ``scaler plot --compare``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine, machine_line

from scaler.measure import LatencyCache
from scaler.measure.load import OthersCPU, wait_for_quiet
from scaler.report import hypervolume, trials_frame
from scaler.report.draw import plot_run
from scaler.search.run import run_search
from scaler.search.space import SearchSpace, load_space
from scaler.search.store import open_run

BASELINES = ("random", "nsga2", "tpe")
GOAL_OVERHEAD = 0.05


def _space(base: SearchSpace, seed: int, budget_ms: float, max_trials: int | None) -> SearchSpace:
    return dataclasses.replace(
        base,
        training=dataclasses.replace(base.training, seed=seed),
        stopping=dataclasses.replace(base.stopping, latency_budget_ms=budget_ms, max_trials=max_trials),
    )


def _run(
    space: SearchSpace, run_dir: Path, strategy: str, seed: int, cache: LatencyCache, budget_ms: float
) -> dict[str, Any]:
    busy_before, waited = wait_for_quiet(0.1, 120.0, window_s=1.0)
    print(f"  {strategy} (seed {seed}) ...", flush=True)
    with OthersCPU() as others:
        summary = run_search(space, run_dir, strategy=strategy, seed=seed, latency_cache=cache, progress=False)
    df = trials_frame(open_run(run_dir))
    complete = df[df["state"] == "COMPLETE"]
    over = int(df["over_budget"].fillna(False).astype(bool).sum()) if "over_budget" in df else 0
    hv = hypervolume(zip(complete["latency_ms"], complete["miou"], strict=True), ref=(budget_ms, 0.0))
    inside = complete[complete["latency_ms"] <= budget_ms]
    best = inside.loc[inside["miou"].idxmax()] if len(inside) else None
    other = summary.seconds - summary.latency_seconds - summary.train_seconds
    row = {
        "strategy": strategy,
        "seed": seed,
        "stop_reason": summary.stop_reason,
        "trials": summary.trials,
        "trained": int(len(df) - over),
        "over_budget_not_trained": over,
        "complete": summary.complete,
        "failed_trained": int(len(df) - over - summary.complete),
        "hypervolume": hv.value,
        "frontier_points": hv.n_points,
        "best_miou": None if best is None else float(best["miou"]),
        "best_latency_ms": None if best is None else float(best["latency_ms"]),
        "best_arch": None if best is None else str(best["arch"]),
        "seconds": summary.seconds,
        "train_seconds": summary.train_seconds,
        "latency_seconds": summary.latency_seconds,
        "overhead_seconds": other,
        "overhead_share": other / summary.seconds,
        "others_cpu_share": others.share,
        "busy_before": busy_before,
        "waited_s": waited,
        "points": [[float(a), float(b)] for a, b in zip(complete["latency_ms"], complete["miou"], strict=True)],
    }
    best_text = "-" if best is None else f"{100 * row['best_miou']:.2f}% at {row['best_latency_ms']:.2f} ms"
    print(
        f"    {row['trained']} trained ({over} over budget), HV {hv.value:.4f}, best {best_text}; "
        f"{summary.seconds:.0f} s (train {summary.train_seconds:.0f}, latency {summary.latency_seconds:.0f}, "
        f"overhead {other:.1f} = {row['overhead_share']:.1%}); others' CPU {others.share or 0:.0%}",
        flush=True,
    )
    return row


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def _markdown(report: dict[str, Any], png: str | None) -> str:
    rows = report["runs"]
    seeds = report["seeds"]
    strategies = [s for s in ("greedy", *BASELINES) if any(r["strategy"] == s for r in rows)]
    lines = [
        "# Search strategies: greedy expansion vs Optuna samplers",
        "",
        *(
            []
            if report["complete"]
            else [f"**Partial:** seeds asked {report['seeds_asked']}; the runs finished so far are below.", ""]
        ),
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}; date {report['machine']['date']}.",
        "",
        f"Space: `{report['space_file']}` (training seed = the seed), latency budget {report['budget_ms']:g} ms. "
        "Per seed the greedy search runs first; the number of candidates it trained is each baseline's "
        "`stopping.max_trials` (proposals over the budget are recorded untrained and do not count). "
        "All runs share one latency cache, so each architecture has one latency everywhere. Hypervolume: "
        f"latency (ms) x mIoU (fraction) against the reference point ({report['budget_ms']:g} ms, 0).",
        "",
        "## Hypervolume (higher is better)",
        "",
        "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | best mIoU under budget (mean) |",
        "|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for name in strategies:
        mine = [r for r in rows if r["strategy"] == name]
        by_seed = {r["seed"]: r for r in mine}
        cells = [f"{by_seed[s]['hypervolume']:.4f}" if s in by_seed else "-" for s in seeds]
        bests = [100 * r["best_miou"] for r in mine if r["best_miou"] is not None]
        best = f"{statistics.fmean(bests):.2f}%" if bests else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_sd([r['hypervolume'] for r in mine])} | {best} |")
    wins = report["greedy_wins"]
    ratio = wins["ratio_to_best_baseline"]
    lines += [
        "",
        f"Greedy's hypervolume is the highest in {wins['seeds_won']} of {len(seeds)} seeds; "
        f"mean greedy / best baseline mean = {'-' if ratio is None else f'{ratio:.3f}'}.",
        "",
        "## Every run",
        "",
        "| strategy | seed | trained | over budget (untrained) | failed | HV | best mIoU @ latency | stop | "
        "wall s | train s | latency s | overhead s (share) | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = "-" if r["best_miou"] is None else f"{100 * r['best_miou']:.2f}% @ {r['best_latency_ms']:.2f} ms"
        others = "-" if r["others_cpu_share"] is None else f"{r['others_cpu_share']:.0%}"
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {r['trained']} | {r['over_budget_not_trained']} | "
            f"{r['failed_trained']} | {r['hypervolume']:.4f} | {best} | {r['stop_reason']} | {r['seconds']:.0f} | "
            f"{r['train_seconds']:.0f} | {r['latency_seconds']:.1f} | {r['overhead_seconds']:.1f} "
            f"({r['overhead_share']:.1%}) | {others} |"
        )
    total = report["time_split"]
    lines += [
        "",
        "## Wall time",
        "",
        f"All {len(rows)} runs: {total['seconds']:.0f} s, of which training {total['train_share']:.1%}, latency "
        f"measurement {total['latency_share']:.1%}, tool overhead {total['overhead_share']:.1%} (goal: under "
        f"{GOAL_OVERHEAD:.0%}; largest single run {total['max_run_overhead_share']:.1%}: "
        f"{'met' if total['max_run_overhead_share'] < GOAL_OVERHEAD else 'MISSED'}). Latency time falls in later "
        "runs because the shared cache already holds the architectures measured before.",
    ]
    if png:
        lines += ["", f"Frontiers of seed {seeds[0]}: `{png}`.", "", f"![frontiers]({Path(png).name})"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="search_spaces/lpsnet_demo.yaml")
    p.add_argument("--budget-ms", type=float, default=2.0, help="Latency budget and hypervolume reference.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(BASELINES), choices=BASELINES)
    p.add_argument("--work-dir", default=None, help="Where the runs go (default: a temporary folder).")
    p.add_argument("--out", default="benchmarks/results/search_strategies")
    args = p.parse_args()
    base = load_space(args.space)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    png: Path | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        cache = LatencyCache(work / "latency-cache")
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            space = _space(base, seed, args.budget_ms, None)
            greedy = _run(space, work / f"greedy-s{seed}", "greedy", seed, cache, args.budget_ms)
            rows.append(greedy)
            _write(out, args, base, rows, png, started)
            for name in args.strategies:
                space = _space(base, seed, args.budget_ms, greedy["trained"])
                rows.append(_run(space, work / f"{name}-s{seed}", name, seed, cache, args.budget_ms))
                _write(out, args, base, rows, png, started)
            if png is None:
                png = out.with_name(f"{out.name}_seed{seed}.png")
                plot_run(work / f"greedy-s{seed}", png, compare=[work / f"{n}-s{seed}" for n in args.strategies])
                png.with_name(f"{png.stem}_steps{png.suffix}").unlink(missing_ok=True)  # greedy's own figure
                _write(out, args, base, rows, png, started)
    print(out.with_suffix(".md").read_text())
    return 0


def _write(
    out: Path, args: argparse.Namespace, base: SearchSpace, rows: list[dict[str, Any]], png: Path | None, started: float
) -> None:
    """Write the report of the runs so far (the benchmark is long: partial results survive a stop)."""
    seconds = sum(r["seconds"] for r in rows)
    strategies = [s for s in ("greedy", *args.strategies) if any(r["strategy"] == s for r in rows)]
    means = {s: statistics.fmean([r["hypervolume"] for r in rows if r["strategy"] == s]) for s in strategies}
    baseline_means = [v for k, v in means.items() if k != "greedy"]
    seeds_done = sorted({r["seed"] for r in rows})
    seeds_won = sum(
        all(g["hypervolume"] >= r["hypervolume"] for r in rows if r["seed"] == g["seed"] and r["strategy"] != "greedy")
        for g in rows
        if g["strategy"] == "greedy"
    )
    report = {
        "command": command_line(),
        "machine": machine(base.latency.threads or 0),
        "space_file": args.space,
        "space": base.to_dict(),
        "budget_ms": args.budget_ms,
        "seeds": seeds_done,
        "seeds_asked": args.seeds,
        "complete": len(rows) == len(args.seeds) * (1 + len(args.strategies)),
        "runs": rows,
        "greedy_wins": {
            "seeds_won": seeds_won,
            "ratio_to_best_baseline": means["greedy"] / max(baseline_means) if baseline_means else None,
        },
        "time_split": {
            "seconds": seconds,
            "train_share": sum(r["train_seconds"] for r in rows) / seconds,
            "latency_share": sum(r["latency_seconds"] for r in rows) / seconds,
            "overhead_share": sum(r["overhead_seconds"] for r in rows) / seconds,
            "max_run_overhead_share": max(r["overhead_share"] for r in rows),
        },
        "benchmark_seconds": time.perf_counter() - started,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(report, None if png is None else str(png)))


if __name__ == "__main__":
    sys.exit(main())
