"""Reading a search (finished or running): every trial as a table, the frontier and its hypervolume,
the greedy path, plots (their data apart from their drawing), text for people, and exports with
their model cards. Nothing here changes a run's study; tables and plots are written beside it.
"""

from __future__ import annotations

from scaler.report.frontier import Hypervolume, hypervolume, pareto_front, reference_point, run_hypervolume
from scaler.report.path import PATH_COLUMNS, greedy_path
from scaler.report.render import format_frontier
from scaler.report.summary import FrontierReport, RunInfo, run_info, summarize_run, write_tables
from scaler.report.table import TRIAL_COLUMNS, operator_dimension, trials_frame

__all__ = [
    "PATH_COLUMNS",
    "TRIAL_COLUMNS",
    "FrontierReport",
    "Hypervolume",
    "RunInfo",
    "format_frontier",
    "greedy_path",
    "hypervolume",
    "operator_dimension",
    "pareto_front",
    "reference_point",
    "run_hypervolume",
    "run_info",
    "summarize_run",
    "trials_frame",
    "write_tables",
]
