"""What a search session leaves in its run folder when it ends: tables, plots and the frontier report.

The plots are also attached to the run's study as Optuna artifacts (see :mod:`scaler.search.artifacts`),
replacing those of earlier sessions, so optuna-dashboard shows them beside the trials.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scaler.report.summary import FrontierReport, summarize_run
from scaler.search.artifacts import attach_to_study, warn_stderr
from scaler.search.run_folder import FRONTIER_CSV, PATH_CSV, TRIALS_CSV
from scaler.search.store import open_run

__all__ = ["write_run_outputs"]


def write_run_outputs(
    run_dir: str | Path, *, warn: Callable[[str], None] = warn_stderr
) -> tuple[list[str], FrontierReport]:
    """Write the run's tables (``trials.csv``, ``frontier.csv``, ``path.csv``) and plots; attach the plots.

    Call it from the session that owns the run (the search): attaching writes to the study.

    Args:
        run_dir: The run folder.
        warn: Receives one line if the plots cannot be attached to the study (nothing is raised then).

    Returns:
        The paths written, and the frontier report.

    Raises:
        UserError: The run cannot be read or its folder cannot be written.
    """
    from scaler.report.draw import plot_run  # matplotlib only where something is drawn

    run_dir = Path(run_dir)
    report = summarize_run(run_dir)
    plots = plot_run(run_dir)
    attach_to_study(open_run(run_dir), run_dir, plots.values(), warn=warn)
    tables = [str(run_dir / name) for name in (TRIALS_CSV, FRONTIER_CSV, PATH_CSV)]
    return tables + [str(p) for p in plots.values()], report
