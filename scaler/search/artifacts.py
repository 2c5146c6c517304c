"""Files attached to a run's study as Optuna artifacts: the run's plots, and each export's model card.

The artifact store is Optuna's :class:`~optuna.artifacts.FileSystemArtifactStore` in ``RUN/artifacts/``
(one file per artifact id), beside the study's journal. A run whose study lives in a database
(``--storage postgresql://...``) keeps its artifact files in the same folder of its run folder, on
the host of the search; the database holds only their metadata. ``scaler dashboard RUN`` serves
both.

Metadata is stored where Optuna and optuna-dashboard look for it:

- study artifacts: the study system attribute ``artifacts:<id>`` (Optuna's
  :func:`~optuna.artifacts.upload_artifact` layout);
- trial artifacts: Optuna cannot change a finished trial, and an export comes after its trial
  finished, so they go to the study system attribute ``dashboard:artifacts:<trial id>:<id>``, the
  layout optuna-dashboard lists under the trial. Artifacts a trial got while running
  (``artifacts:<id>`` in its own system attributes) are listed too.

A file attached again under the same name replaces the content of that artifact (its id stays), so
resumed sessions and repeated exports do not pile up copies. Attaching never stops the caller: when
the folder or the storage cannot be written, one warning line says so and the caller goes on.
Only a search session (its plots) and an export (its model card) attach; reading a run never does.
"""

from __future__ import annotations

import dataclasses
import json
import mimetypes
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore

from scaler.files import atomic_write_bytes
from scaler.search.run_folder import ARTIFACTS_DIR
from scaler.search.store import RunStore

__all__ = [
    "Artifact",
    "artifact_store",
    "attach_to_study",
    "attach_to_trial",
    "study_artifacts",
    "trial_artifacts",
    "warn_stderr",
]

STUDY_PREFIX = "artifacts:"  # optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX
TRIAL_PREFIX = "dashboard:artifacts:"  # optuna_dashboard.artifact._backend.DASHBOARD_ARTIFACTS_ATTR_PREFIX
DEFAULT_MIME_TYPE = "application/octet-stream"


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One attached file, as Optuna's ``ArtifactMeta`` records it."""

    artifact_id: str
    filename: str
    mimetype: str
    encoding: str | None

    @classmethod
    def new(cls, filename: str) -> Artifact:
        mimetype, encoding = mimetypes.guess_type(filename)
        return cls(str(uuid.uuid4()), filename, mimetype or DEFAULT_MIME_TYPE, encoding)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def warn_stderr(message: str) -> None:
    """The default receiver of warnings: one line on stderr."""
    print(message, file=sys.stderr)


def artifact_store(run_dir: str | Path) -> FileSystemArtifactStore | None:
    """The run's artifact store (``RUN/artifacts/``), or ``None`` when the run has no artifacts yet.

    Opening it creates nothing: readers and the dashboard must not write to a run.
    """
    folder = Path(run_dir) / ARTIFACTS_DIR
    return FileSystemArtifactStore(folder) if folder.is_dir() else None


def _metas(attrs: dict[str, Any], prefix: str) -> list[Artifact]:
    out = []
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        data = json.loads(value) if isinstance(value, str) else value
        # optuna-dashboard marks a deleted artifact with a null value.
        if isinstance(data, dict):
            out.append(Artifact(data["artifact_id"], data["filename"], data["mimetype"], data.get("encoding")))
    return out


def study_artifacts(store: RunStore) -> list[Artifact]:
    """The artifacts attached to the run's study (not those of its trials)."""
    return _metas(store.storage.get_study_system_attrs(store.study_id), STUDY_PREFIX)


def trial_artifacts(store: RunStore, number: int) -> list[Artifact]:
    """The artifacts attached to trial ``number`` (after it finished, or while it ran).

    Raises:
        KeyError: No such trial.
    """
    return _trial_artifacts(store, _trial_id(store, number))


def _trial_artifacts(store: RunStore, trial_id: int) -> list[Artifact]:
    late = _metas(store.storage.get_study_system_attrs(store.study_id), f"{TRIAL_PREFIX}{trial_id}:")
    return late + _metas(store.storage.get_trial_system_attrs(trial_id), STUDY_PREFIX)


def _trial_id(store: RunStore, number: int) -> int:
    for t in store.trials():
        if t.number == number:
            return t._trial_id
    raise KeyError(f"trial {number} is not in study {store.study_name!r}")


def attach_to_study(
    store: RunStore, run_dir: str | Path, files: Iterable[str | Path], *, warn: Callable[[str], None] = warn_stderr
) -> dict[str, str]:
    """Attach ``files`` to the run's study (a file of a name attached before replaces that artifact).

    Args:
        store: The run's study, opened by the process that owns the run.
        run_dir: The run folder; the files go to ``run_dir/artifacts/``.
        files: The files to attach.
        warn: Receives one line if they cannot be attached; nothing is raised.

    Returns:
        ``{file name: artifact id}`` for the files attached.
    """
    current = {a.filename: a for a in study_artifacts(store)}

    def record(artifact: Artifact) -> None:
        store.storage.set_study_system_attr(store.study_id, STUDY_PREFIX + artifact.artifact_id, artifact.to_json())

    return _attach(Path(run_dir), files, current, record, "the study", warn)


def attach_to_trial(
    store: RunStore,
    run_dir: str | Path,
    number: int,
    files: Iterable[str | Path],
    *,
    warn: Callable[[str], None] = warn_stderr,
) -> dict[str, str]:
    """Attach ``files`` to trial ``number`` (finished or not; a file of a name attached before replaces it).

    Args:
        store: The run's study.
        run_dir: The run folder; the files go to ``run_dir/artifacts/``.
        number: The trial.
        files: The files to attach.
        warn: Receives one line if they cannot be attached; nothing is raised.

    Returns:
        ``{file name: artifact id}`` for the files attached.

    Raises:
        KeyError: No such trial.
    """
    trial_id = _trial_id(store, number)
    current = {a.filename: a for a in _trial_artifacts(store, trial_id)}

    def record(artifact: Artifact) -> None:
        key = f"{TRIAL_PREFIX}{trial_id}:{artifact.artifact_id}"
        store.storage.set_study_system_attr(store.study_id, key, artifact.to_json())

    return _attach(Path(run_dir), files, current, record, f"trial {number}", warn)


def _attach(
    run_dir: Path,
    files: Iterable[str | Path],
    current: dict[str, Artifact],
    record: Callable[[Artifact], None],
    what: str,
    warn: Callable[[str], None],
) -> dict[str, str]:
    folder = run_dir / ARTIFACTS_DIR
    attached: dict[str, str] = {}
    paths = [Path(f) for f in files]
    try:
        folder.mkdir(exist_ok=True)
        for path in paths:
            known = current.get(path.name)
            artifact = known or Artifact.new(path.name)
            # FileSystemArtifactStore's layout (one file per id), replaced atomically: the dashboard
            # may be serving the old content meanwhile.
            atomic_write_bytes(folder / artifact.artifact_id, path.read_bytes(), fsync=False)
            if known is None:
                record(artifact)
            attached[path.name] = artifact.artifact_id
    # Attaching is a convenience: no storage or file-system failure may stop a search or an export.
    except Exception as e:
        missing = ", ".join(p.name for p in paths if p.name not in attached)
        why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        warn(
            f"warning: {folder}: could not attach {missing} to {what} as Optuna artifacts ({why}); "
            "the run's results are unaffected"
        )
    return attached
