"""Language-guided heads against LPS-Net's plain 1x1 classifier: mIoU and latency, two backbones, three seeds.

    python benchmarks/bench_heads.py --out benchmarks/results/heads_cpu

For each backbone (default: the network the committed demo search reached at step 2, and the
MobileNetV2-style x0.5) and each head (plain, denseclip, fusion with its defaults): the same short
training on ``synthetic`` (its class names embedded by MiniLM for the language-guided heads) for
every seed, and the latency of the deploy form on this machine (``measure_latency``, the search's
settings). Goal from the issue: fusion > denseclip > plain in mIoU at no more than 15% latency over
plain; the report says whether it was met, whatever came out.

``--latency-only --device cuda --input 1024x2048`` measures the latency part on a GPU (CUDA graphs,
fp16 and fp32) for more backbones, without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch
from _common import command_line, machine, machine_line, write_report

from models import HeadConfig, build_model, resolve_arch
from scaler.measure import LatencySettings, measure_latency
from scaler.measure.load import wait_for_quiet
from scaler.proxy.train import TrainConfig, cached_dataset, train_and_evaluate

BACKBONES = ("lpsnet:d=1,1,1,1,1;w=4,24,48,96,96;r=1", "mobilenetv2_050")
HEADS = ("plain", "denseclip", "fusion")
GOAL_LATENCY = 0.15


def _hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def latency_rows(
    backbones: list[str], hw: tuple[int, int], device: str, dtypes: list[str], backend: str, threads: int, rounds: int
) -> list[dict[str, Any]]:
    """Per backbone and dtype, the three heads measured in turn, ``rounds`` times; the median per head."""
    rows = []
    for spec in backbones:
        for dtype in dtypes:
            archs = {kind: dataclasses.replace(resolve_arch(spec), head=HeadConfig(kind=kind)) for kind in HEADS}
            results: dict[str, list[Any]] = {kind: [] for kind in HEADS}
            for i in range(rounds):
                for kind in HEADS if i % 2 == 0 else tuple(reversed(HEADS)):
                    if device == "cpu":
                        wait_for_quiet(0.1, 60.0, window_s=1.0)
                    results[kind].append(
                        measure_latency(
                            archs[kind],
                            LatencySettings(
                                input_hw=hw,
                                device=device,
                                dtype=dtype,
                                backend=backend,
                                threads=threads if device == "cpu" else None,
                                min_samples=30 if device == "cpu" else 10,
                            ),
                        )
                    )
            for kind in HEADS:
                medians = [r.median_ms for r in results[kind]]
                rows.append(
                    {
                        "backbone": spec,
                        "head": kind,
                        "dtype": dtype,
                        "params": sum(p.numel() for p in build_model(archs[kind]).parameters()),
                        "median_ms": statistics.median(medians),
                        "round_medians_ms": medians,
                        "stable": all(r.stable for r in results[kind]),
                        "fingerprint": results[kind][0].fingerprint,
                    }
                )
                print(f"  {spec} {kind} {dtype}: {', '.join(f'{m:.3f}' for m in medians)} ms", flush=True)
    return rows


def train_rows(backbones: list[str], seeds: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    crop = _hw(args.crop)
    for seed in seeds:
        train_set = cached_dataset(args.dataset, "train", seed)
        val_set = cached_dataset(args.dataset, "val", seed)
        for spec in backbones:
            for kind in HEADS:
                arch = dataclasses.replace(resolve_arch(spec), head=HeadConfig(kind=kind))
                config = TrainConfig(
                    dataset=args.dataset, iters=args.iters, batch=args.batch, crop=crop, lr=args.lr, seed=seed
                )
                t = time.perf_counter()
                r = train_and_evaluate(arch, config, progress=False, train_set=train_set, val_set=val_set)
                if not r.ok:
                    raise SystemExit(f"{arch.inline()} seed {seed}: training failed: {r.reason}")
                rows.append(
                    {
                        "backbone": spec,
                        "head": kind,
                        "seed": seed,
                        "miou": r.miou,
                        "per_class_iou": r.per_class_iou,
                        "seconds": time.perf_counter() - t,
                        "params": sum(p.numel() for p in build_model(arch).parameters()),
                    }
                )
                print(f"  seed {seed} {spec} {kind}: mIoU {100 * r.miou:.2f}%", flush=True)
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Language-guided heads vs the plain classifier ({report['where']})", ""]
    lines += [f"Command: `{report['command']}`", "", report["machine_line"], ""]
    lat = report["latency"]
    train = report.get("training") or []
    if train:
        lines += [
            f"Training: `{report['dataset']}`, {report['iters']} iterations, batch {report['batch']}, crop "
            f"{report['crop']}, lr {report['lr']}, seeds {report['seeds']} (the seed fixes weights, data order and "
            "augmentation; the same for every head). Language-guided heads embed the dataset's class names with "
            "MiniLM (`minilm`, 4 prompt templates). mIoU on the val split at the images' size.",
            "",
        ]
    lines += [
        f"Latency: `measure_latency`, deploy form, {report['latency_setting']}; median of "
        f"{report.get('latency_rounds', 1)} round(s) with the heads measured in turn.",
        "",
        "| backbone | head | params | "
        + ("mIoU % (mean ± sd) | per seed | " if train else "")
        + "latency ms | vs plain |",
        "|---|---|---|" + ("---|---|" if train else "") + "---|---|",
    ]
    verdicts = []
    dtypes = list(dict.fromkeys(r["dtype"] for r in lat))
    for spec in report["backbones"]:
        for dtype in dtypes:
            base = next(r for r in lat if r["backbone"] == spec and r["head"] == "plain" and r["dtype"] == dtype)
            means = {}
            for kind in HEADS:
                r = next(r for r in lat if r["backbone"] == spec and r["head"] == kind and r["dtype"] == dtype)
                cells = [f"`{spec}`", kind if len(dtypes) == 1 else f"{kind} ({dtype})"]
                mine = [t for t in train if t["backbone"] == spec and t["head"] == kind]
                cells.append(f"{r['params']:,}")
                if train:
                    m, sd = _mean_sd([100 * t["miou"] for t in mine])
                    means[kind] = m
                    cells += [f"{m:.2f} ± {sd:.2f}", " / ".join(f"{100 * t['miou']:.1f}" for t in mine)]
                cells += [f"{r['median_ms']:.3f}", f"{r['median_ms'] / base['median_ms'] - 1:+.0%}"]
                lines.append("| " + " | ".join(cells) + " |")
            if train:
                fusion_lat = next(
                    r["median_ms"]
                    for r in lat
                    if r["backbone"] == spec and r["head"] == "fusion" and r["dtype"] == dtype
                )
                order = means["fusion"] > means["denseclip"] > means["plain"]
                cheap = fusion_lat <= (1 + GOAL_LATENCY) * base["median_ms"]
                verdicts.append(
                    f"`{spec}`: fusion > denseclip > plain in mean mIoU: {'yes' if order else 'no'} "
                    f"({means['fusion']:.2f} / {means['denseclip']:.2f} / {means['plain']:.2f}); fusion within "
                    f"{GOAL_LATENCY:.0%} of plain's latency: {'yes' if cheap else 'no'} "
                    f"({fusion_lat / base['median_ms'] - 1:+.0%})."
                )
    if verdicts:
        lines += ["", "Goal (fusion > denseclip > plain in mIoU, fusion within 15% of plain's latency):", ""]
        lines += [f"- {v}" for v in verdicts]
    lines += ["", f"Benchmark wall time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", action="append", help="ARCH of a backbone (repeatable)")
    p.add_argument("--dataset", default="synthetic:size=128x256,train=200,val=40")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", default="128x256")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--input", default="128x256", help="Latency input size HxW.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, help="Latency backend (default: torch on cpu, cudagraph on cuda).")
    p.add_argument("--dtype", nargs="+", default=None, help="Latency dtypes (default: fp32 on cpu, fp16 fp32 on cuda).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=None, help="Latency rounds, heads interleaved (default: 5 cpu, 1 gpu)."
    )
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--out", default="benchmarks/results/heads_cpu")
    args = p.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    backbones = args.backbone or list(BACKBONES)
    cuda = args.device.startswith("cuda")
    backend = args.backend or ("cudagraph" if cuda else "torch")
    dtypes = args.dtype or (["fp16", "fp32"] if cuda else ["fp32"])
    hw = _hw(args.input)
    report: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(args.threads),
        "backbones": backbones,
        "dataset": args.dataset,
        "iters": args.iters,
        "batch": args.batch,
        "crop": args.crop,
        "lr": args.lr,
        "seeds": args.seeds,
    }
    print("latency", flush=True)
    rounds = args.rounds or (1 if cuda else 5)
    report["latency"] = latency_rows(backbones, hw, args.device, dtypes, backend, args.threads, rounds)
    report["latency_rounds"] = rounds
    fp = report["latency"][0]["fingerprint"]
    report["where"] = f"{fp['device_name']}"
    report["machine_line"] = (
        f"Machine: {machine_line(report['machine'])}; date {report['machine']['date']}."
        if not cuda
        else f"GPU: {fp['device_name']} (CUDA {fp['cuda']}, cuDNN {fp['cudnn']}), torch {fp['torch']}; "
        f"date {report['machine']['date']}."
    )
    report["latency_setting"] = (
        f"batch 1, input {hw[0]}x{hw[1]}, {backend}, {'/'.join(dtypes)}, "
        f"{'threads ' + str(args.threads) if not cuda else 'CUDA events'}, up to the head's logits"
    )
    if not args.latency_only:
        print("training", flush=True)
        report["training"] = train_rows(backbones, args.seeds, args)
    report["seconds"] = time.perf_counter() - started
    write_report(args.out, report, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
