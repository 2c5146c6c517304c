"""Does the demo search take the same path every time it runs, whatever the machine is doing?

    python benchmarks/bench_stability.py --runs 3 --load-run 3 --load-seconds 120 \
        --baseline-rev REV [--baseline-rev REV2] --out benchmarks/results/stability

Runs the demo search (``--space``) ``--runs`` times, each from an empty latency cache, as separate
``scaler search`` processes; during run ``--load-run`` a CPU-bound process started by this script
competes for the CPUs for ``--load-seconds`` (then it is stopped). With ``--baseline-rev`` the same
is done first with the code of that git revision (its own demo space file), checked out in a
temporary worktree: the baseline row, measured in the same session on the same machine.

Reported per run: the path (the winning operators, step by step), wall time and its latency
share, the load, and the grown candidates recorded faster than their parent (by the point
estimate; beyond noise; and of those, how many the run flagged). Across runs: whether the paths
agree, and for every architecture that appears in more than one run, how far apart its recorded
latencies are (max / min - 1), in ms and relative to the start network (see the report's note).

Goals (issue 11): the same path in 3 of 3 runs; the same architecture's latency within 10% across
runs; no grown architecture recorded faster than its parent beyond noise without a flag.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine, machine_line, write_report

from scaler.measure.load import wait_for_quiet
from scaler.report import greedy_path, trials_frame
from scaler.search.store import open_run
from scaler.search.strategies import GreedyStrategy

REPO = Path(__file__).resolve().parents[1]
GOAL_LATENCY_SPREAD = 0.10
SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def _search(tree: Path, space: Path, run_dir: Path, cache: Path, load_s: float) -> dict[str, Any]:
    """One ``scaler search`` process of the code in ``tree``, with a competing process if ``load_s``."""
    busy, waited = wait_for_quiet(0.1, 120.0, window_s=1.0)
    env = {**os.environ, "PYTHONPATH": str(tree), "LPS_SCALER_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "scaler.cli", "search", "--space", str(space), "--out", str(run_dir), "--json"]
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(s=load_s)]) if load_s > 0 else None
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"search in {tree} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout)
    return {
        "wall_s": round(wall, 1),
        "latency_s": round(float(summary["latency_seconds"]), 1),
        "train_s": round(float(summary["train_seconds"]), 1),
        "load_s": load_s,
        "others_busy_before": busy,
        "waited_for_quiet_s": round(waited, 1),
        "stop_reason": summary["stop_reason"],
    }


def _analyse(run_dir: Path) -> dict[str, Any]:
    """Path, latency per architecture and faster-than-parent counts of one finished run."""
    store = open_run(run_dir)
    df = trials_frame(store)
    path = greedy_path(store, df)
    ops = [
        f"{r.operators} x{r.steplen}"
        for r in path.itertuples()
        if r.step and r.step > 0 and isinstance(r.operators, str) and r.operators
    ]
    done = df[df["state"] == "COMPLETE"]
    latency = {str(r.arch_hash): float(r.latency_ms) for r in done.itertuples()}
    start = df[df["step"] == 0]
    start_ms = float(start["latency_ms"].iloc[0]) if len(start) else None
    arch = {str(r.arch_hash): str(r.arch) for r in done.itertuples()}
    by_number = {int(r.number): r for r in df.itertuples()}
    point = beyond = flagged = 0
    paired_steps = 0
    # Latency relative to the start network: timed in the same pass where the run recorded it, else
    # (runs before it) the trial's latency over the start's, each from its own window.
    relative = {h: ms / start_ms for h, ms in latency.items()} if start_ms else {}
    measured_together = 0
    for plan in GreedyStrategy.plans(store.study.user_attrs):
        parent = by_number.get(plan.parent)
        for c in plan.candidates:
            paired = getattr(c, "paired", None)
            if getattr(paired, "start_ratio", None) is not None and c.arch_hash in relative:
                relative[c.arch_hash] = float(paired.start_ratio)
                measured_together += 1
            if paired is not None:
                paired_steps += 1
                faster = paired.delta_ms < 0
                beyond_noise = paired.delta_high < 0
                flag = bool(paired.faster_than_parent)
            else:  # a run without paired measurement: its single latencies against the parent's
                faster = parent is not None and c.latency_ms < float(parent.latency_ms)
                beyond_noise = faster  # no interval to tell noise from a real difference
                flag = False
            point += faster
            beyond += beyond_noise
            flagged += beyond_noise and flag
    return {
        "path": ops,
        "latency_ms": latency,
        "relative": relative,
        "start_hash": str(start["arch_hash"].iloc[0]) if len(start) else None,
        "relative_measured_together": measured_together,
        "arch": arch,
        "faster_than_parent": {"point": point, "beyond_noise": beyond, "flagged": flagged},
        "paired": paired_steps > 0,
    }


def _spreads(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """How far apart the runs' numbers ``key`` (per arch hash) are for archs in more than one run: max / min - 1."""
    seen: dict[str, list[float]] = collections.defaultdict(list)
    names: dict[str, str] = {}
    for r in runs:
        for h, v in r[key].items():
            if h in r["arch"]:
                seen[h].append(v)
                names[h] = r["arch"][h]
    shared = {h: v for h, v in seen.items() if len(v) > 1}
    spreads = {h: max(v) / min(v) - 1 for h, v in shared.items()}
    worst = max(spreads, key=spreads.get) if spreads else None
    return {
        "shared_archs": len(shared),
        "within_goal": sum(s <= GOAL_LATENCY_SPREAD for s in spreads.values()),
        "max_spread": None if worst is None else spreads[worst],
        "median_spread": None if not spreads else sorted(spreads.values())[len(spreads) // 2],
        "worst_arch": None if worst is None else {"arch": names[worst], "values": shared[worst]},
    }


def _agreement(runs: list[dict[str, Any]]) -> dict[str, Any]:
    paths = collections.Counter(tuple(r["path"]) for r in runs)
    modal, count = paths.most_common(1)[0]
    return {
        "same_path": count,
        "runs": len(runs),
        "modal_path": list(modal),
        **_spreads(runs, "latency_ms"),
        "relative": _spreads(runs, "relative"),
        "start_ms": [r["latency_ms"].get(r["start_hash"]) for r in runs],
        "unflagged_beyond_noise": sum(
            r["faster_than_parent"]["beyond_noise"] - r["faster_than_parent"]["flagged"] for r in runs
        ),
    }


def _series(label: str, tree: Path, space: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs = []
    for i in range(1, args.runs + 1):
        load = args.load_seconds if i == args.load_run else 0.0
        print(f"{label} run {i}{' (with a competing process)' if load else ''} ...", flush=True)
        run_dir = work / f"{label}-{i}"
        timing = _search(tree, space, run_dir, work / f"{label}-{i}-cache", load)
        runs.append({"run": i, **timing, **_analyse(run_dir)})
        print(f"  path {' -> '.join(runs[-1]['path'])}; {timing['wall_s']:.0f} s", flush=True)
    return {"label": label, "space": str(space), "runs": runs, "agreement": _agreement(runs)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _worst(a: dict[str, Any]) -> str:
    worst = a["worst_arch"]
    if worst is None:
        return "-"
    return f"{_pct(a['max_spread'])} (`{worst['arch']}`: {', '.join(f'{v:.3g}' for v in worst['values'])})"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Greedy path stability: the demo search run several times from empty latency caches",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Each run is a separate `scaler search` process; the run "
        f"marked *load* had a CPU-bound process competing for the first {report['load_seconds']:g} s.",
        "",
        "| code | run | load | path (winning operators per step) | wall s | latency s | faster than parent: "
        "point / beyond noise / flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    for series in report["series"]:
        for r in series["runs"]:
            f = r["faster_than_parent"]
            lines.append(
                f"| {series['label']} | {r['run']} | {'load' if r['load_s'] else '-'} | "
                f"{' → '.join(r['path']) or '(none)'} | {r['wall_s']:.0f} | {r['latency_s']:.0f} | "
                f"{f['point']} / {f['beyond_noise']} / {f['flagged']} |"
            )
    lines += [
        "",
        "| code | same path | architectures in >1 run | latency (ms) within 10% | median spread | max spread "
        "(arch: ms per run) | latency relative to the start network within 10% | median spread | max spread | "
        "start network ms per run | unflagged faster-than-parent beyond noise |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for series in report["series"]:
        a = series["agreement"]
        rel = a["relative"]
        starts = ", ".join("-" if v is None else f"{v:.3g}" for v in a["start_ms"])
        lines.append(
            f"| {series['label']} | {a['same_path']} of {a['runs']} | {a['shared_archs']} | "
            f"{a['within_goal']} of {a['shared_archs']} | {_pct(a['median_spread'])} | {_worst(a)} | "
            f"{rel['within_goal']} of {rel['shared_archs']} | {_pct(rel['median_spread'])} | {_worst(rel)} | "
            f"{starts} | {a['unflagged_beyond_noise']} |"
        )
    lines += [
        "",
        "Relative latency: a candidate's latency as a multiple of the start network's. Where the run timed the "
        "start network in the same paired pass (this code), that pass's median per-round ratio; otherwise the "
        "trial's latency over the start trial's, each measured in its own window.",
    ]
    lines += ["", "Goals: " + report["verdict"], ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="search_spaces/lpsnet_demo.yaml", help="Space file of this tree.")
    ap.add_argument("--runs", type=int, default=3, help="Runs per code version.")
    ap.add_argument("--load-run", type=int, default=3, help="Which run gets a competing CPU-bound process (0: none).")
    ap.add_argument("--load-seconds", type=float, default=120.0, help="How long the competing process runs.")
    ap.add_argument(
        "--baseline-rev",
        action="append",
        default=[],
        help="Git revision whose code (and demo space) is a baseline; repeat for several (run first, in order).",
    )
    ap.add_argument("--out", default="benchmarks/results/stability", help="Writes OUT.json and OUT.md.")
    args = ap.parse_args()
    threads = 2
    report: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(threads),
        "load_seconds": args.load_seconds,
        "series": [],
    }
    with tempfile.TemporaryDirectory(prefix="stability-") as tmp:
        work = Path(tmp)
        for k, rev in enumerate(args.baseline_rev):
            base = work / f"baseline-tree-{k}"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=REPO, check=True)
            try:
                report["series"].append(_series(f"baseline {rev[:9]}", base, base / args.space, args, work))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
        report["series"].append(_series("this code", REPO, REPO / args.space, args, work))
    ours = report["series"][-1]["agreement"]
    rel = ours["relative"]
    same = ours["same_path"] == ours["runs"]
    within = ours["within_goal"] == ours["shared_archs"]
    rel_within = rel["within_goal"] == rel["shared_archs"]
    unflagged = ours["unflagged_beyond_noise"] == 0
    report["verdict"] = (
        f"same path in {ours['same_path']} of {ours['runs']} runs ({'met' if same else 'MISSED'}); "
        f"latency (ms) within 10% for {ours['within_goal']} of {ours['shared_archs']} shared architectures "
        f"({'met' if within else 'MISSED'}); relative to the start network: {rel['within_goal']} of "
        f"{rel['shared_archs']} ({'met' if rel_within else 'missed'}); unflagged faster-than-parent beyond noise: "
        f"{ours['unflagged_beyond_noise']} ({'met' if unflagged else 'MISSED'})"
    )
    write_report(args.out, report, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
