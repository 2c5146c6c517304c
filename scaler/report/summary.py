"""Reading a run as a whole: what it measured on, its tables on disk, and the frontier report.

Everything here reads the study (see :mod:`scaler.search.store` for the trial schema) and returns
plain records and pandas frames, so the CLI, the plots and notebooks share one view of a run; how
the report reads as text is :mod:`scaler.report.render`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from scaler.errors import UserError
from scaler.files import atomic_path
from scaler.report.frontier import Hypervolume, pareto_front, run_hypervolume
from scaler.report.path import greedy_path
from scaler.report.table import finite, trials_frame
from scaler.search.record import DIED, OWNER_GONE, STOPPED, TrialRecord
from scaler.search.run_folder import FRONTIER_CSV, PATH_CSV, TRIALS_CSV, search_is_running
from scaler.search.store import RunStore, open_run

__all__ = ["FrontierReport", "RunInfo", "run_info", "summarize_run", "write_tables"]

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
    inherited: bool = False

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
        if self.inherited:  # its proxy mIoUs are not comparable with a from-scratch run's
            parts.append("mIoU from inherited training")
        return parts


def _short_dataset(spec: str | None) -> str | None:
    if not spec:
        return None
    kind, sep, rest = spec.partition(":")
    if sep and ("/" in rest or "\\" in rest):
        folder = Path(rest).name
        return kind if folder.lower() == kind.lower() else f"{kind} ({folder})"
    return spec


def run_info(store: RunStore, name: str | None = None, records: Sequence[TrialRecord] | None = None) -> RunInfo:
    """Title facts of a run: the most common latency fingerprint among its trials, and its space.

    Args:
        store: The run's study.
        name: How to call the run (default: the study name).
        records: ``store.records()``, when the caller has read them already.
    """
    space = store.get("space") or {}
    fps = [dict(t.latency).get("fingerprint") or {} for t in records or store.records() if t.latency is not None]
    fp: dict[str, Any] = {}
    if fps:
        keys = [(f.get("device_name"), f.get("backend"), f.get("dtype"), str(f.get("input_shape"))) for f in fps]
        fp = fps[keys.index(Counter(keys).most_common(1)[0][0])]
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
        budget_ms=float(budget) if finite(budget) else None,
        strategy=store.get("strategy"),
        inherited=(space.get("training") or {}).get("init") == "inherit",
    )


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, fsync=False) as tmp:
        df.to_csv(tmp, index=False)


def write_tables(run_dir: str | Path, store: RunStore, df: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``trials.csv`` (with per-class IoU), ``frontier.csv`` and ``path.csv`` into ``run_dir``.

    Each file is replaced whole, so a reader never sees half a table. ``df``: the run's
    ``trials_frame(store, per_class=True)``, when the caller has made it already.

    Returns:
        ``{"trials": path, "frontier": path, "path": path}``.

    Raises:
        UserError: ``run_dir`` cannot be written.
    """
    run_dir = Path(run_dir)
    df = trials_frame(store, per_class=True) if df is None else df
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
# Evaluations cut short, counted apart from the state Optuna records for them (FAIL, or RUNNING).
_INTERRUPTIONS = {"STOPPED": STOPPED, "DIED": DIED, "INTERRUPTED": OWNER_GONE}
_GONE = "its search process is gone (killed, or its machine went down); run the same scaler search command to resume"
_REPORT_COLUMNS = ["number", "latency_ms", "latency_p10_ms", "latency_p90_ms", "miou", "step", "dimension", "arch"]


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in df[columns].to_dict("records"):
        out.append({k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return out


@dataclasses.dataclass
class FrontierReport:
    """What ``scaler frontier`` prints: the frontier, its hypervolume, the named models, the tables.

    ``counts``: trials by Optuna state, ``total``, and the evaluations cut short apart from their
    state: ``STOPPED`` (by SIGINT/SIGTERM), ``DIED`` (a dead worker), ``INTERRUPTED`` (RUNNING, its
    worker gone); ``FAIL`` counts only real failures. ``status``: ``running``, ``finished``,
    ``stopped``, with the reason. ``scratch_fallbacks``: the trials of an inherited run that trained from
    scratch because their parent's weights could not be had, with the reason.
    """

    run_dir: Path
    info: RunInfo
    counts: dict[str, int]
    status: str | None
    frontier: pd.DataFrame
    references: pd.DataFrame
    hypervolume: Hypervolume
    files: dict[str, Path]
    scratch_fallbacks: dict[int, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Only when there are some: the JSON of runs without them reads as it did.
        fallbacks = {"scratch_fallbacks": self.scratch_fallbacks} if self.scratch_fallbacks else {}
        return {
            "run": str(self.run_dir),
            "info": self.info._asdict(),
            "trials": self.counts,
            "status": self.status,
            "frontier": _records(self.frontier, [*_REPORT_COLUMNS, "strategy", "arch_hash"]),
            "references": _records(self.references, ["reference", *_REPORT_COLUMNS]),
            "hypervolume": self.hypervolume.to_dict(),
            "files": {k: str(v) for k, v in self.files.items()},
            **fallbacks,
        }


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
    records = store.records()  # read once: on a large run, converting the trials is most of the time
    df = trials_frame(store, per_class=True, records=records)
    plain = df["interrupted"].isna()
    counts = {"total": len(df), **{s: int(((df["state"] == s) & plain).sum()) for s in _STATES}}
    counts.update({key: int((df["interrupted"] == word).sum()) for key, word in _INTERRUPTIONS.items()})
    refs = df[df["reference"].notna() & df["latency_ms"].map(finite)].sort_values("latency_ms")
    status = store.get("status")
    reason = store.get("stop_reason")
    if status == "running" and search_is_running(run_dir) is False:
        # Killed outright: it never wrote "stopped", but its lock went with it (run_folder).
        status, reason = "stopped", _GONE
    return FrontierReport(
        run_dir=run_dir,
        info=run_info(store, run_dir.name, records),
        counts=counts,
        status=f"{status}: {reason}" if status and reason else status,
        frontier=pareto_front(df),
        references=refs,
        hypervolume=run_hypervolume(store, df, ref_latency_ms=ref_latency_ms),
        files=write_tables(run_dir, store, df) if write else {},
        scratch_fallbacks={
            t.number: str(t.inherited.get("reason"))
            for t in records
            if t.number is not None and t.inherited and t.inherited.get("fallback") == "scratch"
        },
    )
