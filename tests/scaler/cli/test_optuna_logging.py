"""Optuna's log level belongs to whoever runs Optuna: the CLI quiets it, the library leaves it alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from click.testing import CliRunner

from scaler.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_search_library_keeps_the_callers_optuna_level():
    # A fresh process: in this one the modules may already be imported.
    code = (
        "import optuna; optuna.logging.set_verbosity(optuna.logging.DEBUG); "
        "import scaler.search.store, scaler.search.run, scaler.report.frontier; "
        "print(optuna.logging.get_verbosity())"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    assert out.stdout.strip() == str(optuna.logging.DEBUG)


def test_a_cli_command_sets_optuna_to_warning():
    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        r = CliRunner().invoke(main, ["models"], catch_exceptions=False)
        assert r.exit_code == 0
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    finally:
        optuna.logging.set_verbosity(before)
