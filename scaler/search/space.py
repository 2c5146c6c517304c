"""Search spaces: a YAML file in, a validated, typed :class:`SearchSpace` out.

Every mistake in the file is one :class:`SpaceError` naming the file, the key and the value. A
space round-trips to a plain dict (:meth:`SearchSpace.to_dict`), which a run stores so that resuming
with a different space is caught (:meth:`SearchSpace.diff`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from models import ArchError, HeadConfig, HeadError, LPSNetArch, resolve_arch
from scaler.errors import UserError
from scaler.files import jsonable
from scaler.measure import LOAD_GUARD_KEYS, LatencySettings
from scaler.proxy.train import TrainConfig
from scaler.search.expand import PAPER_OPERATORS, Constraints, Operator

__all__ = ["GreedySettings", "SearchSpace", "SpaceError", "Stopping", "load_space", "space_from_dict"]


class SpaceError(UserError):
    """A search-space file that cannot be used; the message names file, key and value."""


@dataclasses.dataclass(frozen=True)
class Stopping:
    """When a search ends (whichever comes first).

    Args:
        max_steps: Greedy expansion steps.
        latency_budget_ms: Candidates slower than this are not trained, and the search stops when
            none is left (``None``: no budget).
        max_trials: Trained candidates in total, for every strategy (``None``: no limit; the
            baselines need it).
    """

    max_steps: int = 14
    latency_budget_ms: float | None = None
    max_trials: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be > 0, got {self.latency_budget_ms}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {self.max_trials}")


@dataclasses.dataclass(frozen=True)
class GreedySettings:
    """Knobs of the greedy step.

    Args:
        max_steplen: Most times one operator is applied in one step.
        noise_floor_ms: Latency differences smaller than this are treated as this in the slope
            (the measurement cannot tell them apart from zero).
        paired_rounds: Rounds of the paired pass that times a step's parent and candidates together
            (each round runs every network once, in a shuffled order).
        max_paired_rounds: Most rounds a step spends telling two close candidates apart (or
            re-measuring a candidate timed faster than its parent).
        confidence: Coverage of the latency-gain and slope intervals a decision is judged by.
        probe_rounds: Rounds of the paired probes that grow each operator to the step's target: the
            networks of one steplen are timed together with the parent, and each one's latency is
            the parent's recorded latency times its median per-round ratio to the parent, so the
            steplens do not follow the machine's speed from one window to the next. 0: one quick
            single (cached) measurement per network instead, as runs before paired probes did.
        tie_seed: A second training seed for a tie: when the best two slopes' intervals still overlap
            after ``max_paired_rounds``, both contenders and the step's parent are trained again with
            this seed (the next one when it is ``training.seed``: :attr:`SearchSpace.tie_seed`), and
            their mean mIoU over the two seeds decides. ``None`` (the default): the point estimate
            decides, and the step is recorded as not sure.
        halving: Successive halving within a step: every candidate trains the first rung of the
            schedule, the better half by slope (against the parent, or the control, at the same
            iteration) goes on to the next rung, until one remains or the whole schedule is spent;
            the others are stopped (Optuna's PRUNED) with their rung mIoUs kept as the trial's
            intermediate values. Off (``false``) by default.
        halving_rungs: How many rungs the schedule is cut into: iterations ``iters / 2^(rungs-1)``,
            ..., ``iters / 2``, ``iters`` (3: a quarter, a half, all of it).

    The paired options are left out of :meth:`to_dict` while at their defaults, so the stored space
    of a run made before they existed reads the same (it resumes unchanged).
    """

    max_steplen: int = 32
    noise_floor_ms: float = 0.05
    paired_rounds: int = 15
    max_paired_rounds: int = 60
    confidence: float = 0.9
    probe_rounds: int = 5
    tie_seed: int | None = None
    halving: bool = False
    halving_rungs: int = 3

    def __post_init__(self) -> None:
        if self.max_steplen < 1:
            raise ValueError(f"max_steplen must be >= 1, got {self.max_steplen}")
        if not self.noise_floor_ms > 0:
            raise ValueError(f"noise_floor_ms must be > 0, got {self.noise_floor_ms}")
        if self.paired_rounds < 5:
            raise ValueError(f"paired_rounds must be >= 5 (fewer give no useful interval), got {self.paired_rounds}")
        if self.max_paired_rounds < self.paired_rounds:
            raise ValueError(
                f"max_paired_rounds ({self.max_paired_rounds}) must be >= paired_rounds ({self.paired_rounds})"
            )
        if self.probe_rounds != 0 and not 3 <= self.probe_rounds <= self.max_paired_rounds:
            raise ValueError(
                f"probe_rounds must be 0 (single measurements) or 3 to max_paired_rounds ({self.max_paired_rounds}), "
                f"got {self.probe_rounds}"
            )
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), such as 0.9; got {self.confidence}")
        if not isinstance(self.halving, bool):
            raise ValueError(f"halving must be true or false, got {self.halving!r}")
        if not 2 <= self.halving_rungs <= 8:
            raise ValueError(f"halving_rungs must be 2 to 8, got {self.halving_rungs}")

    def rung_iters(self, iters: int) -> tuple[int, ...]:
        """The iterations each rung of successive halving ends at, for a schedule of ``iters``."""
        return tuple(iters >> (self.halving_rungs - 1 - j) for j in range(self.halving_rungs))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form; the options added with paired measurement only when set to another value."""
        out = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _PAIRED_OPTIONS and out[f.name] == f.default:
                del out[f.name]
        return out


# Left out of the stored space at their defaults: runs made before them resume unchanged.
_PAIRED_OPTIONS = (
    "paired_rounds",
    "max_paired_rounds",
    "confidence",
    "probe_rounds",
    "tie_seed",
    "halving",
    "halving_rungs",
)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Everything a search needs: where to start, how to grow, how to measure, when to stop, and
    which named models (``references``, ARCH spellings) to measure and train beside it for comparison."""

    name: str
    start: LPSNetArch
    input_size: tuple[int, int]
    dataset: str
    operators: tuple[Operator, ...]
    constraints: Constraints
    latency: LatencySettings
    training: TrainConfig
    stopping: Stopping
    greedy: GreedySettings
    description: str = ""
    references: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what a run stores); ``description`` is left out (it does not change results),
        and so are ``references`` when there are none (runs made before they existed resume unchanged)."""
        latency = dataclasses.asdict(self.latency)
        # How a measurement copes with a busy machine changes how it is taken, not what it measures:
        # not part of what identifies a run (a run may be resumed with another setting).
        for key in ("input_hw", *LOAD_GUARD_KEYS):
            latency.pop(key)
        # A latency size of its own is stored only when it differs from the training size, so runs
        # made before it existed (latency at input_size) resume unchanged.
        if self.latency.input_hw != self.input_size:
            latency["input_size"] = list(self.latency.input_hw)
        training = self.training.to_dict()  # init only when it is not scratch: older runs resume unchanged
        for key in ("dataset", "eval_size"):
            training.pop(key)
        return {
            "name": self.name,
            "start": self.start.to_dict(),
            "input_size": list(self.input_size),
            "dataset": self.dataset,
            "operators": [op.to_dict() for op in self.operators],
            "constraints": dataclasses.asdict(self.constraints),
            "latency": jsonable(latency),
            "training": jsonable(training),
            "stopping": dataclasses.asdict(self.stopping),
            "greedy": self.greedy.to_dict(),
            **({"references": list(self.references)} if self.references else {}),
        }

    @property
    def tie_seed(self) -> int | None:
        """The seed a tie's second training uses: ``greedy.tie_seed``, or the next seed when that is the
        run's own ``training.seed`` (a second training with the first one's seed repeats it exactly:
        the contenders' means would be their first readings, at the price of three trainings)."""
        seed = self.greedy.tie_seed
        return seed + 1 if seed is not None and seed == self.training.seed else seed

    def space_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def diff(self, stored: dict[str, Any]) -> str | None:
        """The first key whose value differs from a stored :meth:`to_dict`, as ``key: stored -> now``."""
        return _first_difference(stored, jsonable(self.to_dict()), "")


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            d = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
            if d:
                return d
        return None
    return None if a == b else f"{prefix}: {json.dumps(a)} -> {json.dumps(b)}"


_TOP_KEYS = (
    "name",
    "description",
    "start",
    "input_size",
    "dataset",
    "head",
    "operators",
    "constraints",
    "latency",
    "training",
    "stopping",
    "greedy",
    "references",
)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        SpaceError: The file is missing, not YAML, or a key is unknown, missing or has a bad value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read search space ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise SpaceError(f"{path}: not valid YAML{where} ({problem})") from None
    return space_from_dict(data, source=str(path), base_dir=path.parent)


def space_from_dict(data: Any, *, source: str = "search space", base_dir: Path | None = None) -> SearchSpace:
    """Validate a parsed search space (see :func:`load_space`)."""

    def fail(key: str, message: str) -> SpaceError:
        return SpaceError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping of keys (name, start, ...), got {type(data).__name__}")
    _check_keys(data, _TOP_KEYS, "", fail)
    for required in ("name", "start", "input_size", "dataset"):
        if required not in data:
            raise fail(required, "missing (required)")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"must be a non-empty string, got {name!r}")
    input_size = _hw(data["input_size"], "input_size", fail)
    dataset = data["dataset"]
    if not isinstance(dataset, str) or not dataset.strip():
        raise fail("dataset", f"must be a dataset SPEC string such as 'synthetic', got {dataset!r}")
    start = _start(data["start"], base_dir, fail)
    if "head" in data:
        try:
            head = HeadConfig.from_dict(data["head"], source="head", stored=False)
        except HeadError as e:
            raise fail("head", str(e).removeprefix("head: ")) from None
        if start.head.kind != "plain" and start.head != head:
            raise fail("head", f"the start network {start.inline()} has a head already; give it in one place")
        start = dataclasses.replace(start, head=_beside(head, base_dir))
    operators = _operators(data.get("operators", "paper"), fail, base_dir)
    constraints = _section(Constraints, data.get("constraints"), "constraints", fail)
    if constraints.violation(start):
        raise fail("start", f"{start.inline()} breaks the constraints: {constraints.violation(start)}")
    latency_raw = data.get("latency")
    latency_size = input_size
    if isinstance(latency_raw, dict) and "input_size" in latency_raw:
        latency_raw = dict(latency_raw)
        latency_size = _hw(latency_raw.pop("input_size"), "latency.input_size", fail)
    latency = _section(
        LatencySettings, latency_raw, "latency", fail, fixed={"input_hw": latency_size}, listed=("input_size",)
    )
    try:
        start.check_input_size(*input_size)
    except ValueError as e:
        raise fail("input_size", str(e)) from None
    if latency_size != input_size:
        try:
            start.check_input_size(*latency_size)
        except ValueError as e:
            h, w = latency_size
            raise fail("latency.input_size", f"{h}x{w} cannot be measured for {start.inline()}: {e}") from None
    _check_new_paths(start, operators, constraints, input_size, "input_size", fail)
    if latency_size != input_size:
        _check_new_paths(start, operators, constraints, latency_size, "latency.input_size", fail)
    training = _section(
        TrainConfig, data.get("training"), "training", fail, fixed={"dataset": dataset.strip(), "eval_size": input_size}
    )
    stopping = _section(Stopping, data.get("stopping"), "stopping", fail)
    greedy = _section(GreedySettings, data.get("greedy"), "greedy", fail)
    if greedy.halving and greedy.rung_iters(training.candidate_iters)[0] < 1:
        what = "training.inherit_iters" if training.candidate_iters != training.iters else "training.iters"
        raise fail(
            "greedy.halving_rungs",
            f"{greedy.halving_rungs} rungs cut {what} ({training.candidate_iters}) below one iteration per rung; "
            f"use fewer rungs or more iterations (at least {2 ** (greedy.halving_rungs - 1)})",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {description!r}")
    references = _references(data.get("references", []), fail)
    return SearchSpace(
        name=name.strip(),
        start=start,
        input_size=input_size,
        dataset=dataset.strip(),
        operators=operators,
        constraints=constraints,
        latency=latency,
        training=training,
        stopping=stopping,
        greedy=greedy,
        description=description.strip(),
        references=references,
    )


def _check_new_paths(
    start: LPSNetArch,
    operators: tuple[Operator, ...],
    constraints: Constraints,
    size: tuple[int, int],
    key: str,
    fail: Any,
) -> None:
    """A path an operator can add starts at its factor step: the input must leave it at least 1x1, or the
    search would stop at the first such candidate (it cannot be trained or timed)."""
    if start.num_paths >= constraints.max_paths:
        return
    steps = [op.step for op in operators if op.kind == "resolution" and op.path > start.num_paths]
    if not steps:
        return
    factor, (h, w) = min(steps), size
    if int(h * factor) < 1 or int(w * factor) < 1:
        least = math.ceil(1 / factor)
        raise fail(
            key,
            f"{h}x{w} is too small for a path the operators can add (factor {factor:g} gives a "
            f"{int(h * factor)}x{int(w * factor)} input); use at least {least}x{least}, "
            "or constraints.max_paths to forbid new paths",
        )


def _references(value: Any, fail: Any) -> tuple[str, ...]:
    """Named models to measure and train for comparison: ARCH spellings, each checked here."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise fail("references", f"must be a list of ARCH names such as [lpsnet_s, mobilenetv2_050], got {value!r}")
    out: list[str] = []
    for i, item in enumerate(value):
        key = f"references[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise fail(key, f"must be an ARCH (a registered name or an inline spec), got {item!r}")
        try:
            resolve_arch(item.strip())
        except ArchError as e:
            raise fail(key, str(e)) from None
        if item.strip() in out:
            raise fail(key, f"{item.strip()!r} is listed twice")
        out.append(item.strip())
    return tuple(out)


def _check_keys(data: dict, allowed: tuple[str, ...] | list[str], prefix: str, fail: Any) -> None:
    for key in data:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key (allowed: {', '.join(allowed)})")


def _hw(value: Any, key: str, fail: Any) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            value = [int(p) for p in parts]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return int(value[0]), int(value[1])
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads 0x0 (and 0x10...) as a hexadecimal number before we see it.
        raise fail(
            key, f"must be HxW such as 256x512 (or [H, W]); YAML read it as the number {value} (quote it: '...')"
        )
    raise fail(key, f"must be HxW such as 256x512 (or [H, W]), got {value!r}")


def _start(value: Any, base_dir: Path | None, fail: Any) -> LPSNetArch:
    try:
        if isinstance(value, dict):
            return LPSNetArch.from_dict(value, source="start")
        if not isinstance(value, str):
            raise fail("start", f"must be an ARCH (name, inline spec or arch.json path), got {value!r}")
        spec = value.strip()
        if base_dir is not None and spec.endswith(".json") and not Path(spec).is_absolute():
            spec = str(base_dir / spec)
        arch = resolve_arch(spec)
    except ArchError as e:
        raise fail("start", str(e)) from None
    if not isinstance(arch, LPSNetArch):
        raise fail("start", f"{arch.inline()} is not an LPS-Net: the search grows LPS-Nets (depth, width, resolution)")
    return arch


def _beside(head: HeadConfig, base_dir: Path | None) -> HeadConfig:
    """``head`` with a relative ``file:`` text encoder found next to the space file (like an arch.json start)."""
    encoder = head.text_encoder
    if encoder.startswith("file:") and base_dir is not None and not Path(encoder[5:]).is_absolute():
        return dataclasses.replace(head, text_encoder=f"file:{base_dir / encoder[5:]}")
    return head


# The keys an operator mapping may have, by its kind.
_OPERATOR_KEYS = {
    "depth": ("name", "kind", "delta"),
    "width": ("name", "kind", "delta"),
    "resolution": ("name", "kind", "path", "step"),
    "head": ("name", "kind", "head"),
}


def _operators(value: Any, fail: Any, base_dir: Path | None = None) -> tuple[Operator, ...]:
    if value == "paper":
        return PAPER_OPERATORS
    if not isinstance(value, list) or not value:
        raise fail("operators", f"must be 'paper' or a non-empty list of operators, got {value!r}")
    ops: list[Operator] = []
    for i, item in enumerate(value):
        key = f"operators[{i}]"
        if isinstance(item, str):
            match = [op for op in PAPER_OPERATORS if op.name == item]
            if not match:
                names = ", ".join(op.name for op in PAPER_OPERATORS)
                raise fail(key, f"unknown operator {item!r} (the method's are: {names})")
            ops.append(match[0])
            continue
        if not isinstance(item, dict):
            raise fail(key, f"must be an operator name or a mapping, got {item!r}")
        allowed = _OPERATOR_KEYS.get(item.get("kind"), ("name", "kind", "delta", "path", "step", "head"))
        _check_keys(item, allowed, f"{key}.", fail)
        item = dict(item)
        if item.get("kind") == "head" and "head" in item:
            label = f"operator {item.get('name')!r}"
            try:
                item["head"] = _beside(HeadConfig.from_dict(item["head"], source=label, stored=False), base_dir)
            except HeadError as e:  # the message starts with the label
                raise fail(f"{key}.head", str(e)) from None
        try:
            ops.append(Operator(**item))
        except (TypeError, ValueError) as e:
            raise fail(key, str(e)) from None
    names = [op.name for op in ops]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail("operators", f"operator name {dupes[0]!r} used twice")
    return tuple(ops)


def _section(
    cls: type, value: Any, section: str, fail: Any, fixed: dict[str, Any] | None = None, listed: tuple[str, ...] = ()
) -> Any:
    """``cls`` from a section's mapping; ``fixed`` fields are set by the caller, ``listed`` keys were read by it."""
    fixed = fixed or {}
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise fail(section, f"must be a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    _check_keys(value, [*listed, *allowed], f"{section}.", fail)
    kwargs = dict(fixed)
    for key, raw in value.items():
        kwargs[key] = _convert(raw, hints[key], f"{section}.{key}", fail)
    try:
        return cls(**kwargs)
    except (UserError, ValueError, TypeError) as e:
        message = str(e)
        for prefix in ("training config: ",):
            message = message.removeprefix(prefix)
        raise fail(section, message) from None


def _convert(raw: Any, hint: Any, key: str, fail: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(raw, inner[0], key, fail)
    if hint is bool:
        if not isinstance(raw, bool):
            raise fail(key, f"must be true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise fail(key, f"must be an integer, got {raw!r}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise fail(key, f"must be a number, got {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise fail(key, f"must be a string, got {raw!r}")
        return raw
    if origin is tuple and args == (int, int):
        return _hw(raw, key, fail)
    if origin is tuple and args == (float, float):
        if (
            isinstance(raw, (list, tuple))
            and len(raw) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        ):
            return float(raw[0]), float(raw[1])
        raise fail(key, f"must be two numbers [low, high], got {raw!r}")
    raise fail(key, f"unsupported value {raw!r}")  # pragma: no cover - every field type is handled above
