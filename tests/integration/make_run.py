"""`make run` as a newcomer starts it, on a state folder of the test's own, forced to train."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def start_make_run(state: Path, **popen: Any) -> subprocess.Popen:
    """`make run RUN_ARGS=--force` with `state` as its state folder, in a process group of its own; the test's own
    Airflow, MLflow and transfer-rec settings are left out so that the Makefile's apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "TRANSFER_REC"))}
    return subprocess.Popen(
        ["make", "-C", str(REPO), "run", f"STATE={state}", "RUN_ARGS=--force"],
        env=env,
        start_new_session=True,
        **popen,
    )
