"""Inherited weights in the greedy search: scratch vs inherit vs inherit + halving (issue 12's benchmark).

    python benchmarks/bench_inherit.py --seeds 0 1 2 --out benchmarks/results/inherit
    python benchmarks/bench_inherit.py --quick          # 1 seed, the demo space, 2 steps, 5 fixed networks

For each space (the demo, and ``lpsnet_depth.yaml`` where long training rewards depth) and seed, the
greedy search runs three times, the space changed only in ``training.init`` (``scratch``,
``inherit``) and, for the third mode, ``greedy: {halving: true}`` (successive halving within a
step; reported as unavailable while the space loader does not know the option). All runs share
one fresh latency cache, so the paths differ only by the proxy. Per run: training seconds per step
and in all, trained trials (controls included) and iterations, the path (operators per step) and
how often it grew depth.

Ground truth: every network on every path, and a fixed set (the start, its one-step children by
every operator and its depth children applied twice), each trained from scratch for ``--factor``
times the space's schedule with the same recipe and seed. On the fixed set, each proxy's ranking
is compared with the ground truth by Kendall's tau-b: the scratch proxy trains N iterations from
seeded weights; the inherit proxy trains the start N iterations, grows it into the network
(``models.grow_state_dict``, as the search does) and trains N/2 more (the start itself: its control),
the schedule the inherit modes give their candidates (``training.inherit_iters``).
The picks are compared by ground-truth mIoU at equal latency: each path read (linearly between its
networks) at the latency of the fastest path end among the modes of that seed.

Trainings of the fixed set and the ground truth are cached in ``--truth`` (default
``benchmarks/results/inherit_truth.json``, keyed by recipe, iterations, seed and network), so a rerun,
or the full run after ``--quick``, only trains what is new. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import command_line, kendall_tau_b, machine, machine_line, write_report
from _inherit import (
    MODES,
    TruthCache,
    as_arch,
    fixed_set,
    inherited_iters,
    latency_of,
    mean,
    miou_at_latency,
    mode_space,
    run_facts,
)

from scaler.measure import LatencyCache
from scaler.search.run import run_search
from scaler.search.space import SearchSpace, load_space

SPACES = ("search_spaces/lpsnet_demo.yaml", "search_spaces/lpsnet_depth.yaml")
GOAL_TIME_RATIO = 1 / 3
GOAL_TAU = 0.8


def _search(space: SearchSpace, run_dir: Path, seed: int, cache: LatencyCache) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = run_search(space, run_dir, strategy="greedy", seed=seed, latency_cache=cache, progress=False)
    facts = run_facts(run_dir, space)
    facts.update(stop_reason=summary.stop_reason, seconds=time.perf_counter() - t0)
    return facts


def _space_block(
    space_file: str,
    args: argparse.Namespace,
    work: Path,
    cache: LatencyCache,
    truth: TruthCache,
    block: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Every run, ground truth and comparison of one space, filled into ``block`` as they finish
    (``save`` writes the report so far after each: the benchmark takes hours, a stop keeps what is done)."""
    base = load_space(space_file)
    n = base.training.iters
    long_iters = n * args.factor
    runs: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    fixed_rows: list[dict[str, Any]] = []
    picks: list[dict[str, Any]] = []
    block.update(
        space_file=space_file,
        space=base.to_dict(),
        proxy_iters=n,
        truth_iters=long_iters,
        runs=runs,
        unavailable=unavailable,
        fixed=fixed_rows,
        picks=picks,
        complete=False,
    )
    for seed in args.seeds:
        for mode in MODES:
            space = mode_space(space_file, mode, seed, args.max_steps, load_guard=not args.no_load_guard)
            if isinstance(space, str):
                unavailable[mode] = space
                print(f"  {base.name} {mode}: unavailable ({space})", flush=True)
                continue
            print(f"  {base.name} seed {seed} {mode} ...", flush=True)
            row = _search(space, work / f"{base.name}-{mode}-s{seed}", seed, cache)
            row.update(mode=mode, seed=seed)
            runs.append(row)
            save()
            print(
                f"    {row['trained']} trained, {row['iters']} iters, train {row['train_seconds']:.0f} s; path "
                + " > ".join("+".join(p["operators"]) or "stop" for p in row["path"]),
                flush=True,
            )
        scratch_space = mode_space(space_file, "scratch", seed, args.max_steps, load_guard=not args.no_load_guard)
        assert isinstance(scratch_space, SearchSpace)
        nets = fixed_set(scratch_space.start, scratch_space, args.quick)
        rows = []
        for arch in nets:
            gt = truth.scratch(scratch_space, arch, long_iters, seed)
            sp = truth.scratch(scratch_space, arch, n, seed)
            ip = truth.inherit(scratch_space, arch, n, seed, inherited_iters(n))
            rows.append({"arch": arch.inline(), "truth": gt["miou"], "scratch": sp["miou"], "inherit": ip["miou"]})
            print(
                f"    fixed {arch.inline()}: truth {gt['miou']}, scratch {sp['miou']}, inherit {ip['miou']}", flush=True
            )
        ok = [r for r in rows if None not in (r["truth"], r["scratch"], r["inherit"])]
        fixed_rows.append(
            {
                "seed": seed,
                "networks": rows,
                "tau_scratch": kendall_tau_b([r["scratch"] for r in ok], [r["truth"] for r in ok]),
                "tau_inherit": kendall_tau_b([r["inherit"] for r in ok], [r["truth"] for r in ok]),
            }
        )
        save()
        picks.append(_picks(scratch_space, [r for r in runs if r["seed"] == seed], long_iters, seed, cache, truth))
        save()
    block["complete"] = True


def _picks(
    space: SearchSpace, runs: list[dict[str, Any]], long_iters: int, seed: int, cache: LatencyCache, truth: TruthCache
) -> dict[str, Any]:
    """Ground truth of every network on each mode's path, and each path read at the common latency."""
    paths: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        points = []
        for spec in r["path_archs"]:
            arch = as_arch(spec, space.start)
            gt = truth.scratch(space, arch, long_iters, seed)
            points.append({"arch": spec, "latency_ms": latency_of(arch, space, cache), "truth": gt["miou"]})
        paths[r["mode"]] = points
    ends = [p[-1]["latency_ms"] for p in paths.values() if p]
    common = min(ends) if ends else None
    at = {
        mode: None
        if common is None
        else miou_at_latency([(p["latency_ms"], p["truth"]) for p in pts if p["truth"] is not None], common)
        for mode, pts in paths.items()
    }
    return {"seed": seed, "paths": paths, "common_latency_ms": common, "truth_at_common": at}


def _goals(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of the issue, over every space and seed: met, missed, unavailable (a mode not built)
    or not measured (yet: a partial report)."""
    runs = [r for b in blocks for r in b["runs"]]

    def total(mode: str) -> float | None:
        return mean([r["train_seconds"] for r in runs if r["mode"] == mode])

    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "missed"

    scratch_t, inherit_t, halving_t = total("scratch"), total("inherit"), total("inherit+halving")
    plain = "-" if not scratch_t or inherit_t is None else f"{inherit_t / scratch_t:.2f}"
    why = next((b["unavailable"]["inherit+halving"] for b in blocks if "inherit+halving" in b["unavailable"]), None)
    if why is not None:
        time_goal = ("unavailable", f"{why}; inherit alone / scratch: {plain}")
    elif halving_t is None or not scratch_t:
        time_goal = ("not measured", f"inherit alone / scratch: {plain}")
    else:
        ratio = halving_t / scratch_t
        time_goal = (status(ratio <= GOAL_TIME_RATIO), f"mean ratio {ratio:.2f} (inherit alone: {plain})")
    taus = [(f["tau_inherit"], f["tau_scratch"]) for b in blocks for f in b["fixed"]]
    ti, ts = mean([t[0] for t in taus]), mean([t[1] for t in taus])
    at = [p["truth_at_common"] for b in blocks for p in b["picks"]]
    mi, ms = mean([a.get("inherit") for a in at]), mean([a.get("scratch") for a in at])
    return [
        {"goal": "inherit+halving training time <= 1/3 of scratch", "status": time_goal[0], "detail": time_goal[1]},
        {
            "goal": f"inherit tau-b >= {GOAL_TAU} and above scratch",
            "status": status(None if ti is None or ts is None else ti >= GOAL_TAU and ti > ts),
            "detail": f"mean tau-b inherit {_f(ti)}, scratch {_f(ts)} (fixed set, {len(taus)} space-seeds)",
        },
        {
            "goal": "inherit's picks' ground-truth mIoU >= scratch's, at equal latency",
            "status": status(None if mi is None or ms is None else mi >= ms),
            "detail": f"mean at the common latency: inherit {_pct(mi)}, scratch {_pct(ms)}",
        },
    ]


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Inherited weights: scratch vs inherit vs inherit + halving",
        "",
        *([] if report["complete"] else ["**Partial:** the runs finished so far are below.", ""]),
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}; date {report['machine']['date']}. Seconds are wall time "
        "on this machine (shared machines give noisy seconds; mIoUs do not depend on it).",
        "",
        f"Seeds {report['seeds']}; ground truth = training from scratch for {report['factor']}x the space's "
        "schedule. All runs share one latency cache.",
        "",
        "## Goals",
        "",
        "| goal | status | measured |",
        "|---|---|---|",
        *(f"| {g['goal']} | **{g['status']}** | {g['detail']} |" for g in report["goals"]),
    ]
    for b in report["spaces"]:
        lines += _space_markdown(b)
    return "\n".join(lines) + "\n"


def _space_markdown(b: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## `{b['space_file']}`",
        "",
        f"Proxy {b['proxy_iters']} iterations, ground truth {b['truth_iters']}.",
        "",
        *(f"- `{mode}`: **unavailable**: {why}" for mode, why in b["unavailable"].items()),
        "",
        "### Runs",
        "",
        "| mode | seed | trained (controls) | iterations | train s | train s per step | path | depth steps | stop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in b["runs"]:
        per_step = ", ".join(f"{k}: {v:.0f}" for k, v in r["train_seconds_per_step"].items())
        path = (
            " > ".join(
                ("+".join(p["operators"]) + f" x{p['steplen']}") if p["operators"] else "stop" for p in r["path"]
            )
            or "-"
        )
        lines.append(
            f"| {r['mode']} | {r['seed']} | {r['trained']} ({r['controls']}) | {r['iters']} | "
            f"{r['train_seconds']:.0f} | {per_step} | {path} | {r['depth_steps']} of {len(r['path'])} | "
            f"{r['stop_reason']} |"
        )
    modes = [m for m in MODES if any(r["mode"] == m for r in b["runs"])]
    if modes:
        lines += [
            "",
            "| mode | mean train s | mean iterations | ratio to scratch (train s) | depth chosen (steps) |",
            "|---|---|---|---|---|",
        ]
        scratch = mean([r["train_seconds"] for r in b["runs"] if r["mode"] == "scratch"])
        for m in modes:
            t = mean([r["train_seconds"] for r in b["runs"] if r["mode"] == m])
            it = mean([r["iters"] for r in b["runs"] if r["mode"] == m])
            ratio = "-" if not scratch or t is None else f"{t / scratch:.2f}"
            mine = [r for r in b["runs"] if r["mode"] == m]
            depth = f"{sum(r['depth_steps'] for r in mine)} of {sum(len(r['path']) for r in mine)}"
            lines.append(f"| {m} | {t:.0f} | {it:.0f} | {ratio} | {depth} |")
    lines += ["", "### Fixed set: proxies against ground truth", ""]
    for f in b["fixed"]:
        lines += [
            f"Seed {f['seed']}: Kendall tau-b scratch **{_f(f['tau_scratch'])}**, inherit **{_f(f['tau_inherit'])}**.",
            "",
            "| network | ground truth | scratch proxy | inherit proxy |",
            "|---|---|---|---|",
            *(
                f"| `{n['arch']}` | {_pct(n['truth'])} | {_pct(n['scratch'])} | {_pct(n['inherit'])} |"
                for n in f["networks"]
            ),
            "",
        ]
    lines += ["### Picks: ground-truth mIoU along each path", ""]
    for p in b["picks"]:
        common = p["common_latency_ms"]
        lines.append(f"Seed {p['seed']}, common latency {'-' if common is None else f'{common:.2f} ms'}:")
        lines.append("")
        for mode, pts in p["paths"].items():
            trail = " > ".join(f"{_pct(q['truth'])} @ {q['latency_ms']:.2f} ms" for q in pts)
            lines.append(f"- {mode}: {_pct(p['truth_at_common'].get(mode))} at the common latency; path {trail}")
        lines.append("")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", action="append", help=f"Space file (repeatable; default: {', '.join(SPACES)}).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--factor", type=int, default=5, help="Ground truth trains this many times the proxy schedule.")
    p.add_argument("--max-steps", type=int, default=None, help="Override stopping.max_steps of every space.")
    p.add_argument("--quick", action="store_true", help="One seed, the demo space, 2 steps, 5 fixed networks.")
    p.add_argument(
        "--no-load-guard",
        action="store_true",
        help="Measure latency even while other processes use the CPUs (a shared machine; noisier latencies).",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads for the fixed-set trainings.")
    p.add_argument("--work-dir", default=None, help="Where the runs go (default: a temporary folder).")
    p.add_argument(
        "--truth",
        default="benchmarks/results/inherit_truth.json",
        help="Cache of the fixed-set and ground-truth trainings (shared by --quick and full runs).",
    )
    p.add_argument("--out", default=None, help="Output stem (default benchmarks/results/inherit[_quick]).")
    args = p.parse_args()
    if args.quick:
        args.space = args.space or [SPACES[0]]
        args.seeds = args.seeds[:1]
        args.max_steps = args.max_steps or 2
    spaces = args.space or list(SPACES)
    out = Path(args.out or ("benchmarks/results/inherit_quick" if args.quick else "benchmarks/results/inherit"))
    torch.set_num_threads(args.threads)
    truth = TruthCache(Path(args.truth))
    started = time.perf_counter()
    blocks: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work_dir) if args.work_dir else Path(tmp)
            cache = LatencyCache(work / "latency-cache")
            for space_file in spaces:
                print(space_file, flush=True)
                block: dict[str, Any] = {}
                blocks.append(block)
                _space_block(
                    space_file, args, work, cache, truth, block, lambda: _write(out, args, blocks, spaces, started)
                )
                _write(out, args, blocks, spaces, started)
    finally:
        truth.close()
    return 0


def _write(
    out: Path, args: argparse.Namespace, blocks: list[dict[str, Any]], spaces: list[str], started: float
) -> None:
    report = {
        "command": command_line(),
        "machine": machine(args.threads),
        "seeds": args.seeds,
        "factor": args.factor,
        "max_steps": args.max_steps,
        "quick": args.quick,
        "complete": len(blocks) == len(spaces) and all(b.get("complete") for b in blocks),
        "goals": _goals(blocks),
        "spaces": blocks,
        "benchmark_seconds": time.perf_counter() - started,
    }
    write_report(out, report, _markdown)


if __name__ == "__main__":
    sys.exit(main())
