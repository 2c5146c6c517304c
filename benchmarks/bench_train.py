"""Trainer throughput vs a bare PyTorch loop on the same model, batch and crop.

The bare loop trains on batches made once up front (no data pipeline, no schedule, no bookkeeping):
the ceiling for the model on this machine. The trainer's images/s includes everything it does per
step (data generation and augmentation, the learning-rate schedule, the loss check). Both run in
this one process, alternating, so they see the same machine.

    python benchmarks/bench_train.py --out benchmarks/results/train_throughput
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import command_line, machine, machine_line

from models import LPSNet, resolve_arch
from scaler.train import TrainConfig, cached_dataset, train_and_evaluate


def bare_loop(arch, batch: int, crop: tuple[int, int], iters: int, num_classes: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = LPSNet(arch).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, 3, *crop, generator=g) for _ in range(4)]
    ys = [torch.randint(0, num_classes, (batch, *crop), generator=g) for _ in range(4)]
    t0 = time.perf_counter()
    for i in range(iters):
        loss = F.cross_entropy(model(xs[i % 4]), ys[i % 4], ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss)
    return iters * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="ARCH to measure (repeatable; default: three sizes)")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", default="128x256")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/train_throughput")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.split("x"))
    specs = args.arch or ["lpsnet_tiny", "lpsnet:d=1,2,2,3,3;w=8,16,32,64,64;r=0.75,0.25", "lpsnet_s"]
    train_set = cached_dataset(args.dataset, "train", 0)
    val_set = cached_dataset(args.dataset, "val", 0)
    for i in range(len(train_set)):  # generate/load every image once, as any real run's first epoch does
        train_set[i]
    rows = []
    for spec in specs:
        arch = resolve_arch(spec, num_classes=train_set.info.num_classes)
        cfg = TrainConfig(
            dataset=args.dataset,
            iters=args.iters,
            batch=args.batch,
            crop=crop,
            workers=args.workers,
            val_limit=1,
            lr=0.01,
        )
        bare, ours, share = [], [], []
        bare_loop(arch, args.batch, crop, 3, train_set.info.num_classes, 0)  # warm-up
        for _ in range(args.rounds):
            bare.append(bare_loop(arch, args.batch, crop, args.iters, train_set.info.num_classes, 0))
            r = train_and_evaluate(arch, cfg, progress=False, train_set=train_set, val_set=val_set)
            if not r.ok:
                raise SystemExit(f"{spec}: training failed: {r.reason}")
            ours.append(r.images_per_s)
            share.append(r.data_time_share)
        bare_med, ours_med = sorted(bare)[len(bare) // 2], sorted(ours)[len(ours) // 2]
        rows.append(
            {
                "arch": spec,
                "bare_images_per_s": bare,
                "trainer_images_per_s": ours,
                "data_time_share": share,
                "bare_median": bare_med,
                "trainer_median": ours_med,
                "ratio": ours_med / bare_med,
                "data_share_median": sorted(share)[len(share) // 2],
            }
        )
        print(
            spec,
            f"bare {bare_med:.1f} img/s, trainer {ours_med:.1f} img/s, ratio {ours_med / bare_med:.3f}, "
            f"data share {rows[-1]['data_share_median']:.3f}",
            flush=True,
        )
    report = {
        "command": command_line(),
        "machine": machine(args.threads),
        "settings": {
            "dataset": args.dataset,
            "batch": args.batch,
            "crop": list(crop),
            "iters": args.iters,
            "rounds": args.rounds,
            "workers": args.workers,
        },
        "rows": rows,
        "goal": "trainer images/s >= 0.9 x bare loop",
        "met": all(r["ratio"] >= 0.9 for r in rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    md = [
        "# Trainer throughput vs a bare PyTorch loop",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Dataset `{args.dataset}`, batch {args.batch}, "
        f"crop {crop[0]}x{crop[1]}, {args.iters} iterations per run, {args.rounds} alternating rounds, "
        f"{args.workers} loader workers. Medians over rounds.",
        "",
        "| arch | bare loop img/s | trainer img/s | trainer / bare | data time share |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| `{r['arch']}` | {r['bare_median']:.1f} | {r['trainer_median']:.1f} | {r['ratio']:.3f} | "
            f"{r['data_share_median']:.1%} |"
        )
    md += ["", f"Goal: {report['goal']}: {'met' if report['met'] else 'NOT met'}.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
