"""``scaler retrain``: train chosen architectures of a run again, from scratch, with one recipe.

A search's proxy mIoUs depend on how it trained (from scratch or inherited, its schedule); to compare
frontiers, or to check what inherited training found, the same architectures are trained again from
scratch with one recipe. Each retrain is a trial of the run's own study (kind ``retrain``,
``retrain_of`` the trial it retrains, ``recipe`` its schedule), so it is kept, resumed and reported
like any other, and never part of the search's decisions or its frontier. A retrain already done
with the same recipe is reused, one left waiting by an interrupted session is trained now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from scaler.errors import UserError
from scaler.search.record import TrialRecord
from scaler.search.run_folder import exclusive
from scaler.search.space import space_from_dict
from scaler.search.store import distributions, open_run
from scaler.search.worker import evaluate_claim

__all__ = ["Retrained", "retrain_run"]


@dataclasses.dataclass(frozen=True)
class Retrained:
    """One architecture trained again: the trial it came from, and the retrain's outcome.

    Args:
        trial: The retrained trial's number.
        arch: Its architecture, inline.
        latency_ms: Its latency (the trial's).
        search_miou: Its mIoU in the search (proxy, as the search trained it).
        retrain: The retrain trial's number.
        miou: The retrained mIoU (``None``: it failed).
        reused: It was retrained before with the same recipe (nothing trained now).
        fail_reason: Why the retrain failed.
    """

    trial: int
    arch: str
    latency_ms: float | None
    search_miou: float | None
    retrain: int
    miou: float | None
    reused: bool
    fail_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def retrain_run(
    run_dir: str | Path,
    *,
    trials: Sequence[int],
    iters: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> tuple[dict[str, Any], list[Retrained]]:
    """Retrain ``trials`` of the run in ``run_dir`` from scratch, in this process (the CLI's ``--frontier``
    names the frontier's trials, read by :mod:`scaler.report`).

    Args:
        run_dir: The run folder (no search may be running on it).
        trials: Trial numbers to retrain.
        iters: Training iterations (default: the space's).
        seed: Training seed (default: the space's).
        device: Train on this device instead of the space's.
        log: Receives one line per trained retrain.
        progress: Show the training progress bar (``None``: on a terminal).

    Returns:
        The recipe (``iters``, ``seed``, ``init``) and one :class:`Retrained` per trial, in trial order.

    Raises:
        UserError: Not a run folder, a search holds it, nothing chosen, a trial that is not a
            complete trial of the run, or a bad recipe value.
    """
    run_dir = Path(run_dir)
    if not trials:
        raise UserError("scaler retrain: choose what to retrain with --frontier or --trial N (repeatable)")
    store = open_run(run_dir)
    with exclusive(run_dir):
        stored = dict(store.get("space") or {})
        stored.pop("num_classes", None)
        space = space_from_dict(stored, source=f"{run_dir} (stored space)")
        training = space.training if device is None else dataclasses.replace(space.training, device=device)
        recipe = {
            "iters": training.iters if iters is None else iters,
            "seed": training.seed if seed is None else seed,
            "init": "scratch",
        }
        try:
            dataclasses.replace(training, **recipe)
        except UserError as e:
            raise UserError(f"scaler retrain: {e}") from None
        records = {t.number: t for t in store.records()}
        chosen = set(trials)
        for n in sorted(chosen):
            t = records.get(n)
            if t is None or not t.complete or t.is_retrain:
                what = "not in the run" if t is None else ("a retrain itself" if t.is_retrain else "not complete")
                raise UserError(f"scaler retrain: trial #{n} of {run_dir} is {what}; choose complete trials")
        dists = distributions(space.constraints)
        out = []
        for n in sorted(chosen):
            out.append(_retrain_one(store, records, n, recipe, training, dists, run_dir, log, progress))
        return recipe, out


def _retrain_one(
    store: Any,
    records: dict[int | None, TrialRecord],
    n: int,
    recipe: dict[str, Any],
    training: Any,
    dists: dict[str, Any],
    run_dir: Path,
    log: Callable[[str], None],
    progress: bool | None,
) -> Retrained:
    original = records[n]
    same = [t for t in records.values() if t.retrain_of == n and dict(t.recipe or {}) == recipe]
    done = next((t for t in same if t.state == TrialState.COMPLETE), None)
    number: int | None = done.number if done is not None else None
    if done is None:
        waiting = next((t for t in same if t.state == TrialState.WAITING), None)
        if waiting is not None:
            number = waiting.number
        else:
            record = TrialRecord(
                original.arch,
                strategy="retrain",
                step=None,
                latency=original.latency,
                retrain_of=n,
                recipe=recipe,
            )
            number = store.add(record, dists)
        claim = store.claim(number)
        if claim is None:
            raise UserError(f"trial #{number} (a retrain of #{n}) was taken by another process; run it again later")
        evaluate_claim(store, claim, training, run_dir=run_dir, log=log, progress=progress)
    result = next(t for t in store.records() if t.number == number)
    return Retrained(
        trial=n,
        arch=original.arch.inline(),
        latency_ms=original.latency_ms,
        search_miou=original.miou,
        retrain=int(result.number),  # type: ignore[arg-type]
        miou=result.miou,
        reused=done is not None,
        fail_reason=result.fail_reason,
    )
