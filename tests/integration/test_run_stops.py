"""`make run` stops when told to: SIGTERM to `transfer-rec run` while the DAG runs ends it and every process it
started (`airflow dags test` retries a stopped task, so it must be stopped as a whole group)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_to_transfer_rec_run_stops_the_whole_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "TRANSFER_REC"))}
    make = subprocess.Popen(
        ["make", "-C", str(REPO), "run", f"STATE={tmp_path / 'var'}", "RUN_ARGS=--force"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log = tmp_path / "var" / "last-run.log"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (log.exists() and "starting task_id=pull" in log.read_text()):
            time.sleep(1)
        assert log.exists(), "the pipeline never started"
        family = psutil.Process(make.pid).children(recursive=True)
        runner = next(p for p in family if "transfer-rec" in " ".join(p.cmdline()))
        runner.send_signal(signal.SIGTERM)
        make.wait(timeout=60)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline()[:4] for p in alive]
    finally:
        os.killpg(make.pid, signal.SIGKILL) if make.poll() is None else None
