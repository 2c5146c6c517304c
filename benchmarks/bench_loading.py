"""Training time and the loader's share of it on a folder dataset: decoding every PNG each access vs decoded once.

The dataset is the synthetic street scenes written as PNG files in the ``folder:`` layout (nothing downloaded).
Three arms, alternating in this one process so they see the same machine: the cache off (every access decodes
the image and the mask, the behaviour before the sample cache), the cache on with a freshly opened dataset (the
first candidate of a search: its first epoch decodes), and the cache on with the dataset already read (every later
candidate: a search process reuses its opened dataset).

    python benchmarks/bench_loading.py --out benchmarks/results/loading
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import command_line, machine, machine_line, write_report

import scaler.proxy.data.base as base
from models import resolve_arch
from scaler.proxy.data import open_dataset
from scaler.proxy.data.generate import write_folder_dataset
from scaler.proxy.data.synthetic import CLASS_NAMES, SyntheticStreets, parse_options
from scaler.proxy.train import TrainConfig, train_and_evaluate

ARMS = ("cache off (decode every access)", "cache on, fresh dataset", "cache on, dataset already read")


def write_synthetic_folder(root: Path, spec_options: str, seed: int) -> Path:
    """The synthetic scenes of ``synthetic:SPEC_OPTIONS`` as PNG files, for ``folder:ROOT``."""
    options = parse_options(spec_options)

    def split(name: str) -> Any:
        data = SyntheticStreets(name, seed=seed, options=options)
        for i in range(len(data)):
            image, mask = data[i]
            yield image.permute(1, 2, 0).numpy(), mask.numpy().astype(np.uint8)

    return write_folder_dataset(root, CLASS_NAMES, {"train": split("train"), "val": split("val")})


def run_arm(arm: str, spec: str, arch: Any, cfg: TrainConfig, warm: Any) -> dict[str, float]:
    if arm == ARMS[2]:
        train_set = warm
    else:
        saved = base.CACHE_BYTES
        base.CACHE_BYTES = 0 if arm == ARMS[0] else saved
        try:
            train_set = open_dataset(spec, "train")
        finally:
            base.CACHE_BYTES = saved
    val_set = open_dataset(spec, "val")
    cpu = time.process_time()
    r = train_and_evaluate(arch, cfg, progress=False, train_set=train_set, val_set=val_set)
    cpu = time.process_time() - cpu
    if not r.ok:
        raise SystemExit(f"training failed: {r.reason}")
    return {"train_seconds": r.train_seconds, "cpu_seconds": cpu, "data_time_share": r.data_time_share, "miou": r.miou}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="ARCH to train (repeatable; default: two small ones)")
    p.add_argument("--synthetic", default="size=128x256,train=200,val=40", help="options of the scenes written")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", default="128x256")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/loading")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.split("x"))
    specs = args.arch or ["lpsnet_tiny", "lpsnet:d=1,2,2,3,3;w=8,16,32,64,64;r=0.75,0.25"]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_folder(Path(tmp) / "scenes", args.synthetic, seed=0)
        spec = f"folder:{root}"
        warm = open_dataset(spec, "train")
        for i in range(len(warm)):
            warm[i]
        rows = []
        for arch_spec in specs:
            arch = resolve_arch(arch_spec, num_classes=len(CLASS_NAMES))
            cfg = TrainConfig(dataset=spec, iters=args.iters, batch=args.batch, crop=crop, val_limit=1, lr=0.01)
            runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
            # Warm-up: the first training of a process pays for thread pools and allocator growth.
            run_arm(ARMS[2], spec, arch, dataclasses.replace(cfg, iters=5), warm)
            for i in range(args.rounds):
                for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                    runs[arm].append(run_arm(arm, spec, arch, cfg, warm))
            base_s = statistics.median(r["train_seconds"] for r in runs[ARMS[0]])
            base_cpu = statistics.median(r["cpu_seconds"] for r in runs[ARMS[0]])
            for arm in ARMS:
                seconds = statistics.median(r["train_seconds"] for r in runs[arm])
                cpu = statistics.median(r["cpu_seconds"] for r in runs[arm])
                rows.append(
                    {
                        "arch": arch_spec,
                        "arm": arm,
                        "runs": runs[arm],
                        "train_seconds_median": seconds,
                        "data_share_median": statistics.median(r["data_time_share"] for r in runs[arm]),
                        "speedup": base_s / seconds,
                        "cpu_seconds_median": cpu,
                        "cpu_speedup": base_cpu / cpu,
                        "same_miou_as_baseline": all(r["miou"] == runs[ARMS[0]][0]["miou"] for r in runs[arm]),
                    }
                )
                print(arch_spec, arm, f"{seconds:.2f} s", f"share {rows[-1]['data_share_median']:.1%}", flush=True)
    report = {
        "command": command_line(),
        "machine": machine(args.threads),
        "settings": {
            "dataset": f"synthetic:{args.synthetic} written as PNG, opened as folder:PATH",
            "batch": args.batch,
            "crop": list(crop),
            "iters": args.iters,
            "rounds": args.rounds,
            "cache_bytes": base.CACHE_BYTES,
        },
        "rows": rows,
    }
    write_report(args.out, report, markdown)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Folder datasets: training time with samples decoded every access vs decoded once",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Dataset {s['dataset']}; batch {s['batch']}, crop "
        f"{s['crop'][0]}x{s['crop'][1]}, {s['iters']} iterations per run, {s['rounds']} alternating rounds, 0 loader "
        f"workers, cache budget {s['cache_bytes'] // 2**20} MiB. Medians over rounds.",
        "",
        "| arch | data | training s (wall) | loader share | CPU s | speed-up vs cache off, wall / CPU "
        "| same mIoU as cache off |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| `{r['arch']}` | {r['arm']} | {r['train_seconds_median']:.2f} | {r['data_share_median']:.1%} "
            f"| {r['cpu_seconds_median']:.2f} | {r['speedup']:.2f}x / {r['cpu_speedup']:.2f}x "
            f"| {'yes' if r['same_miou_as_baseline'] else 'NO'} |"
        )
    lines += [
        "",
        "The loader share is the time the training loop waited for its batch (decoding, when it happens, then "
        "the random scale, crop, flip and colour jitter, which stay per access) over the training time. A fresh "
        "dataset decodes each image once, in its first epoch; a search process reuses the dataset it opened, so "
        "every candidate after the first trains on decoded samples. CPU s is the process's CPU time for the "
        "training and its one-image evaluation: on a machine shared with other jobs it follows the work done, where "
        "wall seconds also follow the neighbours' load.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
