"""Exporting one trial of a run: its architecture, deployable models, weights and a model card.

A trial is chosen by number, as the most accurate within a latency (``max_latency_ms``), or as
the fastest reaching an mIoU (``min_miou``). Formats:

- ``json``: ``arch.json``, usable as ARCH everywhere (:func:`models.load_arch_json`);
- ``onnx``: ``model.onnx``, the deploy form (BatchNorm folded) at the run's input size (or
  ``input_size``), checked against PyTorch with onnxruntime; with ``dynamic_axes="batch"`` its batch
  dimension is free, and it is checked at a second batch size too. Height and width are fixed
  (:mod:`scaler.measure.onnx_export` says why): export at the size you deploy at;
- ``torchscript``: ``model.torchscript.pt``, the traced deploy form, reloaded and checked;
- ``pt``: ``weights.pt``, the proxy-trained weights (train form), when the run kept them.

``MODEL_CARD.md`` is always written: architecture, size, latency with its fingerprint, mIoU with
its training schedule and dataset, and where the trial came from. The ONNX and TorchScript models
carry the trained weights when the run kept them, else a seeded random initialisation (they are
then good for deployment and latency tests only), and say which in the card. The card and
``arch.json`` are also attached to the trial in the run's study as Optuna artifacts
(:mod:`scaler.search.artifacts`), so optuna-dashboard shows them with the trial.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from models import (
    LanguageHead,
    SegArch,
    SegModel,
    arch_from_dict,
    build_model,
    load_arch_json,
    portable_state_dict,
    reparameterize,
)
from models.lpsnet import FixedUpsample
from scaler.errors import UserError
from scaler.measure.onnx_export import ONNX_OPSET, OutputMismatch, check_output, export_onnx
from scaler.report.model_card import model_card
from scaler.report.table import own_trials, trials_frame
from scaler.search.artifacts import attach_to_trial, warn_stderr
from scaler.search.store import RunStore, open_run

__all__ = [
    "DYNAMIC_AXES",
    "FORMATS",
    "ONNX_OPSET",
    "ExportError",
    "ExportResult",
    "export_trial",
    "parse_formats",
    "select_trial",
]

FORMATS = ("json", "onnx", "torchscript", "pt")
# What --dynamic-axes offers: a fixed shape (as timed), or a free batch dimension.
DYNAMIC_AXES = ("none", "batch")
FILE_NAMES = {"json": "arch.json", "onnx": "model.onnx", "torchscript": "model.torchscript.pt", "pt": "weights.pt"}
MODEL_CARD = "MODEL_CARD.md"
# fp32 on the CPU: runtimes differ by reassociation only, far below this.
ATOL = 1e-5
RTOL = 1e-4


class ExportError(UserError):
    """A trial that cannot be chosen or exported as asked; the message says why and what is available."""


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"json,onnx"`` or ``["json", "onnx"]`` to a tuple of known formats, in the given order.

    Raises:
        ExportError: An unknown or empty format.
    """
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        if item not in FORMATS:
            raise ExportError(f"unknown export format {item!r}; choose from {', '.join(FORMATS)} (comma-separated)")
        if item not in out:
            out.append(item)
    if not out:
        raise ExportError(f"no export format given; choose from {', '.join(FORMATS)}")
    return tuple(out)


def _describe(row: Any) -> str:
    return f"trial {int(row.number)} at {row.latency_ms:.3f} ms (mIoU {100 * row.miou:.2f}%)"


def select_trial(
    df: pd.DataFrame,
    *,
    trial: int | None = None,
    max_latency_ms: float | None = None,
    min_miou: float | None = None,
) -> tuple[int, str]:
    """Choose the trial to export; exactly one rule must be given.

    Args:
        df: From :func:`~scaler.report.frontier.trials_frame`.
        trial: This trial number (it must be complete; references allowed).
        max_latency_ms: The best mIoU among complete search trials at most this slow (ties: faster,
            then lower number).
        min_miou: The fastest complete search trial reaching this mIoU, a fraction (ties: higher
            mIoU, then lower number).

    Returns:
        ``(trial number, why it was chosen)``.

    Raises:
        ExportError: No rule or several, or no trial qualifies; the message names the closest one.
    """
    given = [
        k for k, v in (("trial", trial), ("max_latency_ms", max_latency_ms), ("min_miou", min_miou)) if v is not None
    ]
    if len(given) != 1:
        raise ExportError(
            f"choose the trial by exactly one of trial, max_latency_ms or min_miou (got {', '.join(given) or 'none'})"
        )
    if trial is not None:
        rows = df[df["number"] == trial]
        if rows.empty:
            span = f"trials 0-{int(df['number'].max())}" if len(df) else "no trials"
            raise ExportError(f"trial {trial} is not in this run ({span})")
        row = rows.iloc[0]
        if row["state"] != "COMPLETE":
            why = f": {row['fail_reason']}" if isinstance(row["fail_reason"], str) else ""
            raise ExportError(
                f"trial {trial} is {row['state']}{why}; export a complete trial (see 'scaler frontier RUN')"
            )
        return int(trial), f"trial {trial} as asked"
    done = own_trials(df)
    done = done[done["state"] == "COMPLETE"]
    done = done[done["latency_ms"].map(math.isfinite) & done["miou"].map(math.isfinite)]
    if done.empty:
        raise ExportError("no complete trial in this run yet")
    if max_latency_ms is not None:
        ok = done[done["latency_ms"] <= max_latency_ms]
        if ok.empty:
            fastest = done.sort_values(["latency_ms", "miou", "number"], ascending=[True, False, True]).iloc[0]
            raise ExportError(f"no complete trial within {max_latency_ms:g} ms; the fastest is {_describe(fastest)}")
        best = ok.sort_values(["miou", "latency_ms", "number"], ascending=[False, True, True]).iloc[0]
        return int(best["number"]), f"the best mIoU within {max_latency_ms:g} ms"
    ok = done[done["miou"] >= min_miou]
    if ok.empty:
        best = done.sort_values(["miou", "latency_ms", "number"], ascending=[False, True, True]).iloc[0]
        raise ExportError(f"no complete trial reaches mIoU {100 * min_miou:.2f}%; the best is {_describe(best)}")
    fastest = ok.sort_values(["latency_ms", "miou", "number"], ascending=[True, False, True]).iloc[0]
    return int(fastest["number"]), f"the fastest reaching mIoU {100 * min_miou:.2f}%"


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_trial` wrote, and how the exported models were checked.

    ``input_shape`` is the shape the exported models take (``N`` free in ONNX when ``dynamic_axes``
    holds ``batch``); ``timed_shape`` the one the run measured the latency at.
    """

    run_dir: Path
    trial: int
    selected_by: str
    arch: SegArch
    latency_ms: float | None
    miou: float | None
    out_dir: Path
    files: dict[str, Path]
    model_card: Path
    checks: dict[str, dict[str, Any]]
    weights: str
    input_shape: tuple[int, ...]
    include_upsample: bool
    dynamic_axes: tuple[str, ...] = ()
    timed_shape: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "trial": self.trial,
            "selected_by": self.selected_by,
            "arch": self.arch.inline(),
            "arch_hash": self.arch.arch_hash(),
            "latency_ms": self.latency_ms,
            "miou": self.miou,
            "out_dir": str(self.out_dir),
            "files": {k: str(v) for k, v in self.files.items()},
            "model_card": str(self.model_card),
            "checks": self.checks,
            "weights": self.weights,
            "input_shape": list(self.input_shape),
            "include_upsample": self.include_upsample,
            "dynamic_axes": list(self.dynamic_axes),
            "timed_shape": list(self.timed_shape),
        }


def _weights_path(run_dir: Path, recorded: str) -> Path:
    """Where the recorded weights are: relative to the run folder, or as recorded (absolute or from the cwd)."""
    path = Path(recorded)
    if path.is_absolute():
        return path
    return next((p for p in (run_dir / path, path) if p.is_file()), run_dir / path)


def _load_weights(run_dir: Path, recorded: str, arch: SegArch, number: int) -> dict[str, torch.Tensor]:
    path = _weights_path(run_dir, recorded)
    if not path.is_file():
        raise ExportError(f"{path}: trial {number}'s weights file is missing")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable or unsafe pickles
        raise ExportError(f"{path}: cannot load the weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise ExportError(f"{path}: expected a dict with 'arch' and 'state_dict'")
    stored = blob.get("arch")
    if stored is not None and arch_from_dict(stored, source=str(path)) != arch:
        raise ExportError(f"{path}: holds weights of {arch_from_dict(stored).inline()}, not {arch.inline()}")
    return blob["state_dict"]


def _build(
    arch: SegArch, state_dict: dict[str, torch.Tensor] | None, source: str, class_names: list[str] | None
) -> SegModel:
    if state_dict is None:
        # A fixed seed without touching the caller's global RNG: exports of one trial are identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(arch).eval()
        if arch.head.language_guided and class_names:
            model.set_classes(class_names)  # the run's classes, embedded as training would
        return model
    model = build_model(arch)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ExportError(f"{source}: the weights do not fit {arch.inline()} ({str(e).splitlines()[0]})") from None
    if isinstance(model.head, LanguageHead) and class_names and len(class_names) == model.head.num_classes:
        model.head.class_names = tuple(class_names)  # what the trained embeddings stand for
    return model.eval()


def _check(name: str, out: torch.Tensor, ref: torch.Tensor, path: Path) -> dict[str, Any]:
    try:
        check = check_output(name, out, ref, atol=ATOL, rtol=RTOL)
    except OutputMismatch as e:
        path.unlink(missing_ok=True)
        raise ExportError(f"{path}: {e}; removed") from None
    return {"max_abs_diff": check.max_abs_diff, "tolerance": check.tolerance}


def _export_onnx(
    model: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path, *, dynamic_batch: bool
) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    export_onnx(model, x, path, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    check = _check("onnxruntime", torch.from_numpy(out), ref, path)
    result = {**check, "opset": ONNX_OPSET, "onnxruntime": ort.__version__}
    if dynamic_batch:
        # A free batch dimension is only kept if it computes what PyTorch does at another batch size.
        x2 = torch.randn(x.shape[0] + 2, *x.shape[1:], generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref2 = model(x2)
        (out2,) = session.run(None, {"image": x2.numpy()})
        check2 = _check(f"onnxruntime at batch {x2.shape[0]}", torch.from_numpy(out2), ref2, path)
        result["max_abs_diff"] = max(check["max_abs_diff"], check2["max_abs_diff"])
        result["dynamic_axes"] = ["batch"]
        result["checked_batches"] = [int(x.shape[0]), int(x2.shape[0])]
    return result


def _export_torchscript(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Tracer and deprecation warnings: a fixed-shape trace is what we ship, and it is checked below.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,))
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            out = loaded(x)
    return _check("reloaded TorchScript", out, ref, path)


def _export_pt(arch: SegArch, model: SegModel, number: int, run_dir: Path, path: Path) -> dict[str, Any]:
    state = portable_state_dict(model)
    blob: dict[str, Any] = {"arch": arch.to_dict(), "state_dict": state, "trial": number, "run": str(run_dir)}
    if model.class_names is not None:
        blob["class_names"] = list(model.class_names)
    torch.save(blob, path)
    back = torch.load(path, map_location="cpu", weights_only=True)
    build_model(arch).load_state_dict(back["state_dict"])
    return {"tensors": len(state)}


def export_trial(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    formats: str | Iterable[str] = ("json",),
    trial: int | None = None,
    max_latency_ms: float | None = None,
    min_miou: float | None = None,
    upsample: bool | None = None,
    dynamic_axes: str = "none",
    input_size: tuple[int, int] | None = None,
    store: RunStore | None = None,
    warn: Callable[[str], None] = warn_stderr,
) -> ExportResult:
    """Export one trial of the run in ``run_dir`` into ``out_dir``.

    Args:
        run_dir: The run folder.
        out_dir: Where the files go (created; files of the same names are replaced).
        formats: Any of :data:`FORMATS`, as a list or comma-separated.
        trial, max_latency_ms, min_miou: How to choose the trial; see :func:`select_trial`
            (``min_miou`` is a fraction).
        upsample: Whether the exported models end with the upsample to the input size
            (default: as the run timed them).
        dynamic_axes: ``"none"`` (every dimension fixed, as the run timed the network) or
            ``"batch"`` (the ONNX model's batch dimension free; checked at two batch sizes).
            TorchScript and the ONNX height and width stay fixed.
        input_size: Export at this ``(height, width)`` instead of the run's (the latency in the
            card stays the one measured at the run's size). Any size works for which
            ``arch.check_input_size`` holds (every path's input at least 1x1; an LPS-Net path with
            resolution ``r`` sees ``int(H*r) x int(W*r)``).
        store: The run's study, if already open.
        warn: Receives one line if the model card cannot be attached to the trial in the study.

    Returns:
        The files written and the checks they passed.

    Raises:
        ExportError: No qualifying trial, weights asked for but not kept, an input size the network
            cannot take, an unknown ``dynamic_axes``, or an exported model that does not compute
            what PyTorch computes (that file is removed).
        UserError: The run cannot be opened or ``out_dir`` cannot be written.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir)
    fmts = parse_formats(formats)
    store = store or open_run(run_dir)
    df = trials_frame(store)
    number, why = select_trial(df, trial=trial, max_latency_ms=max_latency_ms, min_miou=min_miou)
    record = next(t for t in store.records() if t.number == number)
    arch = record.arch
    space = store.get("space") or {}
    fingerprint = record.fingerprint
    shape = tuple(int(v) for v in fingerprint.get("input_shape") or (1, 3, *space.get("input_size", (1024, 2048))))
    timed = shape
    if dynamic_axes not in DYNAMIC_AXES:
        raise ExportError(f"dynamic axes {dynamic_axes!r}: choose one of {', '.join(DYNAMIC_AXES)}")
    if input_size is not None:
        try:
            arch.check_input_size(*input_size)
        except ValueError as e:
            raise ExportError(f"trial {number} ({arch.inline()}): {e}") from None
        shape = (*shape[:-2], int(input_size[0]), int(input_size[1]))
    if upsample is None:
        upsample = bool(
            fingerprint.get("include_upsample", (space.get("latency") or {}).get("include_upsample", False))
        )
    weights_rel = record.weights
    if "pt" in fmts and not weights_rel:
        raise ExportError(
            f"trial {number} has no kept weights (the run did not save them); export json, onnx or torchscript instead"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None

    needs_model = any(f in fmts for f in ("onnx", "torchscript", "pt"))
    state_dict = None
    if needs_model and weights_rel:
        state_dict = _load_weights(run_dir, str(weights_rel), arch, number)
    files: dict[str, Path] = {}
    checks: dict[str, dict[str, Any]] = {}
    try:
        if "json" in fmts:
            path = out_dir / FILE_NAMES["json"]
            path.write_text(arch.to_json() + "\n")
            if load_arch_json(path).arch_hash() != arch.arch_hash():  # pragma: no cover - to_json round-trips
                raise ExportError(f"{path}: does not read back as {arch.inline()}")
            files["json"] = path
        if needs_model:
            source = str(_weights_path(run_dir, str(weights_rel))) if weights_rel else ""
            model = _build(arch, state_dict, source, store.get("class_names"))
            deploy = FixedUpsample(reparameterize(model), upsample).eval()
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = deploy(x)
            for fmt in fmts:
                if fmt == "json":
                    continue
                path = out_dir / FILE_NAMES[fmt]
                if fmt == "onnx":
                    checks[fmt] = _export_onnx(deploy, x, ref, path, dynamic_batch=dynamic_axes == "batch")
                elif fmt == "torchscript":
                    checks[fmt] = _export_torchscript(deploy, x, ref, path)
                else:
                    checks[fmt] = _export_pt(arch, model, number, run_dir, path)
                files[fmt] = path
        card = out_dir / MODEL_CARD
        card.write_text(
            model_card(
                store,
                run_dir,
                number,
                why,
                arch,
                record,
                files,
                checks,
                shape,
                upsample,
                state_dict is not None,
            )
        )
    except OSError as e:
        raise ExportError(f"{out_dir}: cannot write the export ({e.strerror})") from None
    attach_to_trial(store, run_dir, number, [card, *([files["json"]] if "json" in files else [])], warn=warn)
    row = df[df["number"] == number].iloc[0]
    return ExportResult(
        run_dir=run_dir,
        trial=number,
        selected_by=why,
        arch=arch,
        latency_ms=_finite_or_none(row["latency_ms"]),
        miou=_finite_or_none(row["miou"]),
        out_dir=out_dir,
        files=files,
        model_card=card,
        checks=checks,
        weights="proxy-trained (from the run)"
        if state_dict is not None
        else "random initialisation, seed 0 (the run kept no trained weights)",
        input_shape=shape,
        include_upsample=upsample,
        dynamic_axes=tuple(checks.get("onnx", {}).get("dynamic_axes", ())),
        timed_shape=timed,
    )


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
