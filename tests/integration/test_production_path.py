"""The production stack's parts for real, without containers: Airflow with the CeleryExecutor (a real `airflow celery
worker`), Airflow and MLflow metadata on PostgreSQL, Celery's broker on Redis, MLflow's artifacts on an S3 server
(`weed mini`). It runs the DAG, triggered through the REST API, to success.

Marked `prod` (`make test-prod`, also part of `make test-servers`): about seven minutes on a busy 2-core machine. It
uses the PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) that the project's machines run as services,
in a throwaway database pair and an unused Redis db number, and skips, saying so, only where they do not answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from airflow_server import BIN, airflow_env, stop_group, wait_for, wait_for_login
from ports import free_port_pair

pytestmark = [pytest.mark.servers, pytest.mark.prod]

PG = "postgres@127.0.0.1:5432"
DAG = "/api/v2/dags/transfer_rec"


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def postgres_databases():
    """Two throwaway databases (Airflow's, MLflow's) on the machine's PostgreSQL; dropped afterwards."""
    if not _answers(5432):
        pytest.skip(
            "PostgreSQL does not answer on 127.0.0.1:5432 (trust auth, user postgres): start it as in "
            "../shared/STACK-NOTES.md to run the production-path test"
        )
    import psycopg2

    suffix = uuid.uuid4().hex[:10]
    names = {"airflow": f"transfer_rec_test_af_{suffix}", "mlflow": f"transfer_rec_test_ml_{suffix}"}
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in names.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_db():
    """An empty Redis db number, claimed with a marker key so parallel sessions do not share it; flushed after."""
    if not _answers(6379):
        pytest.skip(
            "Redis does not answer on 127.0.0.1:6379: start it as in ../shared/STACK-NOTES.md to run the "
            "production-path test"
        )
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.dbsize() == 0 and client.set("transfer-rec-test-claim", "1", nx=True, ex=3600):
            try:
                yield number
            finally:
                client.flushdb()
            return
    pytest.fail("no empty Redis db number (1-15) to use")


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"{url} did not answer within {timeout} s: {log.read_text()[-3000:]}")


def test_celery_executor_loads():
    """celery 5.7.0 removed celery.backends.database.retry, which apache-airflow-providers-celery 3.26.0 imports:
    with it no CeleryExecutor loads (the lock pins celery 5.6.3). Loaded by name, as the scheduler does."""
    import importlib

    from airflow.executors.base_executor import BaseExecutor
    from airflow.executors.executor_constants import CELERY_EXECUTOR
    from airflow.executors.executor_loader import ExecutorLoader

    path = ExecutorLoader.executors[CELERY_EXECUTOR]  # the module path the scheduler resolves the name to
    module, _, name = path.rpartition(".")
    executor = getattr(importlib.import_module(module), name)
    assert issubclass(executor, BaseExecutor) and executor.__name__ == "CeleryExecutor"


def test_celery_postgres_redis_s3_run_the_dag(pipeline_env, postgres_databases, redis_db, s3_env, tmp_path):
    env = pipeline_env(schedule={"training": None, "ingest": None, "on_new_data": True})
    s3_endpoint = s3_env.meta.endpoint_url
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        # MLflow tracking server: registry and runs in PostgreSQL, artifacts proxied to S3 (as in docker-compose.yml)
        mlflow_port = free_port_pair()
        # s3_env put the S3 server's endpoint and keys into os.environ
        s3 = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
        procs.append(
            _start(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"postgresql+psycopg2://{PG}/{postgres_databases['mlflow']}",
                    "--artifacts-destination",
                    "s3://lake/mlflow",
                    "--workers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                ],
                {**os.environ, **s3, "PATH": f"{BIN}:{os.environ['PATH']}"},
                logs / "mlflow.log",
            )
        )
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"

        port = free_port_pair()
        home = tmp_path / "airflow"
        af_db = f"postgresql+psycopg2://{PG}/{postgres_databases['airflow']}"
        os_env = airflow_env(
            home,
            port,
            **s3,
            **{
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": af_db,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + af_db.replace("+psycopg2", ""),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "MLFLOW_TRACKING_URI": mlflow_uri,
            },
        )
        migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=os_env, capture_output=True, text=True)
        assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
        for name, cmd in (
            ("api-server", ["api-server", "--port", str(port)]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
            ("worker", ["celery", "worker"]),
        ):
            procs.append(_start([str(BIN / "airflow"), *cmd], os_env, logs / f"{name}.log"))
        _wait_http(f"{mlflow_uri}/health", procs[0], logs / "mlflow.log")
        api = wait_for_login(procs[1], home, f"http://127.0.0.1:{port}", logs / "api-server.log")

        wait_for(api, DAG, lambda body: body.get("dag_id") == "transfer_rec", 240, "dag-processor parsed transfer_rec")
        assert api.call("PATCH", DAG, {"is_paused": False})[0] == 200
        status, body = api.call(
            "POST",
            f"{DAG}/dagRuns",
            {"logical_date": None, "conf": {"run_key": "prod", "epochs_finetune": 2, "gate_override": "promote"}},
        )
        assert status == 200, body
        run = f"{DAG}/dagRuns/{urllib.request.quote(body['dag_run_id'], safe='')}"
        wait_for(api, run, lambda b: b["state"] in ("success", "failed"), 900, "the run finished")
        tis = api.call("GET", f"{run}/taskInstances")[1]["task_instances"]
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
        assert api.call("GET", run)[1]["state"] == "success", (states, (logs / "worker.log").read_text()[-3000:])
    finally:
        for proc in reversed(procs):
            stop_group(proc)

    # every task ran on the Celery worker, through the Redis broker
    worker_log = (logs / "worker.log").read_text()
    assert all(t["queue"] == "default" for t in tis)
    assert "finetune" in worker_log and "celery" in worker_log.lower()
    # the model went to the Postgres-backed registry, its artifacts to S3
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=postgres_databases["mlflow"]) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT name, version FROM model_versions")
            versions = cur.fetchall()
            cur.execute("SELECT name, alias FROM registered_model_aliases")
            aliases = cur.fetchall()
    assert versions == [("transfer_rec-village", 1)] and ("transfer_rec-village", "champion") in aliases
    keys = [
        o["Key"]
        for page in s3_env.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="mlflow/")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]
    summary = json.loads((env["state"] / "reports" / "prod" / "summary.json").read_text())
    assert summary["targets"]["village"]["decision"]["promoted"] is True
