"""Proxy fidelity on `synthetic`: does a short training schedule rank architectures the way a 5x
longer one does? And does the dataset reward capacity (bigger LPS-Nets score higher on the same
schedule)?

For each architecture: mIoU after the short schedule and after the long one (same recipe, seed and
data stream, only ``iters`` differs), then Kendall's tau-b between the two rankings.

    python benchmarks/bench_proxy.py --short 150 --factor 5 --out benchmarks/results/proxy_fidelity
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import command_line, kendall_tau_b, machine, machine_line

from models import resolve_arch
from scaler.measure.complexity import measure_complexity
from scaler.proxy.train import TrainConfig, cached_dataset, train_and_evaluate

DEFAULT_ARCHS = [
    "lpsnet_tiny",
    "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.25",
    "lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=1",
    "lpsnet:d=1,2,2,3,3;w=4,8,16,32,32;r=0.5",
    "lpsnet:d=1,1,1,1,1;w=8,16,32,64,64;r=0.5",
    "lpsnet:d=1,2,2,3,3;w=8,16,32,64,64;r=0.75,0.25",
    "lpsnet_s",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="ARCH (repeatable; default: 7 architectures tiny..S)")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--short", type=int, default=150, help="iterations of the short schedule")
    p.add_argument("--factor", type=int, default=5, help="the long schedule is this many times longer")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", default="128x256")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/proxy_fidelity")
    p.add_argument("--render-only", action="store_true", help="Rewrite <out>.md from an existing <out>.json.")
    args = p.parse_args()
    if args.render_only:
        render(Path(args.out))
        return
    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.split("x"))
    specs = args.arch or DEFAULT_ARCHS
    train_set = cached_dataset(args.dataset, "train", args.seed)
    val_set = cached_dataset(args.dataset, "val", args.seed)
    eval_size = tuple(val_set[0][1].shape)
    rows = []
    for spec in specs:
        arch = resolve_arch(spec, num_classes=train_set.info.num_classes)
        gmacs = measure_complexity(arch, eval_size).macs / 1e9
        row = {"arch": spec, "inline": arch.inline(), "gmacs_at_eval_size": gmacs}
        for name, iters in (("short", args.short), ("long", args.short * args.factor)):
            cfg = TrainConfig(
                dataset=args.dataset, iters=iters, batch=args.batch, crop=crop, lr=args.lr, seed=args.seed
            )
            t0 = time.perf_counter()
            r = train_and_evaluate(arch, cfg, progress=False, train_set=train_set, val_set=val_set)
            row[name] = {
                "iters": iters,
                "status": r.status,
                "reason": r.reason,
                "miou": r.miou,
                "per_class_iou": r.per_class_iou,
                "seconds": time.perf_counter() - t0,
            }
        rows.append(row)
        print(f"{spec}: short {row['short']['miou']}, long {row['long']['miou']}", flush=True)
    ok = [r for r in rows if r["short"]["status"] == "ok" and r["long"]["status"] == "ok"]
    tau = kendall_tau_b([r["short"]["miou"] for r in ok], [r["long"]["miou"] for r in ok])
    tau = float("nan") if tau is None else tau  # undefined (a constant ranking): as the report always wrote it
    report = {
        "command": command_line(),
        "machine": machine(args.threads),
        "settings": {
            "dataset": args.dataset,
            "short_iters": args.short,
            "long_iters": args.short * args.factor,
            "batch": args.batch,
            "crop": list(crop),
            "lr": args.lr,
            "seed": args.seed,
            "eval_size": list(eval_size),
        },
        "rows": rows,
        "kendall_tau_b": tau,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    render(out)


def render(out: Path) -> None:
    """Write ``<out>.md`` from ``<out>.json``."""
    report = json.loads(out.with_suffix(".json").read_text())
    st, rows, tau = report["settings"], report["rows"], report["kendall_tau_b"]
    ok = [r for r in rows if r["short"]["status"] == "ok" and r["long"]["status"] == "ok"]
    md = [
        "# Proxy fidelity and capacity on `synthetic`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Recipe: SGD lr {st['lr']}, batch {st['batch']}, crop "
        f"{st['crop'][0]}x{st['crop'][1]}, seed {st['seed']}; evaluation on the val split at "
        f"{st['eval_size'][0]}x{st['eval_size'][1]}. Short schedule {st['short_iters']} iterations, long schedule "
        f"{st['long_iters']}. Seconds are wall time on a shared machine.",
        "",
        "| arch | MMACs at eval size | mIoU short | mIoU long | s short | s long |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["gmacs_at_eval_size"]):
        md.append(
            f"| `{r['arch']}` | {1000 * r['gmacs_at_eval_size']:.1f} | {_pct(r['short'])} | {_pct(r['long'])} | "
            f"{r['short']['seconds']:.0f} | {r['long']['seconds']:.0f} |"
        )
    md += ["", f"Kendall tau-b between the short and long rankings ({len(ok)} architectures): **{tau:.3f}**.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


def _pct(run: dict) -> str:
    return f"{100 * run['miou']:.1f}" if run["status"] == "ok" else f"failed ({run['reason']})"


if __name__ == "__main__":
    main()
