"""The accuracy proxy: train a network briefly with a fixed recipe and data stream, then measure mIoU.

The recipe (SGD momentum 0.9, weight decay 5e-4, poly(0.9) learning rate after a short linear
warm-up, cross-entropy with the ignore label, random scale 0.5-2.0 + crop + flip + colour jitter) and
the data stream depend only on the config and the seed, so every candidate of a search is trained on
the same images in the same order and their mIoUs can be compared.

Failures are results: a non-finite loss, CUDA out-of-memory, or bad data (a corrupt file, a label
outside the classes) end the run with ``status="failed"`` and a reason that names the cause.

:func:`train_and_evaluate` reads top to bottom: ``_setup`` (data, device, the architecture fitted to
the dataset), ``_init_model`` (seeded weights), ``_fit_and_score`` (the ``_train`` loop, then
:func:`~scaler.proxy.metrics.evaluate` and the scores).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from models import SegArch, SegModel, build_model, portable_state_dict
from scaler.device import resolve_device
from scaler.errors import UserError
from scaler.files import atomic_path
from scaler.proxy.augment import AugmentConfig, TrainStream
from scaler.proxy.data import DataError, SegmentationDataset, open_dataset
from scaler.proxy.metrics import confusion_matrix, evaluate, iou_from_confusion, scores
from scaler.proxy.recipe import Optimizers, ParamGroup, param_groups

__all__ = [
    "INHERIT_MISSING",
    "INIT_MODES",
    "LOSSES",
    "Checkpoint",
    "TrainConfig",
    "TrainResult",
    "cached_dataset",
    "confusion_matrix",
    "evaluate",
    "iou_from_confusion",
    "ohem_cross_entropy",
    "poly_lr",
    "train_and_evaluate",
]


INIT_MODES = ("scratch", "inherit")
INHERIT_MISSING = ("scratch", "fail")
LOSSES = ("ce", "ohem")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a proxy-training result, besides the architecture.

    Args:
        dataset: Dataset SPEC (``synthetic``, ``cityscapes:PATH``, ...).
        iters: Optimisation steps.
        batch: Images per step.
        crop: Training crop ``(H, W)``.
        eval_size: Size ``(H, W)`` images are resized to for evaluation and, before the random
            scale, for training: the search's input size. ``None``: the images' own size.
        lr: Peak learning rate.
        momentum, weight_decay, poly_power: The SGD recipe.
        warmup_iters: Linear warm-up steps (``None``: 5% of ``iters``).
        scale, flip, jitter: Augmentation, see :class:`~scaler.proxy.augment.AugmentConfig`.
        seed: Fixes initial weights, image order and augmentation.
        loss: ``ce`` (cross-entropy over every labelled pixel) or ``ohem``: online hard example mining,
            the real-time segmentation recipes' remedy for a dominant class (BiSeNet, STDC): only
            pixels whose true class gets probability below ``ohem_thresh`` count, and at least
            ``ohem_min_kept`` of the batch's labelled pixels (the hardest) always do.
        ohem_thresh: See ``loss``.
        ohem_min_kept: See ``loss``: a fraction of the labelled pixels (the recipes keep 1/16).
        init: ``scratch`` (seeded initial weights) or ``inherit``: a search starts each candidate from
            its trained parent's weights, grown (see :mod:`models.grow`); the weights themselves are
            given to :func:`train_and_evaluate` as ``init_state``.
        inherit_iters: With ``init: inherit``, the schedule of a candidate that starts from its parent's
            weights (its own warm-up and decay): it goes on from a trained network, so it can be shorter
            than ``iters``, which the start network (and every from-scratch training) gets.
            ``None``: ``iters``.
        inherit_missing: With ``init: inherit``, what a candidate whose parent's weights cannot be had
            (none kept, the file deleted or damaged, the store unreachable) does: ``scratch`` trains it
            from scratch and records why; ``fail`` fails it with the reason (strict inheritance).
        device: ``cpu``, ``cuda`` or ``cuda:i``.
        amp: Mixed precision; ``None``: on for CUDA, off on the CPU.
        channels_last: ``None``: on for CUDA, off on the CPU.
        workers: DataLoader worker processes (results do not depend on it).
        val_limit: Evaluate on at most this many validation images (``None``: all).
        eval_batch: Validation images per forward pass.
    """

    dataset: str = "synthetic"
    iters: int = 300
    batch: int = 8
    crop: tuple[int, int] = (128, 256)
    eval_size: tuple[int, int] | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    warmup_iters: int | None = None
    scale: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    jitter: float = 0.25
    seed: int = 0
    loss: str = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: float = 1 / 16
    init: str = "scratch"
    inherit_iters: int | None = None
    inherit_missing: str = "scratch"
    device: str = "cpu"
    amp: bool | None = None
    channels_last: bool | None = None
    workers: int = 0
    val_limit: int | None = None
    eval_batch: int = 8

    def __post_init__(self) -> None:
        checks = [
            (self.iters >= 1, "iters", self.iters, "must be >= 1"),
            (self.batch >= 1, "batch", self.batch, "must be >= 1"),
            (min(self.crop) >= 1, "crop", self.crop, "must be at least 1x1"),
            (self.eval_size is None or min(self.eval_size) >= 1, "eval_size", self.eval_size, "must be >= 1x1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "must be a positive number"),
            (0 < self.scale[0] <= self.scale[1], "scale", self.scale, "must be (low, high) with 0 < low <= high"),
            (0 <= self.flip <= 1, "flip", self.flip, "must be a probability"),
            (self.jitter >= 0, "jitter", self.jitter, "must be >= 0"),
            (self.workers >= 0, "workers", self.workers, "must be >= 0"),
            (self.val_limit is None or self.val_limit >= 1, "val_limit", self.val_limit, "must be >= 1"),
            (self.eval_batch >= 1, "eval_batch", self.eval_batch, "must be >= 1"),
            (self.init in INIT_MODES, "init", self.init, f"must be one of {', '.join(INIT_MODES)}"),
            (
                self.inherit_iters is None or self.inherit_iters >= 1,
                "inherit_iters",
                self.inherit_iters,
                "must be >= 1",
            ),
            (
                self.inherit_missing in INHERIT_MISSING,
                "inherit_missing",
                self.inherit_missing,
                f"must be one of {', '.join(INHERIT_MISSING)}",
            ),
            (self.loss in LOSSES, "loss", self.loss, f"must be one of {', '.join(LOSSES)}"),
            (0 < self.ohem_thresh < 1, "ohem_thresh", self.ohem_thresh, "must be a probability in (0, 1)"),
            (0 < self.ohem_min_kept <= 1, "ohem_min_kept", self.ohem_min_kept, "must be a fraction in (0, 1]"),
        ]
        for ok, name, value, what in checks:
            if not ok:
                raise UserError(f"training config: {name} {what}, got {value!r}")

    @property
    def candidate_iters(self) -> int:
        """The schedule of a search candidate: ``inherit_iters`` with inherited weights, else ``iters``."""
        return self.inherit_iters if self.init == "inherit" and self.inherit_iters is not None else self.iters

    def inherited(self) -> TrainConfig:
        """The recipe of a candidate that starts from its parent's weights (``inherit_iters`` as its schedule)."""
        return dataclasses.replace(self, iters=self.candidate_iters, inherit_iters=None)

    @property
    def resolved_warmup(self) -> int:
        return self.warmup_iters if self.warmup_iters is not None else max(0, self.iters // 20)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form; ``init`` only when it is not ``scratch``, ``inherit_iters`` only when set,
        ``inherit_missing`` only when it is not ``scratch`` with ``init: inherit``, ``loss`` and its knobs only
        when it is not ``ce`` (what every run before them trained with)."""
        out = dataclasses.asdict(self)
        if out["inherit_missing"] == "scratch" or out["init"] == "scratch":  # it means nothing without inherit
            del out["inherit_missing"]
        if out["init"] == "scratch":
            del out["init"]
        if out["inherit_iters"] is None:
            del out["inherit_iters"]
        if out["loss"] == "ce":  # the OHEM knobs mean nothing without it; runs before it resume unchanged
            for key in ("loss", "ohem_thresh", "ohem_min_kept"):
                del out[key]
        return out


@dataclasses.dataclass
class TrainResult:
    """What one proxy training reports. ``status`` is ``ok`` or ``failed`` (then ``reason`` says why)."""

    status: str
    reason: str | None
    arch: dict[str, Any]
    config: dict[str, Any]
    miou: float | None = None
    pixel_accuracy: float | None = None
    per_class_iou: dict[str, float | None] = dataclasses.field(default_factory=dict)
    iters_done: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    loss_min: float | None = None
    loss_curve: list[float] = dataclasses.field(default_factory=list)
    images_per_s: float | None = None
    data_time_share: float | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    device: str = "cpu"
    num_val_images: int = 0
    rungs: list[dict[str, float]] = dataclasses.field(default_factory=list)
    param_groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def poly_lr(it: int, *, base_lr: float, iters: int, power: float = 0.9, warmup: int = 0) -> float:
    """Learning rate at step ``it``: linear warm-up to ``base_lr``, then ``base_lr (1 - t)^power``."""
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, iters - warmup)
    return base_lr * max(0.0, 1.0 - progress) ** power


_DATASETS: dict[tuple[str, str, int], SegmentationDataset] = {}


def cached_dataset(spec: str, split: str, seed: int) -> SegmentationDataset:
    """``open_dataset``, reused across the candidates one process trains (decoded images stay cached)."""
    key = (spec, split, seed)
    if key not in _DATASETS:
        if len(_DATASETS) >= 8:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = open_dataset(spec, split, seed=seed)
    return _DATASETS[key]


def _failed(reason: str, setup: _Setup, fields: dict[str, Any], **latest: Any) -> TrainResult:
    """A failed result with what the run had measured (``fields``), updated by ``latest``."""
    return TrainResult(
        status="failed",
        reason=reason,
        arch=setup.arch.to_dict(),
        config=setup.config.to_dict(),
        **{**fields, **latest},
    )


def _curve_summary(losses: list[float], points: int = 50) -> list[float]:
    if len(losses) <= points:
        return [round(v, 5) for v in losses]
    chunks = np.array_split(np.asarray(losses), points)
    return [round(float(c.mean()), 5) for c in chunks]


def train_and_evaluate(
    arch: SegArch,
    config: TrainConfig,
    *,
    progress: bool | None = None,
    save: str | Path | None = None,
    train_set: SegmentationDataset | None = None,
    val_set: SegmentationDataset | None = None,
    log: Callable[[str], None] | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    until: int | None = None,
    resume: Checkpoint | None = None,
    checkpoint: str | Path | None = None,
    eval_at: Sequence[int] = (),
) -> TrainResult:
    """Train ``arch`` with ``config`` and evaluate it on the validation split.

    The initial weights come from ``config.seed`` through torch's global RNG, seeded inside
    ``torch.random.fork_rng``: the caller's random state is the same before and after.

    Args:
        arch: The network; its ``num_classes`` is replaced by the dataset's. A language-guided
            head gets the dataset's class names, embedded by its text encoder, and trains with its
            auxiliary loss when it has one.
        config: Recipe, data and device.
        progress: Show a progress bar (``None``: only on a terminal).
        save: Write the trained weights, architecture, config and result to this file.
        train_set, val_set: Use these splits instead of opening ``config.dataset``.
        log: Receives one-line messages (e.g. when a run fails).
        init_state: Start from these weights (the model's ``state_dict`` keys, loaded strictly) instead
            of seeded ones; the seed still fixes the data order and augmentation.
        until: Stop after this many iterations of the ``config.iters`` schedule (the learning rate
            follows the whole schedule) and evaluate there: one rung of successive halving.
            ``None``: the whole schedule.
        resume: Go on from a :class:`Checkpoint` of the same architecture and recipe (weights, optimiser
            state, position in the schedule and data stream): training to ``k`` and resuming to ``n``
            gives the weights training straight to ``n`` gives.
        checkpoint: Write a :class:`Checkpoint` of where training stopped to this file (atomically).
        eval_at: Also evaluate at these iterations on the way (recorded in ``rungs``); evaluation
            changes nothing of the training.

    Returns:
        A :class:`TrainResult`; ``status="failed"`` with ``reason`` for a non-finite loss, CUDA
        out-of-memory, bad data, or any other error raised while training.

    Raises:
        UserError: The dataset SPEC cannot be opened or the device does not exist (nothing to train).
        TextEncoderError: A language-guided head's text encoder cannot embed the class names.
    """
    setup = _setup(arch, config, train_set, val_set)
    span = _Span.of(config, until, resume, eval_at)
    with torch.random.fork_rng(devices=[setup.device] if setup.device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = _init_model(setup)
        if resume is not None:
            model.load_state_dict(resume.state_dict)
        elif init_state is not None:
            model.load_state_dict(init_state)
        result, state = _fit_and_score(model, setup, progress, span)
    if result.ok and save is not None:
        _save(save, model, setup.arch, config, result)
    if result.ok and checkpoint is not None:
        Checkpoint(
            arch=setup.arch.to_dict(),
            config=config.to_dict(),
            iters_done=span.stop,
            state_dict=portable_state_dict(model),
            optimizer=state["optimizer"],
            grad_scaler=state["grad_scaler"],
            losses=state["losses"],
        ).write(checkpoint)
    return result


# Settings that change where and how fast a training runs, not what it computes (up to floating point).
_WHERE_IT_RUNS = ("device", "workers", "val_limit", "eval_batch", "channels_last")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a training stopped mid-schedule, to go on from (:func:`train_and_evaluate` ``resume``).

    Args:
        arch, config: What was trained, with which recipe (a resume must match both).
        iters_done: Iterations of the schedule done.
        state_dict: The weights.
        optimizer: The optimiser's state (SGD momentum buffers).
        grad_scaler: The mixed-precision loss scaler's state.
        losses: Every iteration's loss so far (the result's loss curve spans the whole schedule).
    """

    arch: dict[str, Any]
    config: dict[str, Any]
    iters_done: int
    state_dict: Mapping[str, torch.Tensor]
    optimizer: dict[str, Any]
    grad_scaler: dict[str, Any]
    losses: list[float]

    def mismatch(self, config: TrainConfig) -> str | None:
        """Why training with ``config`` cannot go on from here (``None``: it can). Where it runs (device,
        loader workers, evaluation batching) may differ; what decides the trajectory may not."""
        mine = {k: v for k, v in self.config.items() if k not in _WHERE_IT_RUNS}
        theirs = {k: v for k, v in config.to_dict().items() if k not in _WHERE_IT_RUNS}
        if mine != theirs:
            keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            return f"the checkpoint was trained with another recipe ({', '.join(keys)} differ)"
        return None

    def write(self, path: str | Path) -> None:
        """Save to ``path`` atomically (a reader never sees half a checkpoint)."""
        with atomic_path(Path(path)) as tmp:
            torch.save(dataclasses.asdict(self), tmp)

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        """Load a checkpoint written by :meth:`write`.

        Raises:
            ValueError: The file is not a checkpoint (damaged, or another kind of file).
        """
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**{f.name: blob[f.name] for f in dataclasses.fields(cls)})
        except Exception as e:  # a truncated file, a weights file, a pickle of something else
            raise ValueError(f"{path} is not a training checkpoint: {type(e).__name__}: {e}") from e


@dataclasses.dataclass(frozen=True)
class _Span:
    """The part of the schedule one call trains: iterations ``[start, stop)``, evaluating at ``eval_at``."""

    start: int
    stop: int
    eval_at: tuple[int, ...]
    resume: Checkpoint | None

    @classmethod
    def of(cls, config: TrainConfig, until: int | None, resume: Checkpoint | None, eval_at: Sequence[int]) -> _Span:
        """Raises:
        ValueError: ``until`` outside the schedule, or a checkpoint of another recipe or past ``until``."""
        stop = config.iters if until is None else until
        if not 1 <= stop <= config.iters:
            raise ValueError(f"until must be 1 to iters ({config.iters}), got {until}")
        start = 0
        if resume is not None:
            if (why := resume.mismatch(config)) is not None:
                raise ValueError(f"{why}; it cannot be resumed with this one")
            start = resume.iters_done
            if not 0 < start < stop:
                raise ValueError(f"the checkpoint stopped at iteration {start}; nothing to train up to {stop}")
        return cls(start, stop, tuple(sorted(k for k in set(eval_at) if start < k < stop)), resume)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What a run is decided by before anything trains: the architecture fitted to the data, the
    splits, the device and its precision settings."""

    arch: SegArch
    config: TrainConfig
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    device: torch.device
    amp: bool
    channels_last: bool


class _Diverged(Exception):
    """The loss stopped being finite (a failed result, not an error)."""

    def __init__(self, reason: str, iters_done: int) -> None:
        super().__init__(reason)
        self.iters_done = iters_done


def _setup(
    arch: SegArch, config: TrainConfig, train_set: SegmentationDataset | None, val_set: SegmentationDataset | None
) -> _Setup:
    """Open the data and the device, and fit ``arch`` to the dataset's classes.

    Raises:
        UserError: Unknown device or dataset, or a crop/eval size too small for ``arch``.
    """
    device = resolve_device(config.device)
    train_set = train_set if train_set is not None else cached_dataset(config.dataset, "train", config.seed)
    val_set = val_set if val_set is not None else cached_dataset(config.dataset, "val", config.seed)
    if arch.num_classes != train_set.info.num_classes:
        arch = dataclasses.replace(arch, num_classes=train_set.info.num_classes)
    for size, what in ((config.crop, "crop"), (config.eval_size, "eval size")):
        if size is not None:
            try:
                arch.check_input_size(*size)
            except ValueError as e:
                raise UserError(f"{what} {size[0]}x{size[1]}: {e}") from None
    cuda = device.type == "cuda"
    return _Setup(
        arch=arch,
        config=config,
        train_set=train_set,
        val_set=val_set,
        device=device,
        amp=config.amp if config.amp is not None else cuda,
        channels_last=config.channels_last if config.channels_last is not None else cuda,
    )


def _init_model(setup: _Setup) -> SegModel:
    """The network with initial weights from the global RNG (seeded by the caller); a language-guided
    head is pointed at the dataset's classes."""
    model = build_model(setup.arch)
    if setup.arch.head.language_guided:
        model.set_classes(list(setup.train_set.info.class_names))
    return model


def _loader(setup: _Setup, span: _Span) -> DataLoader:
    """The training batches: the same images, augmentations and order for every architecture; a span
    of the schedule gets the batches of its iterations (sample ``k`` depends on the seed and ``k`` alone)."""
    config = setup.config
    aug = AugmentConfig(
        crop=config.crop, base_size=config.eval_size, scale=config.scale, flip=config.flip, jitter=config.jitter
    )
    stream = TrainStream(setup.train_set, aug, config.iters * config.batch, config.seed)
    samples = Subset(stream, range(span.start * config.batch, span.stop * config.batch))
    return DataLoader(
        samples,
        batch_size=config.batch,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=TrainStream.collate,
        pin_memory=setup.device.type == "cuda",
        persistent_workers=False,
    )


def _fit_and_score(
    model: SegModel, setup: _Setup, progress: bool | None, span: _Span
) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``model`` over ``span``, then evaluate it; a failure along the way is a failed result that says why.

    Returns:
        The result, and where the training stopped (optimiser and loss-scaler state, every loss so
        far) for a :class:`Checkpoint`.
    """
    config = setup.config
    loader = _loader(setup, span)
    earlier = list(span.resume.losses) if span.resume is not None else []
    losses: list[float] = []
    groups = _param_groups(model, setup)
    fields: dict[str, Any] = {"device": str(setup.device), "param_groups": [g.summary() for g in groups]}
    bar = _progress(span.stop - span.start, progress, f"train {setup.arch.arch_hash()}")
    state: dict[str, Any] = {}
    rungs: list[dict[str, float]] = []

    def score() -> tuple[torch.Tensor, int]:
        return evaluate(
            model,
            setup.val_set,
            eval_size=config.eval_size,
            device=setup.device,
            limit=config.val_limit,
            batch=config.eval_batch,
            channels_last=setup.channels_last,
            amp=setup.amp,
        )

    midway_s = [0.0]  # evaluations on the way are not training time

    def midway(iters_done: int) -> None:
        t = time.perf_counter()
        conf, _ = score()
        rungs.append({"iters": iters_done, "miou": scores(conf, setup.train_set.info.class_names)["miou"]})
        model.train()
        midway_s[0] += time.perf_counter() - t

    t_start = time.perf_counter()
    try:
        # Moving a large network can run out of GPU memory too: a failed result, like the steps.
        model.to(setup.device)
        if setup.channels_last:
            model.to(memory_format=torch.channels_last)
        data_time = _train(model, setup, groups, loader, losses, bar, span, state, midway)
        seconds = time.perf_counter() - t_start - midway_s[0]
        fields.update(_train_stats(earlier, losses, config.batch, data_time, seconds))
        t_eval = time.perf_counter()
        conf, seen = score()
        fields["eval_seconds"] = time.perf_counter() - t_eval
    except _Diverged as e:
        failed = _failed(str(e), setup, fields, iters_done=e.iters_done, loss_curve=_curve_summary(earlier + losses))
        return failed, state
    except DataError as e:
        return _failed(f"bad data: {e}", setup, fields, iters_done=span.start + len(losses)), state
    except torch.cuda.OutOfMemoryError:
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
        reason = (
            f"CUDA out of memory at batch {config.batch}, crop {config.crop[0]}x{config.crop[1]} "
            f"(iteration {span.start + len(losses) + 1}); lower --batch or --crop"
        )
        return _failed(reason, setup, fields, iters_done=span.start + len(losses)), state
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a candidate that breaks is recorded, and the search goes on
        first = (str(e).strip().splitlines() or [""])[0]
        return _failed(f"{type(e).__name__}: {first}", setup, fields, iters_done=span.start + len(losses)), state
    finally:
        if bar is not None:
            bar.close()
    state["losses"] = earlier + losses
    measured = scores(conf, setup.train_set.info.class_names)
    rungs.append({"iters": span.stop, "miou": measured["miou"]})
    result = TrainResult(
        status="ok",
        reason=None,
        arch=setup.arch.to_dict(),
        config=config.to_dict(),
        num_val_images=seen,
        rungs=rungs,
        **measured,
        **fields,
    )
    return result, state


def _train(
    model: SegModel,
    setup: _Setup,
    groups: list[ParamGroup],
    loader: DataLoader,
    losses: list[float],
    bar: Any,
    span: _Span,
    state: dict[str, Any],
    midway: Callable[[int], None],
) -> float:
    """The optimisation steps of ``span`` on the recipe's ``groups``; each step's loss is appended to
    ``losses`` as it comes (a failure mid-run still knows how far it got), ``midway(k)`` is called after
    step ``k`` of ``span.eval_at``, and the optimiser's and loss scaler's states are left in ``state``.
    Returns the seconds spent waiting for data.

    Raises:
        _Diverged: The loss became NaN or infinite.
    """
    config, device = setup.config, setup.device
    aux_weight = setup.arch.head.aux_weight if setup.arch.head.has_aux else 0.0
    ignore_index = setup.train_set.info.ignore_index
    scaler = torch.amp.GradScaler(device.type, enabled=setup.amp and device.type == "cuda")
    optimizer = Optimizers(groups, momentum=config.momentum)
    if span.resume is not None:
        optimizer.load_state_dict(span.resume.optimizer)
        scaler.load_state_dict(span.resume.grad_scaler)
    model.train()
    data_time = 0.0
    t_data = time.perf_counter()
    for it, (x, y) in enumerate(loader, start=span.start):
        data_time += time.perf_counter() - t_data
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if setup.channels_last:
            x = x.to(memory_format=torch.channels_last)
        lr = optimizer.set_lr(
            lambda base, warmup, it=it: poly_lr(
                it, base_lr=base, iters=config.iters, power=config.poly_power, warmup=warmup
            )
        )
        with torch.autocast(device_type=device.type, enabled=setup.amp):
            loss = _loss(model, x, y, aux_weight, ignore_index, config)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        optimizer.step(scaler)
        scaler.update()
        value = float(loss.detach())  # sync point: also where a non-finite loss is caught
        if not math.isfinite(value):
            raise _Diverged(
                f"loss became {value} at iteration {it + 1}/{config.iters} (lr {lr:.3g}); lower the learning rate",
                iters_done=it + 1,
            )
        losses.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if it + 1 in span.eval_at:
            midway(it + 1)
        t_data = time.perf_counter()
    state["optimizer"] = optimizer.state_dict()
    state["grad_scaler"] = scaler.state_dict()
    return data_time


def _param_groups(model: SegModel, setup: _Setup) -> list[ParamGroup]:
    """The recipe's optimiser groups for ``model`` (:mod:`scaler.proxy.recipe`)."""
    config = setup.config
    return param_groups(
        model,
        setup.arch.head,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_iters=config.resolved_warmup,
        iters=config.iters,
    )


def _loss(
    model: SegModel, x: torch.Tensor, y: torch.Tensor, aux_weight: float, ignore_index: int, config: TrainConfig
) -> torch.Tensor:
    """The config's loss of the logits, plus the weighted auxiliary term when the head has one."""
    logits, aux = model.forward_with_aux(x) if aux_weight else (model(x), None)

    def criterion(z: torch.Tensor) -> torch.Tensor:
        if config.loss == "ohem":
            return ohem_cross_entropy(z.float(), y, ignore_index, config.ohem_thresh, config.ohem_min_kept)
        return F.cross_entropy(z.float(), y, ignore_index=ignore_index)

    loss = criterion(logits)
    if aux is not None:
        loss = loss + aux_weight * criterion(aux)
    return loss


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, thresh: float, min_kept: float
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only: those whose true class gets probability below ``thresh``,
    and at least the ``min_kept`` share of the labelled pixels with the largest losses.

    Args:
        logits: ``(N, C, H, W)``.
        target: ``(N, H, W)`` class indices; ``ignore_index`` marks unlabelled pixels.
        ignore_index: Never counted.
        thresh: A pixel whose true class gets probability below this is hard.
        min_kept: Share (0-1] of the labelled pixels always kept, the hardest first.

    Returns:
        The mean loss of the kept pixels (0 when no pixel is labelled).
    """
    pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    labelled = pixel[target.flatten() != ignore_index]
    if labelled.numel() == 0:
        return logits.sum() * 0.0
    hard = labelled[labelled > -math.log(thresh)]
    keep = max(1, math.ceil(min_kept * labelled.numel()))
    if hard.numel() < keep:
        hard = torch.topk(labelled, keep).values
    return hard.mean()


def _train_stats(
    earlier: list[float], losses: list[float], batch: int, data_time: float, train_seconds: float
) -> dict[str, Any]:
    """The loss summary of the whole schedule so far (``earlier``: before a resume) and the throughput of
    this call's ``losses``."""
    every = earlier + losses
    return {
        "iters_done": len(every),
        "loss_first": every[0],
        "loss_last": float(np.mean(every[-max(1, len(every) // 10) :])),
        "loss_min": min(every),
        "loss_curve": _curve_summary(every),
        "images_per_s": len(losses) * batch / train_seconds,
        "data_time_share": data_time / train_seconds,
        "train_seconds": train_seconds,
    }


def _save(path: str | Path, model: SegModel, arch: SegArch, config: TrainConfig, result: TrainResult) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = portable_state_dict(model)
    blob = {"arch": arch.to_dict(), "state_dict": state, "train_config": config.to_dict(), "result": result.to_dict()}
    if model.class_names is not None:  # a language-guided head: the names its class embeddings stand for
        blob["class_names"] = list(model.class_names)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    # tqdm's disable=None hides the bar when stderr is not a terminal (logs, CI, worker processes).
    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit="it", disable=disable, leave=False, dynamic_ncols=True)
