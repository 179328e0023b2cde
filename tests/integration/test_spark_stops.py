"""A Spark stage stops when told to: SIGTERM to a task's process while Spark works ends the stage (the guard every
stage runs inside) and the Spark JVM it started, instead of leaving a driver running with nobody to answer it."""

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
from transfer_rec.config import SparkConfig
from transfer_rec.runtime.signals import stage_guard
from transfer_rec.spark.session import spark_session

with stage_guard("unify"):
    spark = spark_session(SparkConfig(master="local[1]", conf={"spark.driver.memory": "512m"}))
    print("working", flush=True)
    spark.range(0, 10**12).selectExpr("sum(id)").collect()  # far longer than the test waits
print("finished", flush=True)
"""


def test_sigterm_during_a_spark_job_stops_the_stage_and_its_jvm():
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout.readline().strip() == "working", "the Spark session never started"
        time.sleep(3)  # the job is running in the JVM
        family = psutil.Process(child.pid).children(recursive=True)
        assert any("java" in " ".join(p.cmdline()) for p in family), "no Spark JVM under the task"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) != 0, "a stopped stage exits with an error"
        assert "finished" not in child.stdout.read()
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        if child.poll() is None:
            child.kill()
