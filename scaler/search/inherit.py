"""Inherited weights (``training.init: inherit``): every trained trial keeps its weights as an Optuna
artifact, and a candidate starts from its parent's, grown without changing what they compute
(:func:`models.grow_state_dict`).

The artifact store is Optuna's :class:`~optuna.artifacts.FileSystemArtifactStore` in
``RUN/artifacts/`` (beside the study, where the run's plots are attached too), so any worker that
sees the run folder (the search's own, ``--workers N``) can fetch any parent; the trial records the
artifact's id (``weights_artifact``). A search may keep them in a shared store instead
(``scaler search --artifacts URL``: ``s3://BUCKET[/PREFIX]`` through Optuna's
:class:`~optuna.artifacts.Boto3ArtifactStore`, or a folder on a mounted share), recorded in the study
(:data:`ARTIFACTS_ATTR`) so that workers on other hosts use it too (:func:`run_artifacts`).

Weights that cannot be had (the parent kept none, its file is gone or damaged, the store cannot be
reached) raise :class:`InheritError`; the worker then trains the candidate from scratch and records
why, or fails it when ``training.inherit_missing`` is ``fail``.

A trial's weights are uploaded while it is still running, before its result is recorded: a trial
that is COMPLETE always has its weights, and a worker killed before that leaves a trial that is
re-queued and trained again (an orphan file in the store is harmless).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from models import LPSNetArch, TextEncoderError, arch_from_dict, check_growth, class_embeddings, grow_state_dict
from scaler.errors import UserError
from scaler.search.record import TrialRecord
from scaler.search.run_folder import ARTIFACTS_DIR
from scaler.search.store import Claim, RunStore

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore  # Optuna's protocol of a store (not exported)

__all__ = [
    "ARTIFACTS_ATTR",
    "GROWTH_NOISE",
    "InheritError",
    "artifact_store",
    "artifacts_url",
    "error_line",
    "inherited_state",
    "keep_weights",
    "run_artifacts",
]

# Relative spread of the noise added to copied channels' incoming weights (Net2Wider's symmetry
# breaking): small enough that a grown candidate starts where its parent is (its output moves by
# well under 1%), large enough that copies can learn apart.
GROWTH_NOISE = 0.01


class InheritError(UserError):
    """A candidate cannot start from its parent's weights (none kept, the store unreachable)."""


# The study attribute that names a run's shared artifact store (absent: RUN/artifacts on every host).
ARTIFACTS_ATTR = "artifacts"

_URL_FORMS = "s3://BUCKET[/PREFIX] or a folder path"


def artifacts_url(url: str) -> str:
    """``url`` as a run records it: ``s3://BUCKET[/PREFIX]`` without a trailing slash, or an absolute folder.

    Args:
        url: What the user gave (``--artifacts``).

    Returns:
        The normalized URL (two spellings of one store compare equal).

    Raises:
        UserError: Another scheme, or an ``s3://`` URL without a bucket.
    """
    text = url.strip()
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise UserError(f"--artifacts {url}: name a bucket, as in s3://BUCKET[/PREFIX]")
        return f"s3://{bucket}" + (f"/{prefix.strip('/')}" if prefix.strip("/") else "")
    if not text or "://" in text:
        raise UserError(f"--artifacts {url!r}: not a store this tool can use; give {_URL_FORMS}")
    return str(Path(text).expanduser().resolve())


def artifact_store(run_dir: str | Path | None, url: str | None = None) -> ArtifactStore:
    """Where trained weights are kept: ``url`` (see :func:`artifacts_url`), else ``RUN/artifacts/``.

    A folder is created when missing. An ``s3://`` store's endpoint and credentials come from the
    standard AWS settings (``AWS_ENDPOINT_URL`` for MinIO, Ceph and other S3-compatible stores,
    ``AWS_ACCESS_KEY_ID``, ``~/.aws``); nothing is contacted until weights are read or written.

    Raises:
        UserError: A bad ``url``, boto3 missing for ``s3://``, a folder that cannot be created, or
            neither ``run_dir`` nor ``url``.
    """
    if url is None:
        if run_dir is None:
            raise UserError("inherited weights need a store: give the run folder (--run-dir RUN) or --artifacts URL")
        folder = Path(run_dir) / ARTIFACTS_DIR
    else:
        url = artifacts_url(url)
        if url.startswith("s3://"):
            return _s3_store(url)
        folder = Path(url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"artifact store {folder}: cannot create the folder ({e.strerror})") from None
    return FileSystemArtifactStore(str(folder))


def run_artifacts(store: RunStore, run_dir: str | Path | None, url: str | None = None) -> ArtifactStore:
    """The store a worker of the run uses: its own ``url``, else the run's recorded one, else ``RUN/artifacts/``.

    Raises:
        UserError: As :func:`artifact_store`.
    """
    return artifact_store(run_dir, url or store.get(ARTIFACTS_ATTR))


def _s3_store(url: str) -> ArtifactStore:
    try:
        import boto3
    except ImportError:
        raise UserError(
            f"--artifacts {url} needs boto3, which is not installed: pip install 'lps-scaler[s3]'"
        ) from None
    from optuna.artifacts import Boto3ArtifactStore

    bucket, _, prefix = url[len("s3://") :].partition("/")
    try:
        client = boto3.client("s3")
    except Exception as e:  # a malformed AWS setting (an endpoint that is no URL, an unknown profile)
        raise UserError(f"--artifacts {url}: cannot set up S3 ({error_line(e)}); check the AWS_* settings") from None
    inner = Boto3ArtifactStore(bucket, client=client)
    return _Prefixed(inner, f"{prefix}/") if prefix else inner


class _Prefixed:
    """An artifact store whose keys live under ``prefix`` of another (Optuna's S3 store has no prefix)."""

    def __init__(self, inner: ArtifactStore, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


def keep_weights(store: RunStore, claim: Claim, path: str | Path, artifacts: ArtifactStore) -> str:
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
    store: RunStore, record: TrialRecord, artifacts: ArtifactStore, *, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``record`` starts from: its ``inherit_from`` trial's trained weights, grown to its arch.

    Args:
        store: The run's study.
        record: The trial to train (``inherit_from`` set, an LPS-Net).
        artifacts: Where trained weights are kept.
        seed: Seeds which channels a widened layer copies and the symmetry-breaking noise.

    A candidate whose head differs from its parent's (a ``head`` operator) keeps the parent's backbone
    and starts its head afresh, seeded with ``seed`` (:func:`models.grow_state_dict`); a new
    language-guided head gets the run's class names embedded by its text encoder. The record then
    says so (``new_head``).

    Returns:
        The state dict (the network's keys) and what to record of where it came from.

    Raises:
        InheritError: The parent trial is missing, has no kept weights, or its file cannot be read or
            is not the parent's (the store unreachable, the file deleted or damaged).
        GrowthError: ``record``'s architecture is not a growth of the parent's (a bug, not a loss).
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
    child = record.arch
    assert isinstance(parent.arch, LPSNetArch) and isinstance(child, LPSNetArch)  # the search grows LPS-Nets
    check_growth(parent.arch, child)  # before any file: a child that is no growth is a bug, not a lost file
    what = f"the weights of trial #{number} ({parent.weights_artifact})"
    embeddings = _new_head_embeddings(store, parent.arch, child)
    with tempfile.TemporaryDirectory(prefix="inherit-") as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=parent.weights_artifact)
        except ArtifactNotFound as e:
            raise InheritError(
                f"{what} are not in the artifact store (deleted, or this worker sees another store than the "
                "search's: give it --artifacts URL)"
            ) from e
        except Exception as e:  # a store that cannot be reached (network, credentials, permissions)
            raise InheritError(f"{what} cannot be fetched from the artifact store: {error_line(e)}") from e
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's message is a page of advice about pickles: the kind says enough
            raise InheritError(f"{what} are damaged: not a weights file torch can load ({type(e).__name__})") from e
    try:
        parent_arch = arch_from_dict(blob["arch"])
        if not isinstance(parent_arch, LPSNetArch):
            raise TypeError(f"it holds a {type(parent_arch).__name__}, not an LPS-Net")
        if dataclasses.replace(parent_arch, num_classes=parent.arch.num_classes) != parent.arch:
            raise ValueError(f"it holds the weights of {parent_arch.inline()}, not of {parent.arch.inline()}")
        child = dataclasses.replace(child, num_classes=parent_arch.num_classes)  # both fitted to the dataset
        # No backbone growth (the control, or a head switch alone): no channel is copied, no noise to add.
        noise = 0.0 if dataclasses.replace(child, head=parent_arch.head) == parent_arch else GROWTH_NOISE
        state = grow_state_dict(
            blob["state_dict"], parent_arch, child, noise=noise, seed=seed, class_embeddings=embeddings
        )
    except Exception as e:  # a file that loads but is not the parent's weights (foreign, cut, edited)
        raise InheritError(f"{what} are damaged: {error_line(e)}") from e
    record_of = {"from_trial": number, "weights_artifact": parent.weights_artifact, "growth_noise": noise}
    if child.head != parent_arch.head:
        record_of["new_head"] = child.head.inline()  # the backbone is inherited, the head starts afresh
    return state, record_of


def _new_head_embeddings(store: RunStore, parent: LPSNetArch, child: LPSNetArch) -> torch.Tensor | None:
    """The class embeddings a new language-guided head starts with (the run's classes, by its encoder);
    ``None`` when the head does not change or is plain.

    Raises:
        InheritError: The run records no class names, or the head's encoder cannot embed them.
    """
    if child.head == parent.head or not child.head.language_guided:
        return None
    names = store.get("class_names")
    if not names:
        raise InheritError(f"the run records no class names for the new {child.head.kind} head of {child.inline()}")
    try:
        return class_embeddings(child.head.text_encoder, [str(n) for n in names], child.head.templates)
    except TextEncoderError as e:
        raise InheritError(f"the new {child.head.kind} head of {child.inline()} cannot embed the classes: {e}") from e


def error_line(e: BaseException) -> str:
    """``e`` as one short line, its type first (torch and boto3 messages run over several lines).

    Args:
        e: The exception.

    Returns:
        ``Type: first line``, at most 200 characters.
    """
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else 'no message'}"
    return text if len(text) <= 200 else text[:197] + "..."
