"""Reading a run: every trial as a table, the Pareto frontier, its hypervolume, the greedy path.

Everything here reads the study (see :mod:`scaler.search.store` for the trial schema) and returns pandas
frames, so the CLI, the plots and notebooks share one view of a run. mIoU stays a fraction in
``[0, 1]`` as the study stores it; latency is the median in milliseconds.

Trials that carry a ``reference`` attribute (a named model measured for comparison) are rows like
any other, but are left out of the frontier, the hypervolume and the greedy path by default: they
are not results of the search.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pandas as pd

from models import LPSNetArch
from scaler.errors import UserError
from scaler.files import atomic_path
from scaler.search.run_folder import FRONTIER_CSV, PATH_CSV, TRIALS_CSV
from scaler.search.store import RunStore, open_run

__all__ = [
    "PATH_COLUMNS",
    "TRIAL_COLUMNS",
    "FrontierReport",
    "Hypervolume",
    "RunInfo",
    "greedy_path",
    "hypervolume",
    "open_run",
    "operator_dimension",
    "pareto_front",
    "reference_point",
    "run_hypervolume",
    "run_info",
    "summarize_run",
    "trials_frame",
    "write_tables",
]


TRIAL_COLUMNS = [
    "number",
    "state",
    "strategy",
    "step",
    "parent",
    "operators",
    "dimension",
    "steplen",
    "reference",
    "arch",
    "arch_hash",
    *[f"d{i}" for i in range(1, 6)],
    *[f"w{i}" for i in range(1, 6)],
    *[f"r{i}" for i in range(1, 4)],
    "num_paths",
    "latency_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    "miou",
    "pixel_accuracy",
    "train_seconds",
    "fail_reason",
    "over_budget",
    "retry_of",
    "weights",
    "device",
    "latency_fingerprint",
]

PATH_COLUMNS = [
    "step",
    "trial",
    "parent",
    "arch",
    "operators",
    "dimension",
    "steplen",
    "latency_ms",
    "miou",
    "slope",
    "candidates",
    "reason",
]

_INT_COLUMNS = ("step", "parent", "steplen", "retry_of", "num_paths")
_STEP_KEY = re.compile(r"^step_(\d+)$")
_KIND_BY_PREFIX = (("depth", "depth"), ("width", "width"), ("res", "resolution"))


_RUNTIMES = {
    "torch": "torch {v} eager",
    "cudagraph": "torch {v} CUDA graph",
    "onnxruntime": "onnxruntime {v}",
    "tensorrt": "TensorRT {v}",
}


class RunInfo(NamedTuple):
    """What a run measured on, for titles: every latency names device, runtime, dtype and input."""

    name: str
    space: str
    device: str | None
    runtime: str | None
    dtype: str | None
    input_shape: str | None
    include_upsample: bool | None
    dataset: str | None
    budget_ms: float | None
    strategy: str | None

    def setup(self) -> str:
        """One line: device, runtime, dtype, input, upsample and dataset."""
        return " · ".join(self.setup_parts())

    def setup_parts(self) -> list[str]:
        """The parts of :meth:`setup`, for callers that wrap it."""
        parts = [
            self.device or "unknown device",
            self.runtime or "unknown runtime",
            self.dtype or "unknown dtype",
            f"input {self.input_shape}" if self.input_shape else "unknown input",
        ]
        if self.include_upsample is not None:
            parts.append("with final upsample" if self.include_upsample else "no final upsample")
        parts.append(f"dataset {self.dataset}" if self.dataset else "unknown dataset")
        return parts


def _short_dataset(spec: str | None) -> str | None:
    if not spec:
        return None
    kind, sep, rest = spec.partition(":")
    if sep and ("/" in rest or "\\" in rest):
        folder = Path(rest).name
        return kind if folder.lower() == kind.lower() else f"{kind} ({folder})"
    return spec


def _latency_records(store: RunStore) -> list[dict[str, Any]]:
    return [t.user_attrs["latency"] for t in store.trials() if isinstance(t.user_attrs.get("latency"), dict)]


def run_info(store: RunStore, name: str | None = None) -> RunInfo:
    """Title facts of a run: the most common latency fingerprint among its trials, and its space.

    Args:
        store: The run's study.
        name: How to call the run (default: the study name).
    """
    space = store.get("space") or {}
    fps = [rec.get("fingerprint") or {} for rec in _latency_records(store)]
    fp: dict[str, Any] = {}
    if fps:
        keys = [(f.get("device_name"), f.get("backend"), f.get("dtype"), str(f.get("input_shape"))) for f in fps]
        fp = fps[max(range(len(fps)), key=lambda i: keys.count(keys[i]))]
    latency = space.get("latency") or {}
    device = fp.get("device_name")
    if device and not str(fp.get("device", "")).startswith("cuda"):
        threads = fp.get("threads")
        device = f"{device} (cpu{f', {threads} threads' if threads else ''})"
    backend = fp.get("backend") or latency.get("backend")
    runtime = None
    if backend:
        runtime = _RUNTIMES.get(backend, backend + " {v}").format(v=fp.get("backend_version") or "").replace("  ", " ")
    shape = fp.get("input_shape")
    if not shape and space.get("input_size"):
        shape = [latency.get("batch", 1), 3, *space["input_size"]]
    upsample = fp.get("include_upsample", latency.get("include_upsample"))
    budget = (space.get("stopping") or {}).get("latency_budget_ms")
    return RunInfo(
        name=name or store.study_name,
        space=str(space.get("name") or store.study_name),
        device=device or (f"{latency['device']}" if latency.get("device") else None),
        runtime=runtime.strip() if runtime else None,
        dtype=fp.get("dtype") or latency.get("dtype"),
        input_shape="x".join(map(str, shape)) if shape else None,
        include_upsample=None if upsample is None else bool(upsample),
        dataset=_short_dataset(space.get("dataset")),
        budget_ms=float(budget) if _finite(budget) else None,
        strategy=store.get("strategy"),
    )


def operator_dimension(operators: Iterable[str], kinds: dict[str, str] | None = None) -> str:
    """The dimension (``depth``, ``width``, ``resolution``) grown by ``operators``; ``""`` for none.

    Args:
        operators: Operator names as the trials record them (``width_1-5``).
        kinds: Name to kind, from the stored space; names missing there are read from their prefix.

    Returns:
        The kind, or the kinds joined with ``+`` when the operators grow several dimensions.
    """
    found = []
    for name in operators:
        kind = (kinds or {}).get(name)
        if kind is None:
            kind = next((k for prefix, k in _KIND_BY_PREFIX if name.startswith(prefix)), "other")
        if kind not in found:
            found.append(kind)
    return "+".join(found)


def _operator_kinds(store: RunStore) -> dict[str, str]:
    ops = (store.get("space") or {}).get("operators") or []
    return {op["name"]: op["kind"] for op in ops if isinstance(op, dict) and "name" in op and "kind" in op}


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def trials_frame(store: RunStore, *, per_class: bool = False) -> pd.DataFrame:
    """One row per trial of the run, in trial order.

    Args:
        store: The run's study.
        per_class: Add an ``iou_<class>`` column per class (from the training result).

    Returns:
        Columns :data:`TRIAL_COLUMNS` (plus the per-class ones). ``latency_ms`` is the trial's
        value when complete, else the measured median when there is one; ``miou`` is a fraction.
    """
    kinds = _operator_kinds(store)
    rows = []
    class_names: list[str] = []
    for t in store.trials():
        a = t.user_attrs
        arch = LPSNetArch.from_dict(a["arch"]) if "arch" in a else None
        lat = a.get("latency") or {}
        train = a.get("train") or {}
        fp = lat.get("fingerprint") or {}
        ops = list(a.get("operators") or [])
        complete = t.state == optuna.trial.TrialState.COMPLETE and t.values is not None
        res = [*(arch.resolution if arch else ()), 0.0, 0.0, 0.0][:3]
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "strategy": a.get("strategy"),
            "step": _int_or_none(a.get("step")),
            "parent": _int_or_none(a.get("parent")),
            "operators": "+".join(ops),
            "dimension": operator_dimension(ops, kinds),
            "steplen": _int_or_none(a.get("steplen")),
            "reference": a.get("reference"),
            "arch": arch.inline() if arch else None,
            "arch_hash": a.get("arch_hash") or (arch.arch_hash() if arch else None),
            **{f"d{i + 1}": (arch.depth[i] if arch else None) for i in range(5)},
            **{f"w{i + 1}": (arch.width[i] if arch else None) for i in range(5)},
            **{f"r{i + 1}": (res[i] if arch else None) for i in range(3)},
            "num_paths": arch.num_paths if arch else None,
            "latency_ms": float(t.values[0]) if complete else lat.get("median_ms"),
            "latency_p10_ms": lat.get("p10_ms"),
            "latency_p90_ms": lat.get("p90_ms"),
            "miou": float(t.values[1]) if complete else None,
            "pixel_accuracy": train.get("pixel_accuracy"),
            "train_seconds": train.get("train_seconds"),
            "fail_reason": a.get("fail_reason"),
            "over_budget": bool(a.get("over_budget", False)),
            "retry_of": _int_or_none(a.get("retry_of")),
            "weights": a.get("weights"),
            "device": fp.get("device_name"),
            "latency_fingerprint": lat.get("fingerprint_hash"),
        }
        if per_class:
            for name, iou in (train.get("per_class_iou") or {}).items():
                if name not in class_names:
                    class_names.append(name)
                row[f"iou_{name}"] = iou
        rows.append(row)
    if per_class:
        stored = [str(n) for n in store.get("class_names") or []]
        class_names = stored + [n for n in class_names if n not in stored]
    columns = TRIAL_COLUMNS + [f"iou_{n}" for n in class_names]
    df = pd.DataFrame(rows, columns=columns)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "miou", "pixel_accuracy", "train_seconds"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _complete(df: pd.DataFrame, include_reference: bool) -> pd.DataFrame:
    ok = (df["state"] == "COMPLETE") & df["latency_ms"].map(_finite) & df["miou"].map(_finite)
    if not include_reference:
        ok &= df["reference"].isna()
    return df[ok]


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def pareto_front(df: pd.DataFrame, *, include_reference: bool = False) -> pd.DataFrame:
    """The complete trials no other complete trial beats on both latency (lower) and mIoU (higher).

    Trials with exactly the same latency and mIoU are all kept (none beats the others); at equal
    latency only the best mIoU survives.

    Args:
        df: From :func:`trials_frame`.
        include_reference: Also consider trials of named models measured for comparison.

    Returns:
        The frontier rows, sorted by latency (then trial number), with ``df``'s columns.
    """
    done = _complete(df, include_reference).sort_values(["latency_ms", "miou", "number"], ascending=[True, False, True])
    keep = []
    best = -math.inf
    for _, group in done.groupby("latency_ms", sort=True):
        top = group["miou"].max()
        if top > best:
            keep.extend(group.index[group["miou"] == top])
            best = top
    return done.loc[keep].sort_values(["latency_ms", "number"]).reset_index(drop=True)


class Hypervolume(NamedTuple):
    """The area a frontier dominates, bounded by a reference point, in ms x mIoU (fraction).

    ``rule`` says where the reference point came from; compare hypervolumes only at the same point.
    """

    value: float
    ref_latency_ms: float | None
    ref_miou: float
    rule: str
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "units": "ms x mIoU (fraction)",
            "reference": {"latency_ms": self.ref_latency_ms, "miou": self.ref_miou},
            "rule": self.rule,
            "n_points": self.n_points,
        }


def reference_point(
    latencies: Iterable[float], *, budget_ms: float | None = None, ref_latency_ms: float | None = None
) -> tuple[float | None, str]:
    """The reference latency for the hypervolume and the rule that chose it.

    Args:
        latencies: Latencies (ms) of the completed trials.
        budget_ms: The space's latency budget, used when given.
        ref_latency_ms: An explicit reference, used first (to compare runs at one point).

    Returns:
        ``(latency ms, rule)``; the latency is ``None`` when there is nothing to derive it from.
    """
    if ref_latency_ms is not None:
        return float(ref_latency_ms), "given"
    if budget_ms is not None:
        return float(budget_ms), "the space's latency budget"
    lats = [float(v) for v in latencies if _finite(v)]
    if not lats:
        return None, "no completed trials"
    return 1.1 * max(lats), "1.1 x the slowest completed trial"


def hypervolume(
    points: Iterable[tuple[float, float]],
    ref: tuple[float, float] | None = None,
    *,
    budget_ms: float | None = None,
) -> Hypervolume:
    """Exact 2-D hypervolume of ``(latency ms, mIoU)`` points, latency minimised, mIoU maximised.

    Args:
        points: Any points; dominated ones and those not better than the reference add nothing.
        ref: ``(latency ms, mIoU)``; default: ``(budget_ms, 0)`` if a budget is given, else
            ``(1.1 x the largest latency, 0)``.
        budget_ms: The latency budget for the default reference.

    Returns:
        The value with the reference point used and its rule.
    """
    pts = [(float(lat), float(m)) for lat, m in points if _finite(lat) and _finite(m)]
    if ref is None:
        ref_lat, rule = reference_point((p[0] for p in pts), budget_ms=budget_ms)
        ref_miou = 0.0
    else:
        ref_lat, ref_miou, rule = float(ref[0]), float(ref[1]), "given"
    if ref_lat is None:
        return Hypervolume(0.0, None, ref_miou, rule, 0)
    inside = sorted((p for p in pts if p[0] < ref_lat and p[1] > ref_miou), key=lambda p: (p[0], -p[1]))
    value = 0.0
    level = ref_miou
    used = 0
    for lat, m in inside:
        if m > level:
            value += (ref_lat - lat) * (m - level)
            level = m
            used += 1
    return Hypervolume(value, ref_lat, ref_miou, rule, used)


def _budget(store: RunStore) -> float | None:
    stopping = (store.get("space") or {}).get("stopping") or {}
    value = stopping.get("latency_budget_ms")
    return float(value) if value is not None else None


def run_hypervolume(store: RunStore, df: pd.DataFrame, *, ref_latency_ms: float | None = None) -> Hypervolume:
    """Hypervolume of the run's completed search trials (references left out).

    The reference latency is ``ref_latency_ms`` if given, else the space's latency budget, else
    1.1 x the slowest completed trial; the reference mIoU is 0.
    """
    done = _complete(df, include_reference=False)
    ref_lat, rule = reference_point(done["latency_ms"], budget_ms=_budget(store), ref_latency_ms=ref_latency_ms)
    points = list(zip(done["latency_ms"], done["miou"], strict=True))
    if ref_lat is None:
        return Hypervolume(0.0, None, 0.0, rule, 0)
    return hypervolume(points, (ref_lat, 0.0))._replace(rule=rule)


def _step_records(store: RunStore) -> list[dict[str, Any]]:
    steps = []
    for key, value in store.study.user_attrs.items():
        m = _STEP_KEY.match(key)
        if m and isinstance(value, dict):
            steps.append({"step": int(m.group(1)), **value})
    return sorted(steps, key=lambda s: s["step"])


def _start_trial(df: pd.DataFrame, steps: list[dict[str, Any]]) -> int | None:
    if steps and steps[0].get("step") == 1 and _int_or_none(steps[0].get("parent")) is not None:
        return int(steps[0]["parent"])
    start = df[(df["step"] == 0) & df["reference"].isna() & (df["strategy"].isna() | (df["strategy"] == "greedy"))]
    done = start[start["state"] == "COMPLETE"]
    pick = done if len(done) else start
    return int(pick["number"].min()) if len(pick) else None


def greedy_path(store: RunStore, df: pd.DataFrame) -> pd.DataFrame:
    """The greedy trajectory: the start network, then each step's winner, from the ``step_<s>`` records.

    Args:
        store: The run's study.
        df: From :func:`trials_frame`.

    Returns:
        Columns :data:`PATH_COLUMNS`, one row per step (step 0 is the start). A step that ended
        the search without a winner has an empty ``trial`` and its ``reason``. ``slope`` is the
        winner's (mIoU gain) / (latency gain) against its parent, mIoU as a fraction per ms.
        Empty when the run has no greedy steps.
    """
    steps = _step_records(store)
    start = _start_trial(df, steps)
    by_number = df.set_index("number", drop=False)
    rows: list[dict[str, Any]] = []

    def trial_row(step: int, number: int | None, parent: Any, slope: Any, candidates: Any, reason: str) -> None:
        row: dict[str, Any] = dict.fromkeys(PATH_COLUMNS)
        row.update({"step": step, "trial": number, "parent": _int_or_none(parent), "slope": slope, "reason": reason})
        row["candidates"] = " ".join(str(c) for c in candidates) if candidates else ""
        if number is not None and number in by_number.index:
            t = by_number.loc[number]
            for col in ("arch", "operators", "dimension", "steplen", "latency_ms", "miou"):
                row[col] = t[col]
        rows.append(row)

    if start is not None:
        trial_row(0, start, None, None, [], "start network")
    for s in steps:
        winner = _int_or_none(s.get("winner"))
        slopes = s.get("slopes") or {}
        slope = slopes.get(str(winner)) if winner is not None else None
        trial_row(s["step"], winner, s.get("parent"), slope, s.get("candidates") or [], str(s.get("reason") or ""))
    out = pd.DataFrame(rows, columns=PATH_COLUMNS)
    for col in ("step", "trial", "parent", "steplen"):
        out[col] = out[col].astype("Int64")
    for col in ("latency_ms", "miou", "slope"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, fsync=False) as tmp:
        df.to_csv(tmp, index=False)


def write_tables(run_dir: str | Path, store: RunStore) -> dict[str, Path]:
    """Write ``trials.csv`` (with per-class IoU), ``frontier.csv`` and ``path.csv`` into ``run_dir``.

    Each file is replaced whole, so a reader never sees half a table.

    Returns:
        ``{"trials": path, "frontier": path, "path": path}``.

    Raises:
        UserError: ``run_dir`` cannot be written.
    """
    run_dir = Path(run_dir)
    df = trials_frame(store, per_class=True)
    tables = {
        "trials": (df, run_dir / TRIALS_CSV),
        "frontier": (pareto_front(df), run_dir / FRONTIER_CSV),
        "path": (greedy_path(store, df), run_dir / PATH_CSV),
    }
    for table, path in tables.values():
        try:
            _write_csv(table, path)
        except OSError as e:
            raise UserError(f"{path}: cannot write ({e.strerror})") from None
    return {name: path for name, (_, path) in tables.items()}


_STATES = ("COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED")
_REPORT_COLUMNS = ["number", "latency_ms", "latency_p10_ms", "latency_p90_ms", "miou", "step", "dimension", "arch"]


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in df[columns].to_dict("records"):
        out.append({k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return out


@dataclasses.dataclass
class FrontierReport:
    """What ``scaler frontier`` prints: the frontier, its hypervolume, the named models, the tables."""

    run_dir: Path
    info: RunInfo
    counts: dict[str, int]
    status: str | None
    frontier: pd.DataFrame
    references: pd.DataFrame
    hypervolume: Hypervolume
    files: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "info": self.info._asdict(),
            "trials": self.counts,
            "status": self.status,
            "frontier": _records(self.frontier, [*_REPORT_COLUMNS, "strategy", "arch_hash"]),
            "references": _records(self.references, ["reference", *_REPORT_COLUMNS]),
            "hypervolume": self.hypervolume.to_dict(),
            "files": {k: str(v) for k, v in self.files.items()},
        }

    def format(self) -> str:
        """A table for people: one frontier trial per line, fastest first."""
        words = {
            "COMPLETE": "complete",
            "FAIL": "failed",
            "RUNNING": "running",
            "WAITING": "queued",
            "PRUNED": "pruned",
        }
        counts = ", ".join(f"{n} {words[s]}" for s, n in self.counts.items() if s != "total" and n)
        lines = [
            f"{self.run_dir}: {self.info.space}, strategy {self.info.strategy or '?'}; "
            f"{self.counts['total']} trials ({counts or 'none'})" + (f"; {self.status}" if self.status else ""),
            f"latency on {self.info.setup()}",
            "",
        ]
        if self.frontier.empty:
            lines.append("no completed trials yet")
        else:
            lines += _table(self.frontier, "trial")
        if not self.references.empty:
            lines += ["", "named models measured for comparison (not in the frontier):"]
            lines += _table(self.references, "model")
        hv = self.hypervolume
        lines.append("")
        if hv.ref_latency_ms is None:
            lines.append("hypervolume: no reference point (no completed trials and no --ref-latency)")
        else:
            lines.append(
                f"hypervolume {hv.value:.6g} (ms x mIoU fraction, {hv.n_points} frontier points) against the "
                f"reference point latency {hv.ref_latency_ms:.6g} ms, mIoU {100 * hv.ref_miou:g}% ({hv.rule})"
            )
        if self.files:
            lines.append("wrote " + ", ".join(str(p) for p in self.files.values()))
        return "\n".join(lines)


def _table(df: pd.DataFrame, first: str) -> list[str]:
    header = f"{first:>8}  {'latency ms':>10}  {'p10-p90 ms':>15}  {'mIoU %':>6}  {'step':>4}  {'grew':<10}  arch"
    lines = [header]
    for r in df.itertuples(index=False):
        label = r.reference if first == "model" else str(r.number)
        spread = (
            f"{r.latency_p10_ms:.3f}-{r.latency_p90_ms:.3f}"
            if _finite(r.latency_p10_ms) and _finite(r.latency_p90_ms)
            else "-"
        )
        miou = f"{100 * r.miou:6.2f}" if _finite(r.miou) else f"{'-':>6}"
        step = "-" if r.step is pd.NA else str(r.step)
        lines.append(
            f"{label:>8}  {r.latency_ms:10.3f}  {spread:>15}  {miou}  {step:>4}  {r.dimension or '':<10}  {r.arch}"
        )
    return lines


def summarize_run(
    run_dir: str | Path,
    store: RunStore | None = None,
    *,
    ref_latency_ms: float | None = None,
    write: bool = True,
) -> FrontierReport:
    """Read a run: its frontier, hypervolume and named models; write its tables unless ``write`` is off.

    Args:
        run_dir: The run folder.
        store: Its study, if already open.
        ref_latency_ms: Reference latency of the hypervolume (default: the budget, else 1.1 x the slowest).
        write: Write ``trials.csv``, ``frontier.csv`` and ``path.csv`` into ``run_dir``.

    Raises:
        UserError: The run cannot be opened or its folder cannot be written.
    """
    run_dir = Path(run_dir)
    store = store or open_run(run_dir)
    df = trials_frame(store)
    counts = {"total": len(df), **{s: int((df["state"] == s).sum()) for s in _STATES}}
    refs = df[df["reference"].notna() & df["latency_ms"].map(_finite)].sort_values("latency_ms")
    status = store.get("status")
    reason = store.get("stop_reason")
    return FrontierReport(
        run_dir=run_dir,
        info=run_info(store, run_dir.name),
        counts=counts,
        status=f"{status}: {reason}" if status and reason else status,
        frontier=pareto_front(df),
        references=refs,
        hypervolume=run_hypervolume(store, df, ref_latency_ms=ref_latency_ms),
        files=write_tables(run_dir, store) if write else {},
    )
