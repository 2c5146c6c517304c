"""The fusion head's deploy form against the one before it, plain and DenseCLIP: side-by-side CPU latency, MACs, ops.

    python benchmarks/bench_fusion_deploy.py --out benchmarks/results/fusion_deploy

For each case (default: lpsnet_tiny and the demo's winner at the demo's 512x1024, lpsnet_s at 256x512),
five networks are timed
together by ``measure_paired`` (each built once as latency measurement builds it, warmed up, then
timed in interleaved rounds in a shuffled order, batch 1, fp32, torch, up to the head's logits):

- ``plain``: the 1x1 classifier;
- ``denseclip``: pixel/text cosine;
- ``fusion (old deploy)``: the baseline, what deploying a fusion network gave before its deploy form:
  the backbone's BatchNorms folded, the head as trained (eval mode, every text op per image);
- ``fusion (new deploy)``: :class:`models.heads.FusionDeployHead`, what ``reparameterize`` gives now;
- ``fusion (new deploy), dim 16``: the same with a 16-wide head instead of 64, what a small
  backbone's head costs when its width is cut to the backbone's.

All four use seeded weights (seed 0, as latency measurement uses), so the two fusion rows compute
the same logits; the report gives their largest difference. ``measure_paired`` builds networks from
architectures, so the old form is put in by wrapping its network builder for that one slot.

MACs: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 (convolutions and every matrix product,
``baddbmm`` included, which ptflops' aten backend skips). Ops: nodes of the ONNX graph the
project's exporter writes (``scaler.measure.onnx_export``, TorchScript exporter, opset 17,
constants folded), ``Constant`` nodes not counted. Goal (issue 13): fusion within 10% of plain.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from _common import command_line, machine, machine_line, write_report
from torch.utils.flop_counter import FlopCounterMode

import scaler.measure.paired as paired_mod
from models import HeadConfig, SegArch, build_model, resolve_arch
from scaler.measure import LatencySettings, measure_paired
from scaler.measure.latency import TORCH_DTYPES, build_network, make_input, resolve_settings
from scaler.measure.load import wait_for_quiet
from scaler.measure.onnx_export import onnx_bytes

# The demo's winner (results/reference/lpsnet_demo) at the demo's latency size; its start is lpsnet_tiny.
DEMO_WINNER = "lpsnet:d=1,1,1,1,1;w=4,8,48,96,96;r=1"
CASES = ("lpsnet_tiny:512x1024", f"{DEMO_WINNER}:512x1024", "lpsnet_s:256x512")
ROWS = ("plain", "denseclip", "fusion (old deploy)", "fusion (new deploy)", "fusion (new deploy), dim 16")
OLD = 2  # the slot of the old deploy form in each group
NEW = 3
SMALL_DIM = 16
GOAL = 0.10


def _case(text: str) -> tuple[str, tuple[int, int]]:
    spec, _, size = text.rpartition(":")
    h, w = (int(v) for v in size.lower().split("x"))
    return spec, (h, w)


def old_deploy(arch: SegArch, settings: LatencySettings) -> torch.nn.Module:
    """The network latency measurement built for a fusion arch before the head had a deploy form:
    :func:`build_network`'s folded backbone with the head as built (same seed, so the same weights)."""
    net = build_network(arch, None, settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trained = build_model(arch).eval()
    net.model.head = trained.head.to(device=torch.device(settings.device), dtype=TORCH_DTYPES[settings.dtype]).eval()
    return net


@contextlib.contextmanager
def old_form_in_slot(slot: int) -> Iterator[None]:
    """While active, the ``slot``-th network each ``measure_paired`` call builds is the old deploy form."""
    real = paired_mod.build_network
    calls = {"n": 0}

    def build(arch: SegArch, given: Any, settings: LatencySettings) -> torch.nn.Module:
        i = calls["n"]
        calls["n"] += 1
        return old_deploy(arch, settings) if i == slot else real(arch, given, settings)

    paired_mod.build_network = build  # type: ignore[assignment]
    try:
        yield
    finally:
        paired_mod.build_network = real  # type: ignore[assignment]


def static_costs(nets: list[torch.nn.Module], x: torch.Tensor) -> list[dict[str, Any]]:
    """MACs (flop counter / 2) and ONNX op counts of each network at input ``x``."""
    out = []
    for net in nets:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                net(x)
            graph = onnx.load_from_string(onnx_bytes(net, x)).graph
        ops = [n.op_type for n in graph.node if n.op_type != "Constant"]
        out.append({"macs": counter.get_total_flops() // 2, "onnx_ops": len(ops)})
    return out


def run_case(spec: str, hw: tuple[int, int], threads: int, rounds: int, seed: int) -> dict[str, Any]:
    base = resolve_arch(spec)
    heads = [HeadConfig(kind=k) for k in ("plain", "denseclip", "fusion", "fusion")]
    archs = [dataclasses.replace(base, head=h) for h in [*heads, HeadConfig(kind="fusion", dim=SMALL_DIM)]]
    settings = LatencySettings(input_hw=hw, threads=threads, max_others_share=None)
    s = resolve_settings(settings)
    x = make_input(s)
    nets = [build_network(a, None, s) for a in archs[:OLD]] + [
        old_deploy(archs[OLD], s),
        *(build_network(a, None, s) for a in archs[NEW:]),
    ]
    costs = static_costs(nets, x)
    with torch.no_grad():
        old, new = nets[OLD](x), nets[NEW](x)
    diff = float((old - new).abs().max() / old.abs().max())
    del nets
    load_before = os.getloadavg()
    quiet, waited = wait_for_quiet(0.1, 120.0, window_s=1.0)
    with old_form_in_slot(OLD):
        result = measure_paired(archs, settings, rounds=rounds, seed=seed)
    plain = result.median_ms(0)
    rows = []
    for i, name in enumerate(ROWS):
        est, low, high = result.delta_ms(i, 0)
        rows.append(
            {
                "network": name,
                "inline": archs[i].inline(),
                "median_ms": result.median_ms(i),
                "rel_spread": result.rel_spread(i),
                "delta_vs_plain_ms": [est, low, high],
                "over_plain": est / plain,
                **costs[i],
            }
        )
        print(f"  {spec} {name}: {result.median_ms(i):.3f} ms ({est / plain:+.1%} vs plain)", flush=True)
    return {
        "arch": spec,
        "input": f"{hw[0]}x{hw[1]}",
        "rows": rows,
        "old_vs_new_max_rel_diff": diff,
        "others_cpu_share": result.others_cpu_share,
        "quiet_before": quiet,
        "waited_s": waited,
        "loadavg_before": list(load_before),
        "rounds": result.rounds,
        "measured_at": result.measured_at,
        "fingerprint": result.fingerprint,
    }


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fusion head: deploy form vs the one before, plain and DenseCLIP (CPU, side by side)", ""]
    lines += [f"Command: `{report['command']}`", "", f"Machine: {machine_line(report['machine'])}; date "]
    lines[-1] += f"{report['machine']['date']}."
    lines += [
        "",
        f"Latency: `measure_paired`, {report['rounds']} interleaved rounds (order shuffled per round, 3 runs per "
        "network per round, the median is the round's sample), batch 1, fp32, torch, up to the head's logits, "
        "seeded weights. `vs plain`: the median of the per-round differences to plain over plain's median, with "
        "its 90% interval. MACs: `torch.utils.flop_counter` / 2. Ops: ONNX graph nodes (project exporter, "
        "opset 17), `Constant` nodes not counted. fusion: dim 64 (16 in the last row), 1 layer, 4 heads, 19 "
        "classes.",
        "",
    ]
    verdicts = []
    for case in report["cases"]:
        share = case["others_cpu_share"]
        lines += [
            f"## `{case['arch']}` at {case['input']}",
            "",
            f"Others' CPU share during the pass: {'unknown' if share is None else f'{share:.0%}'}; load average "
            f"before: {', '.join(f'{v:.2f}' for v in case['loadavg_before'])}; measured {case['measured_at']}. "
            f"Old and new fusion logits differ by {case['old_vs_new_max_rel_diff']:.1e} (relative).",
            "",
            "| network | ms | vs plain (90% interval) | MACs | vs plain | ONNX ops |",
            "|---|---|---|---|---|---|",
        ]
        plain = case["rows"][0]
        for r in case["rows"]:
            _, low, high = r["delta_vs_plain_ms"]
            pm = plain["median_ms"]
            interval = "" if r is plain else f" ({low / pm:+.1%} .. {high / pm:+.1%})"
            lines.append(
                f"| {r['network']} | {r['median_ms']:.3f} | {r['over_plain']:+.1%}{interval} | "
                f"{r['macs'] / 1e6:.2f} M | {r['macs'] / plain['macs'] - 1:+.1%} | {r['onnx_ops']} |"
            )
        new, old = case["rows"][NEW], case["rows"][OLD]
        _, low, high = (v / plain["median_ms"] for v in new["delta_vs_plain_ms"])
        if high <= GOAL:
            verdict = "met"
        elif new["over_plain"] <= GOAL:
            verdict = f"met by the estimate, not surely (the interval reaches {high:+.1%})"
        else:
            verdict = "missed"
        floor = new["macs"] / plain["macs"] - 1
        why = f"; its MACs alone are {floor:+.0%} over plain's" if floor > GOAL else ""
        small = next((r for r in case["rows"] if r["network"] == ROWS[-1]), None)
        if small is not None:
            why += f"; at dim {SMALL_DIM}: {small['over_plain']:+.1%} (MACs {small['macs'] / plain['macs'] - 1:+.0%})"
        verdicts.append(
            f"`{case['arch']}` at {case['input']}: fusion (new deploy) {new['over_plain']:+.1%} over plain "
            f"(90% interval {low:+.1%} .. {high:+.1%}; old deploy {old['over_plain']:+.1%}): {verdict}{why}."
        )
        lines.append("")
    lines += [f"Goal (issue 13): fusion within {GOAL:.0%} of plain's latency.", ""]
    lines += [f"- {v}" for v in verdicts]
    lines += ["", f"Benchmark wall time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", help=f"ARCH:HxW (repeatable; default {' '.join(CASES)})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40, help="Interleaved rounds per case.")
    p.add_argument("--seed", type=int, default=0, help="Seeds the per-round order.")
    p.add_argument("--out", default="benchmarks/results/fusion_deploy")
    args = p.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"command": command_line(), "machine": machine(args.threads), "rounds": args.rounds}
    report["cases"] = [run_case(*_case(c), args.threads, args.rounds, args.seed) for c in args.case or CASES]
    report["seconds"] = time.perf_counter() - started
    write_report(args.out, report, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
