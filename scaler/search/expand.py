"""Progressive expansion, the arithmetic of one greedy step (LPS-Net, Sec. 3.3), as pure functions.

An :class:`Operator` grows one dimension of an architecture by a fixed amount per step; applied
``steplen`` times it gives a candidate. A ``head`` operator switches the network's head instead
(``plain`` to ``fusion``, say): it is applied once, never ``steplen`` times. One step of the search:

1. the *target latency* is the largest latency among all one-step expansions of the parent (by the
   depth, width and resolution operators; a head switch is not a step of a size, so it sets the
   target only when no other operator can grow the network);
2. each operator is applied with steplen 1, 2, ... until the candidate's latency reaches the target,
   and whichever of the last two steplens is closer to the target is kept (a head operator's
   candidate is its one switch, at whatever latency that has);
3. candidates with the same architecture are merged;
4. every candidate is trained, and the next parent is the one with the best
   ``(mIoU - parent mIoU) / (latency - parent latency)``.

Latency is any callable ``arch -> milliseconds`` (measured, cached, or a model in tests), or one that
times several networks at once (``propose_step(..., latency_many=...)``: a step's networks of one
steplen timed together against the parent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from models import MAX_PATHS, NUM_STAGES, ArchError, HeadConfig, HeadError, LPSNetArch

__all__ = [
    "PAPER_OPERATORS",
    "Candidate",
    "Constraints",
    "Operator",
    "Scored",
    "Selection",
    "apply_operator",
    "grow_to_target",
    "one_step_expansions",
    "propose_step",
    "select_next",
    "target_expansions",
]

LatencyFn = Callable[[LPSNetArch], float]
LatencyManyFn = Callable[[Sequence[LPSNetArch]], Sequence[float]]


@dataclasses.dataclass(frozen=True)
class Operator:
    """One way to grow an architecture.

    Args:
        name: Unique label, e.g. ``depth_2`` or ``res_1``.
        kind: ``depth``, ``width``, ``resolution`` or ``head``.
        delta: Per-stage increment for depth and width (5 integers >= 0, at least one > 0).
        path: For ``resolution``: the path (1-based, high to low resolution) whose factor grows;
            a path that does not exist yet is added.
        step: For ``resolution``: the increment of the factor (the method uses 1/8).
        head: For ``head``: the head the network switches to (a :class:`~models.HeadConfig`, or what
            :meth:`~models.HeadConfig.from_dict` reads: a kind, or a mapping of its settings, unnamed ones at
            today's defaults as in a search space).

    Raises:
        ValueError: A field does not fit the kind; the message names the operator and the field.
    """

    name: str
    kind: str
    delta: tuple[int, ...] = ()
    path: int = 0
    step: float = 0.125
    head: HeadConfig | None = None

    def __post_init__(self) -> None:
        if self.head is not None and self.kind != "head":
            raise ValueError(f"operator {self.name!r}: head is for operators of kind head, not {self.kind}")
        if self.kind == "head":
            if self.head is None:
                raise ValueError(f"operator {self.name!r}: head missing: name the head it switches to, such as fusion")
            if self.delta or self.path:
                raise ValueError(f"operator {self.name!r}: a head operator takes no delta or path")
            if not isinstance(self.head, HeadConfig):
                label = f"operator {self.name!r}"
                try:
                    object.__setattr__(self, "head", HeadConfig.from_dict(self.head, source=label, stored=False))
                except HeadError as e:
                    raise ValueError(str(e)) from None
        elif self.kind in ("depth", "width"):
            delta = tuple(int(v) for v in self.delta)
            if len(delta) != NUM_STAGES or any(v < 0 for v in delta) or not any(delta):
                raise ValueError(
                    f"operator {self.name!r}: {self.kind} delta must be {NUM_STAGES} integers >= 0, not all 0; "
                    f"got {list(self.delta)}"
                )
            object.__setattr__(self, "delta", delta)
        elif self.kind == "resolution":
            if not 1 <= self.path <= MAX_PATHS:
                raise ValueError(f"operator {self.name!r}: path must be 1..{MAX_PATHS}, got {self.path}")
            if not 0 < self.step <= 1:
                raise ValueError(f"operator {self.name!r}: step must be in (0, 1], got {self.step}")
        else:
            raise ValueError(
                f"operator {self.name!r}: kind must be depth, width, resolution or head, got {self.kind!r}"
            )

    @property
    def repeatable(self) -> bool:
        """Whether applying it ``steplen`` times means anything (a head switch is applied once)."""
        return self.kind != "head"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "head":
            assert self.head is not None
            return {"name": self.name, "kind": self.kind, "head": self.head.to_dict()}
        if self.kind == "resolution":
            return {"name": self.name, "kind": self.kind, "path": self.path, "step": self.step}
        return {"name": self.name, "kind": self.kind, "delta": list(self.delta)}


# The method's ten operators (DESIGN.md, "Progressive expansion").
PAPER_OPERATORS: tuple[Operator, ...] = (
    Operator("depth_2-5", "depth", (0, 1, 1, 1, 1)),
    Operator("depth_3-5", "depth", (0, 0, 1, 1, 1)),
    Operator("depth_4-5", "depth", (0, 0, 0, 1, 1)),
    Operator("width_1-5", "width", (4, 8, 16, 32, 32)),
    Operator("width_2-5", "width", (0, 8, 16, 32, 32)),
    Operator("width_3-5", "width", (0, 0, 16, 32, 32)),
    Operator("width_4-5", "width", (0, 0, 0, 32, 32)),
    Operator("res_path1", "resolution", path=1),
    Operator("res_path2", "resolution", path=2),
    Operator("res_path3", "resolution", path=3),
)


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Limits every candidate must respect; a step that breaks one is not taken.

    Args:
        max_paths: At most this many parallel paths (1..3).
        max_resolution: Largest resolution factor (<= 1).
        width_divisor: Every width must be a multiple of this.
        max_depth: Largest number of blocks in any stage.
        max_width: Largest number of channels in any stage.
    """

    max_paths: int = MAX_PATHS
    max_resolution: float = 1.0
    width_divisor: int = 1
    max_depth: int = 64
    max_width: int = 2048

    def __post_init__(self) -> None:
        if not 1 <= self.max_paths <= MAX_PATHS:
            raise ValueError(f"max_paths must be 1..{MAX_PATHS}, got {self.max_paths}")
        if not 0 < self.max_resolution <= 1:
            raise ValueError(f"max_resolution must be in (0, 1], got {self.max_resolution}")
        for name in ("width_divisor", "max_depth", "max_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def violation(self, arch: LPSNetArch) -> str | None:
        """Why ``arch`` is not allowed, or ``None``."""
        if arch.num_paths > self.max_paths:
            return f"{arch.num_paths} paths > max_paths {self.max_paths}"
        if max(arch.resolution) > self.max_resolution + 1e-9:
            return f"resolution {max(arch.resolution):g} > max_resolution {self.max_resolution:g}"
        if max(arch.depth) > self.max_depth:
            return f"depth {max(arch.depth)} > max_depth {self.max_depth}"
        if max(arch.width) > self.max_width:
            return f"width {max(arch.width)} > max_width {self.max_width}"
        if any(w % self.width_divisor for w in arch.width):
            return f"width {list(arch.width)} not a multiple of {self.width_divisor}"
        return None


def _add_factor(resolution: tuple[float, ...], path: int, amount: float) -> tuple[float, ...]:
    padded = [*resolution, *([0.0] * (MAX_PATHS - len(resolution)))]
    # Fractions keep k/8 steps exact, so 3/8 + 1/8 is 0.5 and equal architectures hash equal.
    value = Fraction(padded[path - 1]).limit_denominator(1 << 16) + Fraction(amount).limit_denominator(1 << 16)
    padded[path - 1] = float(value)
    return tuple(padded)


def apply_operator(
    arch: LPSNetArch, op: Operator, steplen: int, constraints: Constraints | None = None
) -> LPSNetArch | None:
    """``arch`` grown by ``op`` applied ``steplen`` times, or ``None`` if that breaks a constraint.

    A ``head`` operator gives ``arch`` with the operator's head, or ``None`` when ``arch`` ends in
    that head already (nothing to switch).

    Raises:
        ValueError: ``steplen`` is below 1, or above 1 for a head operator (it is applied once).
    """
    if steplen < 1:
        raise ValueError(f"steplen must be >= 1, got {steplen}")
    if not op.repeatable and steplen != 1:
        raise ValueError(f"operator {op.name!r} switches the head: it is applied once, not {steplen} times")
    constraints = constraints or Constraints()
    try:
        if op.kind == "head":
            if arch.head == op.head:
                return None
            grown = dataclasses.replace(arch, head=op.head)
        elif op.kind == "depth":
            grown = dataclasses.replace(
                arch, depth=tuple(d + steplen * x for d, x in zip(arch.depth, op.delta, strict=True))
            )
        elif op.kind == "width":
            grown = dataclasses.replace(
                arch, width=tuple(w + steplen * x for w, x in zip(arch.width, op.delta, strict=True))
            )
        else:
            grown = dataclasses.replace(arch, resolution=_add_factor(arch.resolution, op.path, steplen * op.step))
    except ArchError:
        return None
    return None if constraints.violation(grown) else grown


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An expansion of the parent: which operator, how many steps, and its measured latency."""

    arch: LPSNetArch
    operators: tuple[str, ...]
    steplen: int
    latency_ms: float
    target_ms: float


def grow_to_target(
    parent: LPSNetArch,
    op: Operator,
    target_ms: float,
    latency: LatencyFn,
    constraints: Constraints | None = None,
    max_steplen: int = 64,
) -> tuple[LPSNetArch, int, float] | None:
    """Apply ``op`` 1, 2, ... times until latency reaches ``target_ms``; keep the closer of the last two.

    Returns ``(arch, steplen, latency)``, or ``None`` when even one step breaks a constraint. When a
    constraint or ``max_steplen`` stops the growth first, the largest allowed step is returned. A
    head operator is applied once, whatever the target.
    """
    return _grow_all(parent, [op], target_ms, _one_by_one(latency), constraints, max_steplen, {})[0]


def _one_by_one(latency: LatencyFn) -> LatencyManyFn:
    return lambda archs: [latency(a) for a in archs]


def _grow_all(
    parent: LPSNetArch,
    operators: Sequence[Operator],
    target_ms: float,
    latency_many: LatencyManyFn,
    constraints: Constraints | None,
    max_steplen: int,
    known: dict[LPSNetArch, float],
) -> list[tuple[LPSNetArch, int, float] | None]:
    """:func:`grow_to_target` for every operator at once, level by level: at each steplen, the networks
    of all operators still growing are measured in one call of ``latency_many`` (one paired pass
    when it times them together). ``known`` holds latencies already measured, and is added to."""
    done: list[tuple[LPSNetArch, int, float] | None] = [None] * len(operators)
    previous: list[tuple[LPSNetArch, int, float] | None] = [None] * len(operators)
    growing = list(range(len(operators)))
    for k in range(1, max_steplen + 1):
        archs: dict[int, LPSNetArch] = {}
        for i in growing:
            arch = apply_operator(parent, operators[i], k, constraints)
            if arch is None:
                done[i] = previous[i]
            else:
                archs[i] = arch
        growing = list(archs)
        new = list(dict.fromkeys(a for a in archs.values() if a not in known))
        if new:
            known.update(zip(new, (float(ms) for ms in latency_many(new)), strict=True))
        for i, arch in archs.items():
            current = (arch, k, known[arch])
            if not operators[i].repeatable:  # applied once, at whatever latency that has
                done[i] = current
                growing.remove(i)
            elif current[2] >= target_ms:
                before = previous[i]
                done[i] = (
                    before
                    if before is not None and abs(before[2] - target_ms) < abs(current[2] - target_ms)
                    else current
                )
                growing.remove(i)
            else:
                previous[i] = current
        if not growing:
            break
    for i in growing:
        done[i] = previous[i]
    return done


def one_step_expansions(
    parent: LPSNetArch, operators: Sequence[Operator], constraints: Constraints | None = None
) -> list[tuple[Operator, LPSNetArch]]:
    """Each operator applied once to ``parent``, as ``(operator, network)``; those that break a constraint
    are left out."""
    grown = ((op, apply_operator(parent, op, 1, constraints)) for op in operators)
    return [(op, arch) for op, arch in grown if arch is not None]


def target_expansions(expansions: Sequence[tuple[Operator, LPSNetArch]]) -> list[tuple[Operator, LPSNetArch]]:
    """The one-step expansions whose slowest sets a step's target: the growths (depth, width,
    resolution), or every one when no growth applies (a space of head operators alone, or a network
    the constraints let grow no further). A head switch costs what its head costs, which is no step
    of a size for the others to grow to."""
    growths = [(op, arch) for op, arch in expansions if op.repeatable]
    return growths or list(expansions)


def propose_step(
    parent: LPSNetArch,
    operators: Sequence[Operator],
    latency: LatencyFn,
    constraints: Constraints | None = None,
    *,
    max_steplen: int = 64,
    latency_many: LatencyManyFn | None = None,
) -> list[Candidate]:
    """The candidates of one greedy step from ``parent`` (duplicates merged, operators listed).

    Args:
        parent: The network to grow.
        operators: How it may grow.
        latency: One network's latency (ms).
        constraints: Limits no candidate may break.
        max_steplen: Most times one operator is applied.
        latency_many: Several networks' latencies at once (ms, in order); when given, it is used
            instead of ``latency``: first for every one-step expansion together (the target), then
            once per steplen for the networks of all operators still growing. The candidates are
            the same as one network at a time would give with the same numbers.

    The target is the slowest of :func:`target_expansions`.
    """
    many = latency_many or _one_by_one(latency)
    expansions = one_step_expansions(parent, operators, constraints)
    if not expansions:
        return []
    one_step = list(dict.fromkeys(arch for _, arch in expansions))
    known = dict(zip(one_step, (float(ms) for ms in many(one_step)), strict=True))
    target = max(known[arch] for _, arch in target_expansions(expansions))
    merged: dict[LPSNetArch, Candidate] = {}
    grown_all = _grow_all(parent, operators, target, many, constraints, max_steplen, known)
    for op, grown in zip(operators, grown_all, strict=True):
        if grown is None:
            continue
        arch, k, ms = grown
        if arch in merged:
            c = merged[arch]
            merged[arch] = dataclasses.replace(c, operators=(*c.operators, op.name))
        else:
            merged[arch] = Candidate(arch=arch, operators=(op.name,), steplen=k, latency_ms=ms, target_ms=target)
    return list(merged.values())


@dataclasses.dataclass(frozen=True)
class Scored:
    """A trained candidate (or the parent): its latency and mIoU; ``miou=None`` if training failed."""

    key: Any
    latency_ms: float
    miou: float | None


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of a step: the winner (or ``None`` to stop), each candidate's slope, and why."""

    winner: Any | None
    slopes: dict[Any, float | None]
    reason: str


def select_next(parent: Scored, candidates: Sequence[Scored], *, min_latency_gain_ms: float) -> Selection:
    """Pick the next parent: best ``(mIoU - parent mIoU) / (latency - parent latency)``.

    The parent's *latency* is in the denominator (the reference code divides by its mIoU, a defect).
    Latency differences below ``min_latency_gain_ms`` (measurement noise; a candidate that is not
    slower than its parent) are raised to it, so a free gain ranks above any paid one and a free loss
    below any paid loss. Candidates that failed are skipped. No winner when no candidate gains mIoU.
    """
    if min_latency_gain_ms <= 0:
        raise ValueError(f"min_latency_gain_ms must be > 0, got {min_latency_gain_ms}")
    if parent.miou is None:
        raise ValueError("the parent has no mIoU")
    slopes: dict[Any, float | None] = {}
    best_key, best_slope = None, -math.inf
    for c in candidates:
        if c.miou is None:
            slopes[c.key] = None
            continue
        d_lat = max(c.latency_ms - parent.latency_ms, min_latency_gain_ms)
        slope = (c.miou - parent.miou) / d_lat
        slopes[c.key] = slope
        if slope > best_slope:
            best_key, best_slope = c.key, slope
    if best_key is None:
        return Selection(None, slopes, "every candidate failed")
    if best_slope <= 0:
        return Selection(None, slopes, "no candidate improves mIoU over its parent")
    return Selection(best_key, slopes, f"best mIoU gain per ms: {100 * best_slope:.4g} points/ms")
