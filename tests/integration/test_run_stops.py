"""`make run` stops when told to: SIGTERM to `transfer-rec run` while the DAG runs ends it and every process it
started (`airflow dags test` retries a stopped task, so it must be stopped as a whole group), and the run it stopped
is failed in Airflow's database (left "running", a scheduler would continue it or wait behind it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

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
        runs = _runs(tmp_path / "var")
        assert runs and all(r["state"] == "failed" for r in runs), runs
    finally:
        os.killpg(make.pid, signal.SIGKILL) if make.poll() is None else None


def _runs(state: Path) -> list[dict]:
    """transfer_rec's runs in the state folder's Airflow database, as `airflow dags list-runs` lists them."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(state / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(repo / "dags"))
    listed = subprocess.run(
        [str(repo / ".venv" / "bin" / "airflow"), "dags", "list-runs", "transfer_rec", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    # Airflow prints its warnings on stdout too: the listing is the line that is a JSON list
    return next(json.loads(line) for line in listed.stdout.splitlines() if line.startswith(("[{", "[]")))
