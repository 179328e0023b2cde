"""`transfer-rec run` (make run) works on a state folder alone: beside another run of it, or beside an Airflow
scheduler that runs transfer_rec on the same state, it refuses before it touches anything."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transfer_rec import cli
from transfer_rec.io.state import StateLayout
from transfer_rec.runtime.processes import stop_group

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def test_a_second_run_on_the_same_state_is_refused_naming_the_first(pipeline_env):
    pipeline_env()
    layout = StateLayout.from_env()
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".run.lock", "w") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(SystemExit, match=r"transfer-rec run: a run is working on .* \(pid 4242\)"):
            cli.run(layout)
        # nor does the Airflow UI start its scheduler beside the run
        with pytest.raises(SystemExit, match=r"make airflow-ui: a run is working on .* \(pid 4242\)"):
            cli.airflow_ui(layout)
    assert not layout.lake.exists(), "refused before init: nothing pulled, nothing migrated"
    # make airflow-ui holds the lock while its scheduler runs transfer_rec on this state: said so, with what to do
    with open(layout.root / ".run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4343 make airflow-ui")
        held.flush()
        with pytest.raises(
            SystemExit, match=r"make airflow-ui is running on .* \(pid 4343\): trigger the run in its UI"
        ):
            cli.run(layout)


def test_a_run_beside_a_live_scheduler_is_refused(pipeline_env, tmp_path, monkeypatch):
    pipeline_env()
    layout = StateLayout.from_env()
    home = tmp_path / "airflow-home"
    (home / "dags").mkdir(parents=True)  # no DAGs: this scheduler must not start runs of its own
    for name, value in {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }.items():
        monkeypatch.setenv(name, value)
    subprocess.run([AIRFLOW, "db", "migrate"], check=True, capture_output=True)
    cli._refuse_beside_a_scheduler()  # no scheduler yet: not refused

    log = open(tmp_path / "scheduler.log", "w")
    scheduler = subprocess.Popen([AIRFLOW, "scheduler"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        check = [AIRFLOW, "jobs", "check", "--job-type", "SchedulerJob", "--allow-multiple", "--limit", "0"]
        deadline = time.monotonic() + 120
        while subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the scheduler never reported alive"
            time.sleep(2)
        with pytest.raises(SystemExit, match=r"an Airflow scheduler is running on this Airflow home .*airflow-home"):
            cli.run(layout)
    finally:
        stop_group(scheduler)
        log.close()
    assert not layout.lake.exists(), "refused before init: nothing pulled"
    with open(layout.root / ".run.lock") as lock:  # the refused run let its lock go
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
