"""What a search session leaves in its run folder when it ends: tables, plots and the frontier report."""

from __future__ import annotations

from pathlib import Path

from scaler.report.summary import FrontierReport, summarize_run
from scaler.search.run_folder import FRONTIER_CSV, PATH_CSV, TRIALS_CSV

__all__ = ["write_run_outputs"]


def write_run_outputs(run_dir: str | Path) -> tuple[list[str], FrontierReport]:
    """Write the run's tables (``trials.csv``, ``frontier.csv``, ``path.csv``) and plots.

    Returns:
        The paths written, and the frontier report.

    Raises:
        UserError: The run cannot be read or its folder cannot be written.
    """
    from scaler.report.draw import plot_run  # matplotlib only where something is drawn

    run_dir = Path(run_dir)
    report = summarize_run(run_dir)
    plots = plot_run(run_dir)
    tables = [str(run_dir / name) for name in (TRIALS_CSV, FRONTIER_CSV, PATH_CSV)]
    return tables + [str(p) for p in plots.values()], report
