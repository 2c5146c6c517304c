"""Text for people: what render.py adds beyond the records it prints."""

from __future__ import annotations

import shlex
from pathlib import Path

from scaler.report.render import format_search
from scaler.search.run import SearchSummary


def test_the_next_command_can_be_pasted_when_the_run_folder_has_spaces():
    summary = SearchSummary(Path("my runs/demo 1"), "demo", "greedy", "step limit reached", 4, 3, 1, 10.0, 2.0, 7.5)
    text = format_search(summary, ["my runs/demo 1/trials.csv"])
    next_line = next(line for line in text.splitlines() if line.strip().startswith("next"))
    command = next_line.split("next", 1)[1].strip()
    assert shlex.split(command)[:3] == ["scaler", "export", "my runs/demo 1"]
    assert "trials       4 (3 complete, 1 failed)" in text
    assert "time         10 s: latency 2 s, training 8 s, other 0 s" in text


def test_the_summary_names_the_training_done_by_workers():
    summary = SearchSummary(Path("run"), "demo", "greedy", "done", 9, 9, 0, 60.0, 5.0, 0.0, worker_train_seconds=150.0)
    text = format_search(summary, [])
    assert "training 0 s, other 55 s (waiting included); workers trained 150 s in parallel" in text
