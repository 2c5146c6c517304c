"""What every part of the fault suite shares: the checkout, the tiny space, running the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
# The real command line with deterministic stand-ins for latency and training (each training sleeping
# FAKE_TRAIN_S seconds), so that what a fault changes is all that changes.
FAKE_CLI = HELPERS / "fake_cli.py"
sys.path.insert(0, str(HELPERS))

from fake_search import tiny_space  # noqa: E402  (the tests' helpers, on the path just above)

# A greedy search on a tiny synthetic set: seconds per candidate, real or stand-in.
SPACE = tiny_space("faults", max_steps=2)


def env_with(work: Path, **extra: str) -> dict[str, str]:
    """This process's environment, with the checkout and the tests' helpers importable, a latency
    cache of the suite's own under ``work``, and ``extra``."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HELPERS)]),
        "LPS_SCALER_CACHE": str(work / "latency-cache"),
        **extra,
    }


def scaler_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m scaler.cli ARGS`` from the checkout, its output captured."""
    cmd = [sys.executable, "-m", "scaler.cli", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
