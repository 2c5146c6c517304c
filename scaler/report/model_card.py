"""The MODEL_CARD.md written beside every export: what the network is, how fast and accurate, measured how."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import (
    LPSNetArch,
)
from scaler.measure.onnx_export import ONNX_OPSET
from scaler.search.record import TrialRecord
from scaler.search.store import RunStore

__all__ = ["model_card"]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def model_card(
    store: RunStore,
    run_dir: Path,
    number: int,
    why: str,
    arch: LPSNetArch,
    record: TrialRecord,
    files: dict[str, Path],
    checks: dict[str, dict[str, Any]],
    shape: tuple[int, ...],
    upsample: bool,
    trained: bool,
) -> str:
    """The Markdown of an exported trial's MODEL_CARD.md.

    Args:
        store: The run's study (its space and class names).
        run_dir: The run folder.
        number: The exported trial.
        why: How it was chosen (``--max-latency 2``, say).
        arch: Its architecture.
        record: Its trial record (latency with fingerprint, training result, where it came from).
        files: The exported files by format.
        checks: Each exported format's check against PyTorch.
        shape: The input shape the files take.
        upsample: Whether the files end with the final upsample.
        trained: Whether the weights are the run's proxy-trained ones.
    """
    from scaler.measure.complexity import measure_complexity  # ptflops only when a card is written

    space = store.get("space") or {}
    h, w = int(shape[-2]), int(shape[-1])
    shape_text = "x".join(map(str, shape))
    cx = measure_complexity(arch, (h, w), include_upsample=upsample)
    latency = record.latency or {}
    fp = record.fingerprint
    train = record.train or {}
    config = train.get("config") or {}
    reference = record.reference
    title = f"{reference} measured in run {run_dir.name}" if reference else f"{space.get('name', 'run')} trial {number}"
    upsample_text = (
        "with the final upsample to the input size" if upsample else "up to the head's logits (no final upsample)"
    )
    lines = [
        f"# {title}",
        "",
        f"`{arch.inline()}` (arch hash `{arch.arch_hash()}`)",
        "",
        f"Exported from run `{run_dir}` (study `{store.study_name}`), trial {number}, chosen as {why}.",
        "",
        "## Architecture",
        "",
        *_table(
            ["", *[f"stage {i}" for i in range(1, 6)]],
            [["depth (blocks)", *arch.depth], ["width (channels)", *arch.width]],
        ),
        "",
        f"- resolution: {', '.join(f'{r:g}' for r in arch.resolution)} ({arch.num_paths} "
        f"path{'s' if arch.num_paths > 1 else ''}; inputs "
        f"{', '.join(f'{ph}x{pw}' for ph, pw in cx.path_inputs)} at {h}x{w})",
        f"- classes: {arch.num_classes}"
        + (f" ({', '.join(map(str, store.get('class_names')))})" if store.get("class_names") else ""),
        f"- parameters: {cx.params_train:,} (train form, with BatchNorm); {cx.params_deploy:,} (deploy form)",
        f"- MACs: {cx.macs / 1e9:.4g} G for one 3x{h}x{w} image, deploy form, "
        f"{'with the final upsample' if upsample else 'up to the head'} (ptflops {cx.ptflops_version}, "
        f"backend '{cx.flops_backend}')",
        f"- head: {arch.head.describe()}",
        f"- head output: {arch.num_classes}x{cx.head_hw[0]}x{cx.head_hw[1]} (output stride 16)",
        *(
            [
                "- class embeddings: baked into the exported ONNX and TorchScript models as constants (one row per "
                "class, in the order above); to name other classes, load `weights.pt` and call "
                "`model.set_classes([...])`, then export again",
            ]
            if arch.head.language_guided
            else []
        ),
        "",
        "## Latency",
        "",
    ]
    if latency:
        lines += [
            f"Median **{latency.get('median_ms', float('nan')):.3f} ms** per forward pass "
            f"(p10 {latency.get('p10_ms', float('nan')):.3f}, p90 {latency.get('p90_ms', float('nan')):.3f} ms, "
            f"{latency.get('n_samples', '?')} samples), input {'x'.join(map(str, fp.get('input_shape', shape)))}, "
            f"{'with' if fp.get('include_upsample') else 'without'} the final upsample.",
            "",
            *_table(["fingerprint", "value"], [[k, f"`{v}`"] for k, v in fp.items()]),
        ]
        if latency.get("fingerprint_hash"):
            lines += ["", f"Fingerprint hash `{latency['fingerprint_hash']}`."]
    else:
        lines.append("Not measured.")
    lines += ["", "## Accuracy", ""]
    miou = train.get("miou")
    dataset = space.get("dataset") or config.get("dataset") or "unknown"
    schedule = {**(space.get("training") or {}), **config}
    inherited = record.inherited or {}
    fallback = inherited.get("reason") if inherited.get("fallback") == "scratch" else None
    if miou is not None:
        size = space.get("input_size")
        where = [
            f"{train['num_val_images']} images" if train.get("num_val_images") else "",
            f"at {size[0]}x{size[1]}" if size else "",
        ]
        where_text = " ".join(w for w in where if w)
        lines += [
            f"mIoU **{100 * miou:.2f}%**"
            + (f" (pixel accuracy {100 * train['pixel_accuracy']:.2f}%)" if train.get("pixel_accuracy") else "")
            + f" on the validation split of `{dataset}`"
            + (f" ({where_text})." if where_text else "."),
            "",
            "After a short proxy training, the same schedule for every trial of the run: compare it within "
            "the run, not with fully trained published numbers."
            + (
                " Inherited training: the network started from its parent's trained weights (grown), so this "
                "number is not comparable with from-scratch ones."
                if schedule.get("init") == "inherit" and not fallback
                else ""
            )
            + (f" Inherited training was asked, but it trained from scratch: {fallback}." if fallback else ""),
            "",
            *_table(
                ["schedule", "value"],
                [[k, f"`{schedule[k]}`"] for k in ("iters", "batch", "crop", "lr", "seed", "device") if k in schedule],
            ),
        ]
        per_class = train.get("per_class_iou") or {}
        if per_class:
            lines += [
                "",
                *_table(
                    ["class", "IoU (%)"],
                    [[n, "-" if v is None else f"{100 * v:.2f}"] for n, v in per_class.items()],
                ),
            ]
    else:
        lines.append("Not trained.")
    lines += ["", "## Where it came from", ""]
    if reference:
        lines.append(f"The named model `{reference}`, measured in this run for comparison.")
    else:
        ops = ", ".join(record.operators) or "none (the start network)"
        lines.append(
            f"Strategy {record.strategy or '?'}, step {'?' if record.step is None else record.step}, parent trial "
            f"{record.parent if record.parent is not None else '-'}, operators {ops}"
            + (f" x{record.steplen}" if record.steplen else "")
            + "."
        )
    lines += ["", "## Files", ""]
    weights_text = (
        "the proxy-trained weights kept by the run"
        if trained
        else "a seeded random initialisation (the run did not keep trained weights): for deployment and latency "
        "tests, not for predictions"
    )
    onnx_check = checks.get("onnx", {})
    onnx_shape = shape_text
    if onnx_check.get("dynamic_axes"):
        batches = " and ".join(map(str, onnx_check.get("checked_batches", [])))
        onnx_shape = "x".join(["N", *map(str, shape[1:])]) + f" (batch N free; checked at batches {batches})"
    descriptions = {
        "json": "the architecture; use it as ARCH anywhere (`scaler info arch.json`, `models.load_arch_json`)",
        "onnx": f"deploy form (BatchNorm folded), opset {ONNX_OPSET}, input `image` float32 {onnx_shape}, "
        f"output `logits` {upsample_text}",
        "torchscript": f"traced deploy form, input float32 {shape_text}, {upsample_text}",
        "pt": "train-form state dict: `build_model(load_arch_json('arch.json')).load_state_dict("
        "torch.load('weights.pt', weights_only=True)['state_dict'])`",
    }
    for fmt, path in files.items():
        check = checks.get(fmt, {})
        note = ""
        if "max_abs_diff" in check:
            diff, tol = check["max_abs_diff"], check["tolerance"]
            note = f"; checked against PyTorch: max abs diff {diff:.2e} (tolerance {tol:.2e})"
        lines.append(f"- `{path.name}`: {descriptions[fmt]}{note}")
    if any(f in files for f in ("onnx", "torchscript")):
        lines += ["", f"Weights in the exported models: {weights_text}."]
    return "\n".join(lines) + "\n"
