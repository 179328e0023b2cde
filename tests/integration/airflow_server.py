"""A real Airflow on loopback for integration tests: `airflow standalone` (scheduler, dag-processor, triggerer and
API server, LocalExecutor on SQLite), as `make airflow-ui` runs it, plus a small REST client with JWT auth, and the
MLflow UI (`mlflow server`, as `make mlflow-ui` runs it) for the extra links to open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ports import free_port_pair

from transfer_rec.runtime.processes import stop_group

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# written by the simple auth manager (Airflow 3's default) under AIRFLOW_HOME when the API server starts
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def airflow_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """The Makefile's Airflow settings, with this test's home and API port (log servers on free ports too: the
    defaults 8793/8794 may be taken by another Airflow on the machine)."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port_pair()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port_pair()),
        # the dag-processor picks the DAG file up at once, the scheduler looks for work often
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        **extra,
    }


class AirflowApi:
    """/api/v2 with a bearer token from the simple auth manager's /auth/token."""

    def __init__(self, base: str, username: str, password: str):
        self.base = base
        status, body = self.call("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        assert status == 201, (status, body)
        self.token = body["access_token"]

    def call(self, method: str, path: str, payload: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"raw": raw.decode(errors="replace")}


def start_standalone(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`airflow standalone` in its own process group (stop it with transfer_rec.cli.stop_group)."""
    return subprocess.Popen(
        [str(BIN / "airflow"), "standalone"],
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def admin_login(home: Path) -> tuple[str, str]:
    """The simple auth manager's generated admin (username, password), as `make airflow-ui` prints it."""
    return next(iter(json.loads((home / PASSWORDS_FILE).read_text()).items()))


def wait_for_login(proc: subprocess.Popen, home: Path, base: str, log_path: Path, timeout: float = 240) -> AirflowApi:
    """Wait until the API server answers and the generated admin password exists; log in as admin."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airflow exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        if (home / PASSWORDS_FILE).exists():
            try:
                with urllib.request.urlopen(base + "/api/v2/monitor/health", timeout=5):
                    return AirflowApi(base, *admin_login(home))
            except (OSError, ValueError, StopIteration):
                pass
        time.sleep(2)
    raise AssertionError(f"Airflow did not answer on {base} within {timeout} s: {log_path.read_text()[-3000:]}")


def start_mlflow_ui(tracking_uri: str, port: int, folder: Path) -> subprocess.Popen:
    """`mlflow server` with one worker on loopback, over the test's tracking DB (log: folder/mlflow-ui.log); in its
    own process group (stop it with transfer_rec.cli.stop_group). Artifacts the server itself would store go to folder.
    Its job runner (a huey consumer per job type, 7 processes) is off: the UI needs none of it."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--artifacts-destination",
        str(folder / "mlartifacts"),
    ]
    return subprocess.Popen(
        cmd,
        cwd=folder,
        env=env,
        stdout=open(folder / "mlflow-ui.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_http(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 180) -> None:
    """Wait until url answers 200 (a server starting); fail with its log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} did not answer within {timeout} s: {log_path.read_text()[-3000:]}")


def wait_for(api: AirflowApi, path: str, done, timeout: float, what: str) -> dict:
    """Poll a GET endpoint until `done(body)`; fail with the last answer."""
    deadline = time.monotonic() + timeout
    status, body = 0, {}
    while time.monotonic() < deadline:
        status, body = api.call("GET", path)
        if status == 200 and done(body):
            return body
        time.sleep(3)
    raise AssertionError(f"{what}: not reached within {timeout} s (last answer {status}: {str(body)[:1000]})")


__all__ = [
    "AirflowApi",
    "admin_login",
    "airflow_env",
    "start_mlflow_ui",
    "start_standalone",
    "stop_group",
    "wait_for",
    "wait_for_http",
    "wait_for_login",
]
