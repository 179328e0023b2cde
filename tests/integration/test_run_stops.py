"""`make run` stops when told to: SIGTERM to `transfer-rec run` while the DAG runs ends it and every process it
started (`airflow dags test` retries a stopped task, so it must be stopped as a whole group)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
from make_run import start_make_run


def test_sigterm_to_transfer_rec_run_stops_the_whole_run(tmp_path):
    make = start_make_run(tmp_path / "var", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "var" / "last-run.log"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (log.exists() and "starting task_id=pull" in log.read_text()):
            time.sleep(1)
        assert log.exists() and "starting task_id=pull" in log.read_text(), "the pipeline never started"
        family = psutil.Process(make.pid).children(recursive=True)
        runner = next(p for p in family if "transfer-rec" in " ".join(p.cmdline()))
        runner.send_signal(signal.SIGTERM)
        make.wait(timeout=60)
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline()[:4] for p in alive]
    finally:
        os.killpg(make.pid, signal.SIGKILL) if make.poll() is None else None
