"""Short proxy trainings on an imbalanced folder dataset: plain cross-entropy vs OHEM, per candidate network.

The dataset is generated (``scaler.proxy.data.generate.write_imbalanced_folder``): noisy grey scenes of the
background class with, now and then, a small square of one object class, written as PNG files and opened as
``folder:PATH`` like a user's own data. Each candidate network trains the same short schedule with ``loss: ce``
and with ``loss: ohem`` (same seed, same data and augmentation), and the greedy step's collapse detector
(``proxy_warnings``) reads the candidates' results as it would in a search.

    python benchmarks/bench_imbalance.py --out benchmarks/results/imbalance
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import command_line, machine, machine_line, write_report
from optuna.trial import TrialState

from models import resolve_arch
from scaler.proxy.data import open_dataset
from scaler.proxy.data.generate import write_imbalanced_folder
from scaler.proxy.train import TrainConfig, train_and_evaluate
from scaler.search.record import TrialRecord
from scaler.search.strategies.greedy import proxy_warnings

# Candidates of one step: a one-path network at full resolution and three one-step expansions of it
# (width, depth, a second path). LPS-Net tiny itself (one path at 1/2, output stride 32) cannot localise
# squares of 12-24 pixels in a 64x128 image at all, with either loss, so it would say nothing here.
NETWORKS = (
    "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=1.0",
    "lpsnet:d=1,1,1,1,1;w=8,16,32,64,64;r=1.0",
    "lpsnet:d=1,2,2,2,2;w=4,8,16,32,32;r=1.0",
    "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=1.0,0.5",
)
LOSSES = ("ce", "ohem")


def trial(number: int, row: dict[str, Any]) -> TrialRecord:
    """A trained candidate as the greedy step sees it (only its mIoU and per-class IoUs matter here)."""
    return TrialRecord(
        resolve_arch(row["network"]),
        number=number,
        state=TrialState.COMPLETE,
        values=(1.0, row["miou"]),
        train={"per_class_iou": row["per_class_iou"]},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=float, action="append", help="mean squares per image (repeatable)")
    p.add_argument("--side", default="12,24", help="range of a square's side in pixels")
    p.add_argument("--size", default="64x128")
    p.add_argument("--train", type=int, default=96)
    p.add_argument("--val", type=int, default=48)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/imbalance")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    side = tuple(int(v) for v in args.side.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = []
    with tempfile.TemporaryDirectory() as tmp:
        for objects in args.objects or [0.1]:
            root = write_imbalanced_folder(
                Path(tmp) / f"imbalanced_{objects}",
                train=args.train,
                val=args.val,
                size=size,
                seed=args.data_seed,
                objects=objects,
                side=side,
                classes=1,
            )
            spec = f"folder:{root}"
            train_set, val_set = open_dataset(spec, "train"), open_dataset(spec, "val")
            shares = {name: pixel_share(ds) for name, ds in (("train", train_set), ("val", val_set))}
            runs = []
            for seed in seeds:
                for loss in LOSSES:
                    results = []
                    for net in NETWORKS:
                        cfg = TrainConfig(
                            dataset=spec,
                            iters=args.iters,
                            batch=args.batch,
                            crop=size,
                            lr=args.lr,
                            seed=seed,
                            loss=loss,
                        )
                        r = train_and_evaluate(
                            resolve_arch(net), cfg, progress=False, train_set=train_set, val_set=val_set
                        )
                        if not r.ok:
                            raise SystemExit(f"{net} {loss} seed {seed}: training failed: {r.reason}")
                        predicted = sum(1 for v in r.per_class_iou.values() if v is not None and v > 0)
                        results.append(
                            {
                                "network": net,
                                "miou": r.miou,
                                "per_class_iou": r.per_class_iou,
                                "classes_predicted": predicted,
                                "train_seconds": r.train_seconds,
                            }
                        )
                        print(
                            f"objects {objects} seed {seed} {loss:4s} {net}: mIoU {100 * r.miou:.1f}, "
                            f"{predicted} class(es)",
                            flush=True,
                        )
                    warnings = proxy_warnings([trial(i + 1, row) for i, row in enumerate(results)])
                    runs.append({"seed": seed, "loss": loss, "networks": results, "warnings": warnings})
            datasets.append({"objects": objects, "pixel_share": shares, "runs": runs})
    report = {
        "command": command_line(),
        "machine": machine(args.threads),
        "settings": {
            "size": list(size),
            "side": list(side),
            "train": args.train,
            "val": args.val,
            "data_seed": args.data_seed,
            "seeds": seeds,
            "iters": args.iters,
            "batch": args.batch,
            "lr": args.lr,
            "networks": list(NETWORKS),
        },
        "datasets": datasets,
    }
    write_report(args.out, report, markdown)


def pixel_share(dataset: Any) -> dict[str, float]:
    """Share of the labelled pixels per class."""
    counts = torch.zeros(dataset.info.num_classes, dtype=torch.int64)
    for i in range(len(dataset)):
        mask = dataset[i][1]
        counts += torch.bincount(mask[mask != dataset.info.ignore_index].flatten(), minlength=len(counts))
    return {name: float(c) / float(counts.sum()) for name, c in zip(dataset.info.class_names, counts, strict=True)}


def predicted(row: dict[str, Any]) -> str:
    """The classes a training's predictions hit (IoU > 0), by name."""
    return "+".join(name for name, iou in row["per_class_iou"].items() if iou is not None and iou > 0) or "none"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Proxy training on an imbalanced folder dataset: cross-entropy vs OHEM",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Generated `folder:` dataset, {s['size'][0]}x{s['size'][1]} "
        f"images, {s['train']} train / {s['val']} val, data seed {s['data_seed']}: a background class and one object "
        f"class (squares of side {s['side'][0]}-{s['side'][1]} px, a Poisson number per image). Each network trains "
        f"{s['iters']} iterations, batch {s['batch']}, lr {s['lr']}, training seeds {s['seeds']}, with `loss: ce` and "
        "`loss: ohem` (thresh 0.7, min_kept 1/16). Cells: validation mIoU (%) / the classes predicted "
        "(IoU > 0; `red` is the object class).",
        "",
    ]
    for d in report["datasets"]:
        share = d["pixel_share"]["train"]
        rare = 1 - max(share.values())
        lines += [
            f"## {d['objects']} objects per image (object pixels: {100 * rare:.2f}% of train)",
            "",
            "| network | " + " | ".join(f"{r['loss']} seed {r['seed']}" for r in d["runs"]) + " |",
            "|---|" + "---|" * len(d["runs"]),
        ]
        for i, net in enumerate(s["networks"]):
            cells = [f"{100 * r['networks'][i]['miou']:.1f} / {predicted(r['networks'][i])}" for r in d["runs"]]
            lines.append(f"| `{net}` | " + " | ".join(cells) + " |")
        lines.append("")
        for loss in LOSSES:
            runs = [r for r in d["runs"] if r["loss"] == loss]
            nets = [n for r in runs for n in r["networks"]]
            collapsed = sum(1 for n in nets if n["classes_predicted"] == 1)
            one = sum(1 for r in runs if any("one class only" in w for w in r["warnings"]))
            alike = sum(1 for r in runs if any("within" in w for w in r["warnings"]))
            spread = [max(n["miou"] for n in r["networks"]) - min(n["miou"] for n in r["networks"]) for r in runs]
            lines.append(
                f"- `{loss}`: {collapsed} of {len(nets)} trainings predict one class only. The step's warnings: "
                f"some candidate predicts one class in {one} of {len(runs)} seeds, every mIoU alike (within 0.1 "
                f"points) in {alike} of {len(runs)}. mIoU spread across the networks, median over seeds: "
                f"{100 * statistics.median(spread):.1f} points."
            )
        lines.append("")
    lines += [
        "Reading: with plain cross-entropy every candidate predicts the background only, in every seed: all mIoUs "
        "are equal and the step's slopes would rank latency noise; both warnings fire. With OHEM the rare class is "
        "found by some candidates and not others, and which ones changes with the seed: OHEM lifts the collapse "
        "for part of the trainings, not all, in 150 iterations; the one-class warning still names the candidates "
        "that collapsed. Not shown: at lr 0.05 (the demo space's) OHEM was itself unstable on this data (its loss "
        "rose mid-schedule and some trainings collapsed that cross-entropy did not); LPS-Net tiny (one path at "
        "1/2) localises 12-24 px squares with neither loss.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
