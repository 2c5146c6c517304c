"""Language-guided heads against LPS-Net's plain 1x1 classifier: mIoU curves, ablations and latency.

    python benchmarks/bench_heads.py --out benchmarks/results/heads_cpu

Two datasets: the embedded ``synthetic`` street scenes, and named shapes (``shapes``, written here in the
``folder:`` layout by :func:`scaler.proxy.data.generate.write_shapes_folder`): classes such as "red circle"
or "blue triangle", whose names share words where the classes share looks, four of them rare in
training, so that language has something to give. Two backbones (default: the network the committed
demo search reached at step 2, and the MobileNetV2-style x0.5). Three heads (plain, denseclip, fusion,
each with its recipe from :class:`~models.heads.HeadConfig`). Three seeds (the seed fixes weights, data
order and augmentation; the same for every head). Every training is evaluated along the way, so the
report shows whether the ranking has settled.

Ablations (on the first backbone, both datasets, every seed): the fusion head with one thing taken
away: each bridge direction, the class tokens' self-attention, the auxiliary loss, the AdamW recipe
(SGD for every parameter), the DenseCLIP start (random init), and both (the recipe fusion heads had
before: its row is today's behaviour before this recipe, measured in the same run).

Latency: the deploy form of every head on every backbone, interleaved, at ``--input`` (default: the
demo's latency size).

Goal from the issue: fusion > denseclip > plain in mean mIoU on both backbones, differences larger
than the seeds' spread; the report says whether it was met, whatever came out.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import command_line, machine, machine_line, write_report

from models import HeadConfig, build_model, resolve_arch
from scaler.measure import LatencySettings, measure_latency
from scaler.measure.load import wait_for_quiet
from scaler.proxy.data.generate import SHAPE_RARE, write_shapes_folder
from scaler.proxy.train import TrainConfig, cached_dataset, train_and_evaluate

BACKBONES = ("lpsnet:d=1,1,1,1,1;w=4,24,48,96,96;r=1", "mobilenetv2_050")
HEADS: dict[str, HeadConfig] = {
    "plain": HeadConfig(),
    "denseclip": HeadConfig(kind="denseclip"),
    "fusion": HeadConfig(kind="fusion"),
}
# The fusion head with one thing taken away (name -> head).
ABLATIONS: dict[str, HeadConfig] = {
    "fusion without pixels->text": HeadConfig(kind="fusion", ablate=("to_text",)),
    "fusion without text->pixels": HeadConfig(kind="fusion", ablate=("to_pixels",)),
    "fusion without text self-attention": HeadConfig(kind="fusion", ablate=("text_self",)),
    "fusion without aux loss": HeadConfig(kind="fusion", aux_weight=0.0),
    "fusion, SGD for every parameter": HeadConfig(kind="fusion", optimizer="sgd"),
    "fusion, random init": HeadConfig(kind="fusion", init="random"),
    "fusion, before this recipe (SGD, random init)": HeadConfig(kind="fusion", optimizer="sgd", init="random"),
}
SHAPES = "shapes"


def _hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def latency_rows(
    backbones: list[str], hw: tuple[int, int], device: str, dtypes: list[str], backend: str, threads: int, rounds: int
) -> list[dict[str, Any]]:
    """Per backbone and dtype, the heads measured in turn (order reversed every other round); the median per head."""
    rows = []
    for spec in backbones:
        for dtype in dtypes:
            archs = {name: dataclasses.replace(resolve_arch(spec), head=head) for name, head in HEADS.items()}
            results: dict[str, list[Any]] = {name: [] for name in HEADS}
            for i in range(rounds):
                for name in HEADS if i % 2 == 0 else tuple(reversed(HEADS)):
                    if device == "cpu":
                        wait_for_quiet(0.1, 60.0, window_s=1.0)
                    settings = LatencySettings(
                        input_hw=hw,
                        device=device,
                        dtype=dtype,
                        backend=backend,
                        threads=threads if device == "cpu" else None,
                        min_samples=30 if device == "cpu" else 10,
                    )
                    results[name].append(measure_latency(archs[name], settings))
            for name in HEADS:
                medians = [r.median_ms for r in results[name]]
                rows.append(
                    {
                        "backbone": spec,
                        "head": name,
                        "dtype": dtype,
                        "params": sum(p.numel() for p in build_model(archs[name]).parameters()),
                        "median_ms": statistics.median(medians),
                        "round_medians_ms": medians,
                        "stable": all(r.stable for r in results[name]),
                        "fingerprint": results[name][0].fingerprint,
                    }
                )
                print(f"  {spec} {name} {dtype}: {', '.join(f'{m:.3f}' for m in medians)} ms", flush=True)
    return rows


def _datasets(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """Short name -> dataset SPEC; the shapes set is written under ``workdir`` (seeded: the same files every run)."""
    out = {}
    for spec in args.dataset:
        if spec == SHAPES:
            h, w = _hw(args.shapes_size)
            root = write_shapes_folder(
                workdir / "shapes", train=args.shapes_train, val=args.shapes_val, size=(h, w), seed=0, rare_weight=0.05
            )
            out[SHAPES] = f"folder:{root}"
        else:
            out[spec.split(":")[0]] = spec
    return out


def _runs(args: argparse.Namespace, backbones: list[str]) -> list[tuple[str, str, HeadConfig]]:
    """(backbone, head name, head) of every training per dataset and seed: the heads, then the ablations."""
    runs = [(spec, name, head) for spec in backbones for name, head in HEADS.items()]
    if args.ablations:
        runs += [(backbones[0], name, head) for name, head in ABLATIONS.items()]
    return runs


def train_rows(datasets: dict[str, str], backbones: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    crop = _hw(args.crop)
    eval_at = sorted({int(args.iters * f) for f in (0.125, 0.25, 0.5)} - {0})
    for dataset, spec_ds in datasets.items():
        for seed in args.seeds:
            train_set = cached_dataset(spec_ds, "train", seed)
            val_set = cached_dataset(spec_ds, "val", seed)
            names = train_set.info.class_names
            for spec, name, head in _runs(args, backbones):
                arch = dataclasses.replace(resolve_arch(spec), head=head)
                config = TrainConfig(
                    dataset=spec_ds, iters=args.iters, batch=args.batch, crop=crop, lr=args.lr, seed=seed
                )
                t = time.perf_counter()
                r = train_and_evaluate(
                    arch, config, progress=False, train_set=train_set, val_set=val_set, eval_at=eval_at
                )
                if not r.ok:
                    raise SystemExit(f"{arch.inline()} on {dataset} seed {seed}: training failed: {r.reason}")
                rare = [r.per_class_iou.get(c) for c in SHAPE_RARE if c in names]
                rare_vals = [v for v in rare if v is not None]
                rows.append(
                    {
                        "dataset": dataset,
                        "backbone": spec,
                        "head": name,
                        "head_config": head.to_dict(),
                        "seed": seed,
                        "miou": r.miou,
                        "curve": r.rungs,
                        "rare_miou": statistics.fmean(rare_vals) if rare_vals else None,
                        "per_class_iou": r.per_class_iou,
                        "param_groups": r.param_groups,
                        "seconds": time.perf_counter() - t,
                    }
                )
                print(f"  {dataset} seed {seed} {spec} {name}: mIoU {100 * r.miou:.2f}%", flush=True)
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    m, sd = _mean_sd([100 * v for v in values])
    return f"{m:.1f} ± {sd:.1f}"


def _rows_of(train: list[dict[str, Any]], dataset: str, backbone: str, head: str) -> list[dict[str, Any]]:
    return [t for t in train if t["dataset"] == dataset and t["backbone"] == backbone and t["head"] == head]


def _verdict(train: list[dict[str, Any]], dataset: str, spec: str) -> str:
    """Whether fusion > denseclip > plain in mean mIoU with each gap larger than the seeds' spread."""
    stats = {name: _mean_sd([100 * t["miou"] for t in _rows_of(train, dataset, spec, name)]) for name in HEADS}
    (mf, sf), (md, sd), (mp, sp) = stats["fusion"], stats["denseclip"], stats["plain"]
    order = mf > md > mp
    clear = order and mf - md > max(sf, sd) and md - mp > max(sd, sp)
    verdict = "met" if clear else "ordered, but a gap is within the seeds' spread" if order else "not met"
    return (
        f"{dataset}, `{spec}`: fusion {mf:.1f} ± {sf:.1f}, denseclip {md:.1f} ± {sd:.1f}, plain {mp:.1f} ± {sp:.1f}: "
        f"**{verdict}**."
    )


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Language-guided heads vs the plain classifier ({report['where']})", ""]
    lines += [f"Command: `{report['command']}`", "", report["machine_line"], ""]
    train = report.get("training") or []
    if train:
        lines += [
            f"Training: {report['iters']} iterations, batch {report['batch']}, crop {report['crop']}, SGD lr "
            f"{report['lr']} for the backbone, seeds {report['seeds']}; each head with its recipe (`HeadConfig`: "
            f"{HEADS['fusion'].describe_recipe()}; aux loss weight {HEADS['fusion'].aux_weight:g}). "
            "Language-guided heads embed the dataset's class names with MiniLM (4 prompt templates). mIoU % on "
            "the val split, mean ± sd over the seeds.",
            "",
            "Datasets: " + "; ".join(f"`{k}` = `{v}`" for k, v in report["datasets"].items()) + ". "
            f"The shapes set: {report['shapes_note']}",
            "",
            "## mIoU along the schedule",
            "",
        ]
        iters = sorted({c["iters"] for t in train for c in t["curve"]})
        lines += [
            "| dataset | backbone | head | " + " | ".join(f"@{i}" for i in iters) + " | rare classes @end |",
            "|---|---|---|" + "---|" * len(iters) + "---|",
        ]
        for dataset in report["datasets"]:
            for spec in report["backbones"]:
                for name in HEADS:
                    mine = _rows_of(train, dataset, spec, name)
                    cells = [_cell([c["miou"] for t in mine for c in t["curve"] if c["iters"] == i]) for i in iters]
                    rare = [t["rare_miou"] for t in mine if t["rare_miou"] is not None]
                    lines.append(
                        f"| {dataset} | `{spec}` | {name} | "
                        + " | ".join(cells)
                        + f" | {_cell(rare) if rare else '–'} |"
                    )
        lines += ["", "Goal (fusion > denseclip > plain in mean mIoU, gaps larger than the seeds' spread):", ""]
        lines += [f"- {_verdict(train, d, s)}" for d in report["datasets"] for s in report["backbones"]]
        if any(t["head"] in ABLATIONS for t in train):
            spec = report["backbones"][0]
            lines += ["", f"## Ablations of the fusion head (`{spec}`, final mIoU %)", ""]
            lines += ["| variant | " + " | ".join(f"{d} | {d} rare" for d in report["datasets"]) + " |"]
            lines += ["|---|" + "---|---|" * len(report["datasets"])]
            for name in ("fusion", *ABLATIONS):
                cells = []
                for d in report["datasets"]:
                    mine = _rows_of(train, d, spec, name)
                    rare = [t["rare_miou"] for t in mine if t["rare_miou"] is not None]
                    cells += [_cell([t["miou"] for t in mine]), _cell(rare) if rare else "–"]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lat = report["latency"]
    lines += [
        "",
        "## Latency",
        "",
        f"`measure_latency`, deploy form, {report['latency_setting']}; median of "
        f"{report.get('latency_rounds', 1)} round(s) with the heads measured in turn.",
        "",
        "| backbone | head | params | latency ms | vs plain |",
        "|---|---|---|---|---|",
    ]
    for r in lat:
        base = next(
            b for b in lat if b["backbone"] == r["backbone"] and b["head"] == "plain" and b["dtype"] == r["dtype"]
        )
        lines.append(
            f"| `{r['backbone']}` | {r['head']} ({r['dtype']}) | {r['params']:,} | {r['median_ms']:.3f} | "
            f"{r['median_ms'] / base['median_ms'] - 1:+.0%} |"
        )
    if report.get("reading"):
        lines += ["", "## Reading", "", report["reading"]]
    lines += ["", f"Benchmark wall time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", action="append", help="ARCH of a backbone (repeatable)")
    p.add_argument(
        "--dataset",
        action="append",
        help=f"dataset SPEC, or '{SHAPES}' for the generated named-shapes set (repeatable; default: both)",
    )
    p.add_argument("--shapes-size", default="64x128", help="HxW of the generated shapes images")
    p.add_argument("--shapes-train", type=int, default=400)
    p.add_argument("--shapes-val", type=int, default=100)
    p.add_argument("--iters", type=int, default=1200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", default="64x128")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-ablations", dest="ablations", action="store_false", help="only the three heads")
    p.add_argument("--input", default="512x1024", help="Latency input size HxW.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, help="Latency backend (default: torch on cpu, cudagraph on cuda).")
    p.add_argument("--dtype", nargs="+", default=None, help="Latency dtypes (default: fp32 on cpu, fp16 fp32 on cuda).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=None, help="Latency rounds, heads interleaved (default: 5 cpu, 1 gpu)."
    )
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--reading", default=None, help="A file whose text is the report's 'Reading' section.")
    p.add_argument("--out", default="benchmarks/results/heads_cpu")
    args = p.parse_args(argv)
    args.dataset = args.dataset or ["synthetic:size=64x128,train=400,val=100", SHAPES]
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
        "iters": args.iters,
        "batch": args.batch,
        "crop": args.crop,
        "lr": args.lr,
        "seeds": args.seeds,
        "shapes_note": (
            f"{args.shapes_train} train / {args.shapes_val} val images of {args.shapes_size}, 13 classes "
            f"(background and 4 colours x 3 shapes); {', '.join(SHAPE_RARE)} are 20x rarer in training than the "
            "others and as common in val ('rare classes' is their mean IoU)."
        ),
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
        with tempfile.TemporaryDirectory(prefix="bench-heads-") as tmp:
            datasets = _datasets(args, Path(tmp))
            report["datasets"] = {k: v if k != SHAPES else "folder:<generated>" for k, v in datasets.items()}
            print("training", flush=True)
            report["training"] = train_rows(datasets, backbones, args)
    if args.reading:
        report["reading"] = Path(args.reading).read_text().strip()
    report["seconds"] = time.perf_counter() - started
    write_report(args.out, report, to_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
