"""Drawing the data of :mod:`scaler.report.plot_data` with matplotlib, into PNG or SVG files.

Figures are built on the Agg canvas directly (no pyplot), so drawing never touches a global
backend or opens a window, and works on headless machines.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from scaler.errors import UserError
from scaler.files import atomic_path
from scaler.report.plot_data import FrontierPlot, NamedPoint, PathPoint, StepsPlot
from scaler.report.summary import RunInfo
from scaler.search.run_folder import PLOTS_DIR

__all__ = ["FORMATS", "draw_frontier", "draw_steps", "plot_run"]

FORMATS = (".png", ".svg")

# Colour-blind-safe (Okabe-Ito); the dimension a step grew is colour and marker at once.
_DIMENSION_STYLE = {
    "depth": ("#009E73", "s"),
    "width": ("#CC79A7", "^"),
    "resolution": ("#E69F00", "D"),
    "head": ("#882255", "P"),  # Tol's wine: the Okabe-Ito colours left are taken below
}
_OTHER_STYLE = ("#555555", "o")
# Where a search switched heads, a candidate's head is its marker (the head dimension's colour).
_HEAD_MARKERS = {"denseclip": "v", "fusion": "P"}
_FRONTIER = "#0072B2"
_PATH = "#222222"
_FAILED = "#D55E00"
_CANDIDATE = "#A0A0A0"
_NAMED = "#000000"
_COMPARE = ("#56B4E9", "#8C564B", "#17BECF", "#7F7F7F", "#BCBD22", "#9467BD")
# Beyond this ratio of slowest to fastest, a linear latency axis squeezes the small networks together.
_LOG_RATIO = 20.0


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"{path}: the plot's file name must end in {' or '.join(FORMATS)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot create the folder ({e.strerror})") from None
    return path


def _save(fig: Figure, path: Path) -> Path:
    try:
        with atomic_path(path, fsync=False) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    except OSError as e:
        raise UserError(f"{path}: cannot write the plot ({e.strerror})") from None
    return path


def _title(ax: Axes, what: str, info: RunInfo, width: int) -> None:
    """Title and measurement setup, left-aligned over ``ax`` (the setup wraps to ``width`` characters)."""
    lines: list[str] = []
    for part in info.setup_parts():
        # Break between the parts, never inside one (a device or dataset name reads as a unit).
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    setup = ax.annotate(
        "\n".join(lines),
        (0, 1),
        xycoords="axes fraction",
        xytext=(0, 6),
        textcoords="offset points",
        va="bottom",
        fontsize=8.5,
        color="#333333",
    )
    search = f", {info.strategy} search" if info.strategy else ""
    ax.annotate(
        f"{info.space}{search}: {what}",
        (0, 1),
        xycoords=setup,
        xytext=(0, 4),
        textcoords="offset points",
        va="bottom",
        fontsize=12,
        fontweight="bold",
    )


def _grew(dimension: str) -> str:
    """What a step did, for a legend: ``grew width``, ``switched the head`` (``head+width``: both)."""
    parts = dimension.split("+") if dimension else []
    grown = [d for d in parts if d != "head"]
    words = [f"grew {'+'.join(grown)}"] if grown else []
    if "head" in parts:
        words.append("switched the head")
    return " and ".join(words) or "grew nothing"


def _style(dimension: str) -> tuple[str, str]:
    return _DIMENSION_STYLE.get(dimension, _OTHER_STYLE)


def _latency_axis(ax: Axes, latencies: Sequence[float]) -> bool:
    lats = [v for v in latencies if v > 0]
    log = bool(lats) and max(lats) / min(lats) > _LOG_RATIO
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, median per forward pass)" + (", log scale" if log else ""))
    return log


def _step_line(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The frontier as a staircase: each mIoU holds from its latency up to the next point's."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (x, y) in enumerate(points):
        if i:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def _label_path(ax: Axes, path: Sequence[PathPoint]) -> None:
    for i, p in enumerate(path):
        # Alternate sides so labels of neighbouring steps do not sit on each other.
        dx, dy, ha = (-7, 6, "right") if i % 2 else (7, -10, "left")
        ax.annotate(
            str(p.step),
            (p.latency_ms, p.miou_pct),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            fontsize=8,
            fontweight="bold",
            color=_PATH,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            zorder=6,
        )


def draw_frontier(data: FrontierPlot, path: str | Path) -> Path:
    """Draw figure 1 (latency vs mIoU) into ``path`` (``.png`` or ``.svg``).

    Raises:
        UserError: Bad suffix, or the file cannot be written.
    """
    path = _check_path(path)
    fig = Figure(figsize=(12, 6.4))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.065, 0.1, 0.69, 0.78))
    every = (
        [p.latency_ms for p in data.candidates + data.failed + data.over_budget]
        + [p.latency_ms for p in data.named]
        + [p.latency_ms for s in data.compare for p in s.points]
    )
    log = _latency_axis(ax, every)
    handles: list[Line2D] = []

    for label, color, marker, kind in _by_head([p.head for p in data.candidates]):
        points = [p for p in data.candidates if kind is None or p.head == kind]
        ax.scatter(
            [p.latency_ms for p in points],
            [p.miou_pct for p in points],
            s=26 if marker == "o" else 34,
            color=color,
            marker=marker,
            alpha=0.7,
            zorder=2,
            linewidths=0,
        )
        handles.append(_handle(marker, color, f"candidate{label} ({len(points)})", line=False))

    if data.frontier:
        xs, ys = _step_line([(p.latency_ms, p.miou_pct) for p in data.frontier])
        ax.plot(xs, ys, color=_FRONTIER, lw=1.8, zorder=3)
        ax.scatter(
            [p.latency_ms for p in data.frontier],
            [p.miou_pct for p in data.frontier],
            s=34,
            facecolors="white",
            edgecolors=_FRONTIER,
            linewidths=1.5,
            zorder=4,
        )
        handles.append(_handle("o", _FRONTIER, f"Pareto frontier: {data.info.name}", face="white"))

    for i, series in enumerate(data.compare):
        color = _COMPARE[i % len(_COMPARE)]
        pts = [(p.latency_ms, p.miou_pct) for p in series.points if p.miou_pct is not None]
        if not pts:
            handles.append(_handle("", color, f"Pareto frontier: {series.name} (no complete trials)", line=True))
            continue
        xs, ys = _step_line(pts)
        ax.plot(xs, ys, color=color, lw=1.5, ls="--", zorder=3)
        ax.scatter(*zip(*pts, strict=True), s=22, color=color, zorder=3, marker="o", linewidths=0)
        handles.append(_handle("o", color, f"Pareto frontier: {series.name}", dashed=True))

    if data.path:
        for a, b in zip(data.path, data.path[1:], strict=False):
            ax.annotate(
                "",
                xy=(b.latency_ms, b.miou_pct),
                xytext=(a.latency_ms, a.miou_pct),
                arrowprops={"arrowstyle": "-|>", "color": _PATH, "lw": 1.2, "shrinkA": 5, "shrinkB": 5},
                zorder=4,
            )
        seen = []
        for p in data.path:
            color, marker = _style(p.dimension) if p.step else (_PATH, "o")
            ax.scatter([p.latency_ms], [p.miou_pct], s=60, color=color, marker=marker, edgecolors="black", zorder=5)
            key = p.dimension if p.step else "start"
            if key not in seen:
                seen.append(key)
        handles.append(_handle("", _PATH, "greedy path (numbers: steps)", arrow=True))
        for key in seen:
            color, marker = (_PATH, "o") if key == "start" else _style(key)
            label = "start network" if key == "start" else f"step {_grew(key)}"
            handles.append(_handle(marker, color, label, line=False, edge="black"))
        _label_path(ax, data.path)

    if data.failed:
        _rug(ax, [p.latency_ms for p in data.failed], marker="x", s=36, color=_FAILED, linewidths=1.6, zorder=5)
        handles.append(_handle("x", _FAILED, f"failed ({len(data.failed)}), at its latency", line=False))

    if data.over_budget:
        _rug(ax, [p.latency_ms for p in data.over_budget], marker="|", s=60, color=_CANDIDATE, linewidths=1.2, zorder=4)
        handles.append(_handle("|", _CANDIDATE, f"over budget, not trained ({len(data.over_budget)})", line=False))

    for p in data.named:
        if p.miou_pct is None:
            ax.axvline(p.latency_ms, color=_NAMED, ls=":", lw=1)
            ax.annotate(
                f"{p.name} (not trained)",
                (p.latency_ms, 0.5),
                xycoords=ax.get_xaxis_transform(),
                rotation=90,
                fontsize=8,
                ha="right",
                va="center",
            )
            continue
        ax.scatter([p.latency_ms], [p.miou_pct], marker="*", s=150, color=_NAMED, zorder=6)
    if data.named:
        handles.append(_handle("*", _NAMED, "named model (paper)", line=False, size=12))

    if data.info.budget_ms:
        ax.axvline(data.info.budget_ms, color="#888888", ls="-.", lw=1)
        handles.append(_handle("", "#888888", f"latency budget {data.info.budget_ms:g} ms", dashdot=True))

    ax.set_ylabel("mIoU (%)")
    ax.grid(True, which="major", alpha=0.3)
    if not (data.candidates or data.named or any(s.points for s in data.compare)):
        ax.text(0.5, 0.5, "no completed trials yet", transform=ax.transAxes, ha="center", color="#666666")
    ax.set_ylim(bottom=_bottom(ax))
    if log:
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.15, hi * 1.15)
    _label_named(ax, [p for p in data.named if p.miou_pct is not None])
    if handles:
        # Outside the axes: inside, it would hide the failed markers or the slow end of the frontier.
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    _title(ax, "latency vs mIoU", data.info, width=115)
    return _save(fig, path)


def _rug(ax: Axes, latencies: Sequence[float], **style: Any) -> None:
    """Marks along the bottom edge at ``latencies``: trials that have a latency but no mIoU."""
    ax.scatter(latencies, [0.015] * len(latencies), transform=ax.get_xaxis_transform(), clip_on=False, **style)


def _label_named(ax: Axes, named: Sequence[NamedPoint]) -> None:
    """Names under their stars (the search's points lie above them); close neighbours stack downwards."""
    placed: list[tuple[float, float]] = []
    for p in sorted(named, key=lambda q: q.latency_ms):
        x, y = ax.transData.transform((p.latency_ms, p.miou_pct))
        drop = 11.0
        while any(abs(x - px) < 55 and abs((y - drop) - py) < 11 for px, py in placed):
            drop += 11.0
        placed.append((x, y - drop))
        ax.annotate(
            p.name,
            (p.latency_ms, p.miou_pct),
            xytext=(0, -drop * 72 / ax.figure.dpi),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8.5,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
            zorder=7,
        )


def _bottom(ax: Axes) -> float:
    lo, hi = ax.get_ylim()
    # Room under the lowest candidate for the failed markers, without losing the top.
    return min(lo, max(0.0, lo - 0.06 * (hi - lo)))


def _handle(
    marker: str,
    color: str,
    label: str,
    *,
    line: bool = True,
    face: str | None = None,
    edge: str | None = None,
    dashed: bool = False,
    dashdot: bool = False,
    arrow: bool = False,
    size: float = 7,
) -> Line2D:
    ls = "--" if dashed else "-." if dashdot else "-" if line else ""
    return Line2D(
        [],
        [],
        color=color,
        marker=">" if arrow else marker or None,
        markersize=size,
        markerfacecolor=face or color,
        markeredgecolor=edge or color,
        ls=ls,
        lw=1.6,
        label=label,
    )


def draw_steps(data: StepsPlot, path: str | Path) -> Path:
    """Draw figure 2 (latency and mIoU per greedy step, two panels) into ``path``.

    Raises:
        UserError: Bad suffix, or the file cannot be written.
    """
    path = _check_path(path)
    fig = Figure(figsize=(9.5, 6.8))
    FigureCanvasAgg(fig)
    top = fig.add_axes((0.09, 0.5, 0.88, 0.34))
    bottom = fig.add_axes((0.09, 0.1, 0.88, 0.34), sharex=top)
    _title(top, "greedy path, step by step", data.info, width=115)
    if not data.path:
        top.set_xticks([])
        top.set_yticks([])
        bottom.set_visible(False)
        why = f"strategy {data.info.strategy}" if data.info.strategy else "no greedy steps recorded"
        top.text(0.5, 0.5, f"no greedy path in this run ({why})", transform=top.transAxes, ha="center")
        return _save(fig, path)

    steps = sorted({p.step for p in data.path} | {s for s, _ in data.stopped})
    groups = _by_head([p.head for _, p in data.candidates])
    for ax, field, label in ((top, "latency_ms", "latency (ms)"), (bottom, "miou_pct", "mIoU (%)")):
        for _, color, marker, kind in groups:
            mine = [(s, p) for s, p in data.candidates if kind is None or p.head == kind]
            cand = [(s, getattr(p, field)) for s, p in mine if s in steps and getattr(p, field) is not None]
            if cand:
                size = 16 if marker == "o" else 30
                ax.scatter(*zip(*cand, strict=True), s=size, color=color, marker=marker, zorder=2, linewidths=0)
        ax.plot([p.step for p in data.path], [getattr(p, field) for p in data.path], color=_PATH, lw=1.3, zorder=3)
        for p in data.path:
            color, marker = _style(p.dimension) if p.step else (_PATH, "o")
            ax.scatter([p.step], [getattr(p, field)], s=55, color=color, marker=marker, edgecolors="black", zorder=4)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fails = [(s, p.latency_ms) for s, p in data.failed if s in steps]
    if fails:
        top.scatter(*zip(*fails, strict=True), marker="x", s=30, color=_FAILED, linewidths=1.5, zorder=3)
        bottom.scatter(
            [s for s, _ in fails],
            [0.03] * len(fails),
            transform=bottom.get_xaxis_transform(),
            marker="x",
            s=30,
            color=_FAILED,
            linewidths=1.5,
            zorder=3,
            clip_on=False,
        )
    lats = [p.latency_ms for p in data.path] + [p.latency_ms for _, p in data.candidates]
    if lats and max(lats) / max(min(lats), 1e-9) > _LOG_RATIO:
        top.set_yscale("log")
        top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        top.set_ylabel("latency (ms, log scale)")
    bottom.set_ylim(bottom=_bottom(bottom))
    top.tick_params(labelbottom=False)
    for s, reason in data.stopped:
        for ax in (top, bottom):
            ax.axvline(s, color="#888888", ls=":", lw=1)
        bottom.annotate(
            "\n".join(textwrap.wrap(f"stopped: {reason}", 28)),
            (s, 0.5),
            xycoords=bottom.get_xaxis_transform(),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=7.5,
            color="#555555",
        )
    labels = {p.step: _step_label(p) for p in data.path}
    labels.update({s: f"{s} · no winner" for s, _ in data.stopped})
    bottom.set_xticks(steps)
    # Operator names are long; slanted labels keep 14+ steps apart.
    bottom.set_xticklabels([labels[s] for s in steps], fontsize=7.5, rotation=35, ha="right", rotation_mode="anchor")
    bottom.set_xlabel("greedy step · the winner's operator (x steplen)")
    bottom.set_xlim(min(steps) - 0.5, max(steps) + 0.5)

    handles = [_handle("o", _PATH, "path (step winner)", edge="black")]
    for dim in dict.fromkeys(p.dimension for p in data.path if p.step):
        color, marker = _style(dim)
        handles.append(_handle(marker, color, _grew(dim), line=False, edge="black"))
    for label, color, marker, _ in groups:
        handles.append(_handle(marker, color, f"candidate of that step{label}", line=False))
    if fails:
        handles.append(_handle("x", _FAILED, "failed candidate", line=False))
    top.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.92)
    return _save(fig, path)


def _by_head(heads: Sequence[str]) -> list[tuple[str, str, str, str | None]]:
    """How to draw candidates whose heads are ``heads``: ``(legend suffix, colour, marker, kind)`` per group;
    one group (``kind`` None: all of them), unless the run's candidates have more than one head kind
    (head operators), then one per kind, plain first."""
    kinds = sorted(set(heads), key=lambda k: (k != "plain", k))
    if len(kinds) <= 1:
        return [("", _CANDIDATE, "o", None)] if kinds else []
    colour = _DIMENSION_STYLE["head"][0]
    styles = {k: (_CANDIDATE, "o") if k == "plain" else (colour, _HEAD_MARKERS.get(k, "o")) for k in kinds}
    return [(f", {k} head", *styles[k], k) for k in kinds]


def _step_label(p: PathPoint) -> str:
    if not p.step:
        return f"{p.step} · start"
    times = f" x{p.steplen}" if p.steplen and p.steplen > 1 else ""
    return f"{p.step} · {p.operators or p.dimension}{times}"


def plot_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    *,
    compare: Sequence[str | Path] = (),
) -> dict[str, Path]:
    """Draw both figures of the run in ``run_dir``.

    Args:
        run_dir: The run folder.
        output: The latency-vs-mIoU figure (``.png`` or ``.svg``); the per-step figure goes next to
            it as ``<stem>_steps<suffix>``. Default: ``RUN/plots/frontier.png`` and ``RUN/plots/steps.png``.
        compare: Other run folders whose frontiers are drawn too, labelled by folder name.

    Returns:
        ``{"frontier": path, "steps": path}``.

    Raises:
        UserError: A run cannot be opened, or a file cannot be written.
    """
    from scaler.report.plot_data import frontier_plot_data, steps_plot_data
    from scaler.report.table import trials_frame
    from scaler.search.store import open_run

    run_dir = Path(run_dir)
    if output is None:
        frontier_path, steps_path = run_dir / PLOTS_DIR / "frontier.png", run_dir / PLOTS_DIR / "steps.png"
    else:
        frontier_path = _check_path(output)
        steps_path = frontier_path.with_name(f"{frontier_path.stem}_steps{frontier_path.suffix}")
    store = open_run(run_dir)
    df = trials_frame(store)
    names = [_run_label(run_dir)]
    others = []
    for other in compare:
        label = _run_label(Path(other))
        while label in names:
            label = f"{label}'"
        names.append(label)
        others.append((label, trials_frame(open_run(other))))
    return {
        "frontier": draw_frontier(frontier_plot_data(store, df, name=names[0], compare=others), frontier_path),
        "steps": draw_steps(steps_plot_data(store, df, name=names[0]), steps_path),
    }


def _run_label(run_dir: Path) -> str:
    return run_dir.resolve().name or str(run_dir)
