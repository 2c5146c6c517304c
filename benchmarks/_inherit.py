"""Helpers of ``bench_inherit.py``: the modes' spaces, what a finished greedy run says (path, training
time), the ground-truth and proxy trainings of a fixed set of networks (cached in a json file), and the
comparisons (Kendall tau-b, ground-truth mIoU at equal latency).

Kept apart from the script so that the pure parts (path extraction, interpolation) can be tested
without running a search.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from models import LPSNetArch, arch_from_dict, grow_state_dict, resolve_arch
from scaler.errors import UserError
from scaler.files import atomic_write_text
from scaler.measure import LatencyCache, measure_latency
from scaler.proxy.train import TrainConfig, cached_dataset, train_and_evaluate
from scaler.search.expand import Operator, apply_operator
from scaler.search.inherit import GROWTH_NOISE
from scaler.search.record import TrialRecord
from scaler.search.space import SearchSpace, space_from_dict
from scaler.search.store import open_run
from scaler.search.strategies.greedy import GreedyStrategy, StepDecision

__all__ = [
    "MODES",
    "PathStep",
    "TruthCache",
    "as_arch",
    "fixed_set",
    "inherited_iters",
    "latency_of",
    "mean",
    "miou_at_latency",
    "mode_space",
    "path_of",
    "run_facts",
]

# An inherited candidate goes on from its trained parent: its schedule (training.inherit_iters) is
# this share of the from-scratch one, as in search_spaces/lpsnet_demo_inherit.yaml.
INHERIT_SHARE = 0.5

# How each compared mode changes the space (training.init, and greedy.halving for the third); the
# inherit modes also set training.inherit_iters to INHERIT_SHARE of training.iters.
MODES: dict[str, dict[str, Any]] = {
    "scratch": {"training": {"init": "scratch"}},
    "inherit": {"training": {"init": "inherit"}},
    "inherit+halving": {"training": {"init": "inherit"}, "greedy": {"halving": True}},
}


def inherited_iters(iters: int) -> int:
    """The schedule of an inherited candidate in the inherit modes, for a from-scratch one of ``iters``."""
    return max(1, round(iters * INHERIT_SHARE))


def mode_space(
    path: str | Path, mode: str, seed: int, max_steps: int | None = None, *, load_guard: bool = True
) -> SearchSpace | str:
    """The space file ``path`` set up for ``mode`` and training seed ``seed``.

    Args:
        path: A search-space YAML file.
        mode: A key of :data:`MODES`.
        seed: The training seed.
        max_steps: Overrides ``stopping.max_steps`` when given.
        load_guard: ``False`` sets ``latency.max_others_share: null``: latencies are taken even while
            other processes use the CPUs (a shared machine, where the guard would wait for a quiet
            moment that does not come), and are noisier for it.

    Returns:
        The space, or, when the space loader rejects an option the mode needs (``greedy.halving``
        before it exists), the loader's one-line message: the mode is unavailable.

    Raises:
        UserError: The space file itself is bad (the message names it).
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    for section, values in MODES[mode].items():
        data.setdefault(section, {})
        data[section] = {**(data[section] or {}), **values}
    data["training"]["seed"] = seed
    if data["training"].get("init") == "inherit":
        data["training"]["inherit_iters"] = inherited_iters(int(data["training"]["iters"]))
    if max_steps is not None:
        data["stopping"] = {**(data.get("stopping") or {}), "max_steps": max_steps}
    if not load_guard:
        data["latency"] = {**(data.get("latency") or {}), "max_others_share": None}
    try:
        return space_from_dict(data, source=str(path), base_dir=path.parent)
    except UserError as e:
        # An option only this mode sets (not training.init, which every mode sets) that the loader
        # does not know: the mode is not built yet.
        added = [
            f"{section}.{key}" for section, values in MODES[mode].items() if section != "training" for key in values
        ]
        if any(key in str(e) for key in added):
            return str(e)
        raise


@dataclasses.dataclass(frozen=True)
class PathStep:
    """One decided step of a greedy run: the winner (``None`` when the step stopped the search)."""

    step: int
    winner: int | None
    arch: str | None
    operators: tuple[str, ...]
    steplen: int | None
    depth: bool
    reason: str


def path_of(
    records: Sequence[TrialRecord], steps: Sequence[StepDecision], operators: Sequence[Operator]
) -> list[PathStep]:
    """The path a greedy run took: per decided step, the winner's operators and whether one grows depth.

    Args:
        records: The run's trials.
        steps: Its decided steps, in order (:meth:`GreedyStrategy.steps`).
        operators: The space's operators (to know which names grow depth).

    Returns:
        One :class:`PathStep` per decided step.
    """
    kinds = {op.name: op.kind for op in operators}
    by_number = {r.number: r for r in records}
    out = []
    for s in steps:
        winner = by_number.get(s.winner) if s.winner is not None else None
        ops = tuple(winner.operators) if winner is not None else ()
        out.append(
            PathStep(
                step=s.step,
                winner=s.winner,
                arch=None if winner is None else winner.arch.inline(),
                operators=ops,
                steplen=None if winner is None else winner.steplen,
                depth=any(kinds.get(o) == "depth" for o in ops),
                reason=s.reason,
            )
        )
    return out


def miou_at_latency(points: Sequence[tuple[float, float]], latency_ms: float) -> float | None:
    """A path's mIoU at ``latency_ms``, linear between its networks' (latency, mIoU) points.

    Args:
        points: The path's networks, start first, as (latency ms, mIoU).
        latency_ms: Where to read the path.

    Returns:
        The interpolated mIoU; the nearest end's when ``latency_ms`` lies outside the path's span
        (a path measured slower than its own start can happen under noise); ``None`` with no points.
    """
    if not points:
        return None
    pts = sorted(points)
    if latency_ms <= pts[0][0]:
        return pts[0][1]
    for (l0, m0), (l1, m1) in itertools.pairwise(pts):
        if l0 <= latency_ms <= l1:
            return m0 if l1 == l0 else m0 + (m1 - m0) * (latency_ms - l0) / (l1 - l0)
    return pts[-1][1]


def run_facts(run_dir: Path, space: SearchSpace) -> dict[str, Any]:
    """What a finished greedy run did: trained trials, iterations, training seconds per step, its path.

    Training seconds are each trained trial's training plus evaluation time as its worker recorded
    them (controls and seed replicas included: they are the price of the mode).
    """
    store = open_run(run_dir)
    records = store.records()
    trained = [r for r in records if r.train is not None and not r.is_reference]
    per_step: dict[int, float] = {}
    for r in trained:
        step = r.step if r.step is not None else 0
        per_step[step] = per_step.get(step, 0.0) + _train_seconds(r)
    steps = GreedyStrategy.steps(store.study.user_attrs)
    path = path_of(records, steps, space.operators)
    start = next((r for r in records if r.step == 0 and r.control_of is None and r.complete), None)
    return {
        "trained": len(trained),
        "controls": sum(r.is_control for r in trained),
        "seed_replicas": sum(r.is_seed_replica for r in trained),
        "iters": sum(int(r.train.get("iters_done") or 0) for r in trained),
        "train_seconds": sum(per_step.values()),
        "train_seconds_per_step": {str(k): v for k, v in sorted(per_step.items())},
        "path": [dataclasses.asdict(p) for p in path],
        "depth_steps": sum(p.depth for p in path),
        "start": None if start is None else start.arch.inline(),
        "path_archs": ([] if start is None else [start.arch.inline()]) + [p.arch for p in path if p.arch],
    }


def _train_seconds(r: TrialRecord) -> float:
    train = r.train or {}
    return float(train.get("train_seconds") or 0.0) + float(train.get("eval_seconds") or 0.0)


def fixed_set(start: LPSNetArch, space: SearchSpace, quick: bool) -> list[LPSNetArch]:
    """The networks every proxy ranks: the start and its one-step children by every operator, plus
    the depth operators applied twice (depth-heavy, as a grown-to-target depth step is). ``quick``:
    the start, its depth children and the first width and resolution children."""
    out = [start]
    ops = list(space.operators)
    depth = [op for op in ops if op.kind == "depth"]
    chosen = ops if not quick else [*depth, *[op for op in ops if op.kind == "width"][:1]]
    for op in chosen:
        out.append(apply_operator(start, op, 1, space.constraints))
    if not quick:
        out += [apply_operator(start, op, 2, space.constraints) for op in depth]
    return list(dict.fromkeys(a for a in out if a is not None))


class TruthCache:
    """Ground-truth and proxy trainings of single networks, kept in a json file so reruns do not retrain.

    Keyed by the space's recipe (dataset, crop, input size, lr, batch), the iterations, the seed, how
    the network started (``scratch``, or ``inherit`` from the start trained as many iterations) and
    the architecture.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self._parents: dict[str, Path] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-inherit-")

    def close(self) -> None:
        self._tmp.cleanup()

    def _key(self, space: SearchSpace, kind: str, iters: int, seed: int, arch: LPSNetArch) -> str:
        t = space.training
        recipe = f"{space.dataset}|crop={t.crop[0]}x{t.crop[1]}|input={space.input_size[0]}x{space.input_size[1]}"
        return f"{recipe}|lr={t.lr:g}|batch={t.batch}|{kind}|iters={iters}|seed={seed}|{arch.inline()}"

    def _config(self, space: SearchSpace, iters: int, seed: int, init: str = "scratch") -> TrainConfig:
        return dataclasses.replace(space.training, iters=iters, seed=seed, init=init)

    def _store(self, key: str, value: dict[str, Any]) -> dict[str, Any]:
        self.entries[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        return value

    def scratch(self, space: SearchSpace, arch: LPSNetArch, iters: int, seed: int) -> dict[str, Any]:
        """``arch`` trained ``iters`` iterations from seeded weights (the scratch proxy, or ground truth)."""
        key = self._key(space, "scratch", iters, seed, arch)
        if key in self.entries:
            return self.entries[key]
        cfg = self._config(space, iters, seed)
        t0 = time.perf_counter()
        r = train_and_evaluate(
            arch, cfg, progress=False, train_set=self._data(cfg, "train"), val_set=self._data(cfg, "val")
        )
        return self._store(key, _entry(r, time.perf_counter() - t0))

    def inherit(
        self, space: SearchSpace, arch: LPSNetArch, iters: int, seed: int, child_iters: int | None = None
    ) -> dict[str, Any]:
        """The inherit proxy: the space's start trained ``iters`` iterations, grown to ``arch`` (the start
        itself: the control) and trained ``child_iters`` (default ``iters``) more, as the search trains a
        first step's candidates."""
        child_iters = iters if child_iters is None else child_iters
        kind = "inherit" if child_iters == iters else f"inherit{child_iters}"
        key = self._key(space, kind, iters, seed, arch)
        if key in self.entries:
            return self.entries[key]
        parent = self._parent(space, iters, seed)
        blob = torch.load(parent, map_location="cpu", weights_only=True)
        parent_arch = arch_from_dict(blob["arch"])
        assert isinstance(parent_arch, LPSNetArch)  # the start of a greedy space is an LPS-Net
        child = dataclasses.replace(arch, num_classes=parent_arch.num_classes)
        noise = 0.0 if child == parent_arch else GROWTH_NOISE
        state = grow_state_dict(blob["state_dict"], parent_arch, child, noise=noise, seed=seed)
        cfg = self._config(space, child_iters, seed, init="inherit")
        t0 = time.perf_counter()
        r = train_and_evaluate(
            child,
            cfg,
            progress=False,
            train_set=self._data(cfg, "train"),
            val_set=self._data(cfg, "val"),
            init_state=state,
        )
        return self._store(key, _entry(r, time.perf_counter() - t0))

    def _parent(self, space: SearchSpace, iters: int, seed: int) -> Path:
        key = self._key(space, "parent-weights", iters, seed, space.start)
        if key not in self._parents:
            path = Path(self._tmp.name) / f"start-{len(self._parents)}.pt"
            cfg = self._config(space, iters, seed)
            r = train_and_evaluate(
                space.start,
                cfg,
                progress=False,
                save=path,
                train_set=self._data(cfg, "train"),
                val_set=self._data(cfg, "val"),
            )
            if not r.ok:
                raise RuntimeError(f"the start {space.start.inline()} failed to train: {r.reason}")
            self._parents[key] = path
        return self._parents[key]

    @staticmethod
    def _data(cfg: TrainConfig, split: str) -> Any:
        return cached_dataset(cfg.dataset, split, cfg.seed)


def _entry(r: Any, seconds: float) -> dict[str, Any]:
    return {"status": r.status, "reason": r.reason, "miou": r.miou, "iters": r.iters_done, "seconds": seconds}


def latency_of(arch: LPSNetArch, space: SearchSpace, cache: LatencyCache) -> float:
    """One latency per architecture for every comparison: the shared cache's (measured once if missing)."""
    return float(measure_latency(arch, space.latency, cache=cache).median_ms)


def as_arch(spec: str, like: LPSNetArch) -> LPSNetArch:
    """An inline spelling read back with the class count of ``like``."""
    arch = resolve_arch(spec, num_classes=like.num_classes)
    assert isinstance(arch, LPSNetArch)
    return arch


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are neither ``None`` nor NaN (``None`` when there are none)."""
    got = [v for v in values if v is not None and not math.isnan(v)]
    return sum(got) / len(got) if got else None
