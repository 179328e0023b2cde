"""A Spark stage stops when told to: SIGTERM to a task's process, or its time limit (a SIGALRM whose handler raises,
as Airflow's execution_timeout), while Spark works ends the stage (the guard every stage runs inside) and the Spark
JVM it started, instead of leaving a driver running with nobody to answer it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.skipif(
    not (os.environ.get("JAVA_HOME") or shutil.which("java")),
    reason="Spark needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)",
)

CHILD = """
import signal, sys
from transfer_rec.config import SparkConfig
from transfer_rec.runtime.signals import stage_guard
from transfer_rec.spark.session import spark_session


class TimeLimit(BaseException):  # as Airflow 3's AirflowTaskTimeout
    pass


def time_limit(signum, frame):  # as Airflow's task runner enforces execution_timeout
    raise TimeLimit()


signal.signal(signal.SIGALRM, time_limit)
try:
    with stage_guard("unify"):
        spark = spark_session(SparkConfig(master="local[1]", conf={"spark.driver.memory": "512m"}))
        print("working", flush=True)
        if sys.argv[1] == "limit":
            signal.alarm(3)
        spark.range(0, 10**12).selectExpr("sum(id)").collect()  # far longer than the test waits
    print("finished", flush=True)
except TimeLimit:
    print("timed out", flush=True)
    raise
"""


@pytest.mark.parametrize("stop", ["sigterm", "limit"])
def test_sigterm_or_the_time_limit_during_a_spark_job_stops_the_stage_and_its_jvm(stop):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, stop], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout.readline().strip() == "working", "the Spark session never started"
        time.sleep(2)  # the job is running in the JVM
        family = psutil.Process(child.pid).children(recursive=True)
        assert any("java" in " ".join(p.cmdline()) for p in family), "no Spark JVM under the task"
        if stop == "sigterm":
            child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) != 0, "a stopped stage exits with an error"
        rest = child.stdout.read()
        assert "finished" not in rest
        assert ("timed out" in rest) == (stop == "limit"), "the time limit's own exception ends the stage"
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        if child.poll() is None:
            child.kill()
