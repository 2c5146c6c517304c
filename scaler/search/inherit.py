"""Inherited weights (``training.init: inherit``): every trained trial keeps its weights as an Optuna
artifact, and a candidate starts from its parent's, grown without changing what they compute
(:func:`models.grow_state_dict`).

The artifact store is Optuna's :class:`~optuna.artifacts.FileSystemArtifactStore` in
``RUN/artifacts/`` (beside the study, where the run's plots are attached too), so any worker that
sees the run folder (the search's own, ``--workers N``) can fetch any parent; the trial records the
artifact's id (``weights_artifact``). A worker on another host needs the same folder mounted.

A trial's weights are uploaded while it is still running, before its result is recorded: a trial
that is COMPLETE always has its weights, and a worker killed before that leaves a trial that is
re-queued and trained again (an orphan file in the store is harmless).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from models import LPSNetArch, arch_from_dict, grow_state_dict
from scaler.errors import UserError
from scaler.search.record import TrialRecord
from scaler.search.run_folder import ARTIFACTS_DIR
from scaler.search.store import Claim, RunStore

__all__ = ["GROWTH_NOISE", "InheritError", "artifact_store", "inherited_state", "keep_weights"]

# Relative spread of the noise added to copied channels' incoming weights (Net2Wider's symmetry
# breaking): small enough that a grown candidate starts where its parent is (its output moves by
# well under 1%), large enough that copies can learn apart.
GROWTH_NOISE = 0.01


class InheritError(UserError):
    """A candidate cannot start from its parent's weights (none kept, the store unreachable)."""


def artifact_store(run_dir: str | Path) -> FileSystemArtifactStore:
    """The run's artifact store, ``RUN/artifacts/`` (created when missing)."""
    folder = Path(run_dir) / ARTIFACTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def keep_weights(store: RunStore, claim: Claim, path: str | Path, artifacts: FileSystemArtifactStore) -> str:
    """Upload the weights file ``path`` (written by ``train_and_evaluate(save=...)``) as an artifact of the
    running trial ``claim``; returns its id (the caller records it as ``weights_artifact``)."""
    trial = store.storage.get_trial(claim.trial_id)
    return upload_artifact(
        artifact_store=artifacts,
        file_path=str(path),
        study_or_trial=trial,
        storage=store.storage,
        mimetype="application/octet-stream",
    )


def inherited_state(
    store: RunStore, record: TrialRecord, artifacts: FileSystemArtifactStore, *, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``record`` starts from: its ``inherit_from`` trial's trained weights, grown to its arch.

    Args:
        store: The run's study.
        record: The trial to train (``inherit_from`` set, an LPS-Net).
        artifacts: Where trained weights are kept.
        seed: Seeds which channels a widened layer copies and the symmetry-breaking noise.

    Returns:
        The state dict (the network's keys) and what to record of where it came from.

    Raises:
        InheritError: The parent trial is missing, has no kept weights, or its file cannot be read.
        GrowthError: ``record``'s architecture is not a growth of the parent's.
    """
    number = record.inherit_from
    parents = [t for t in store.records() if t.number == number]
    if not parents:
        raise InheritError(f"trial #{number}, whose weights trial {record.arch.inline()} inherits, is not in the run")
    parent = parents[0]
    if parent.weights_artifact is None:
        raise InheritError(
            f"trial #{number} kept no weights to inherit (it finished before inherited training was on, "
            "or its worker could not upload them)"
        )
    with tempfile.TemporaryDirectory(prefix="inherit-") as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=parent.weights_artifact)
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a missing file, a store that cannot be reached, a damaged file
            raise InheritError(f"the weights of trial #{number} ({parent.weights_artifact}) cannot be read: {e}") from e
    parent_arch = arch_from_dict(blob["arch"])
    child = record.arch
    assert isinstance(parent_arch, LPSNetArch) and isinstance(child, LPSNetArch)  # the search grows LPS-Nets
    child = dataclasses.replace(child, num_classes=parent_arch.num_classes)  # both fitted to the dataset's classes
    noise = 0.0 if child == parent_arch else GROWTH_NOISE
    state = grow_state_dict(blob["state_dict"], parent_arch, child, noise=noise, seed=seed)
    return state, {"from_trial": number, "weights_artifact": parent.weights_artifact, "growth_noise": noise}
