"""The champion served over HTTP by `mlflow models serve` (as `make serve` does), on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from inline import run_inline
from ports import free_port_pair

from transfer_rec.runtime.processes import stop_group


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def served(pipeline_env, tmp_path):
    pipeline_env()
    run_inline("http", gate_override="promote")
    port = free_port_pair()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "models",
            "serve",
            "-m",
            "models:/transfer_rec-village@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        # the server starts `uvicorn` by name: the venv's bin must be on PATH
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not start: {(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        stop_group(proc)


def test_known_and_new_users_over_http_and_bad_requests_are_4xx(served):
    import mlflow

    bundle = mlflow.pyfunc.load_model("models:/transfer_rec-village@champion").unwrap_python_model().bundle
    user = next(iter(bundle.histories))
    history = bundle.histories[user][:2]
    # the signature types `history` as a list of strings: known users send an empty one
    status, body = post(
        f"{served}/invocations",
        {"dataframe_records": [{"user_id": user, "history": []}, {"history": history + ["no-such-course"]}]},
    )
    assert status == 200, body
    rows = body["predictions"]
    assert [r["request"] for r in rows].count(0) == 10 and [r["request"] for r in rows].count(1) == 10
    assert [r["unknown_items"] for r in rows if r["request"] == 1][0] == ["no-such-course"]

    status, body = post(f"{served}/invocations", {"dataframe_records": [{"user_id": "nobody", "history": []}]})
    assert 400 <= status < 500 and "nothing to recommend from" in json.dumps(body)
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": ["no-such-course"]}]})
    assert 400 <= status < 500 and "is known to the model" in json.dumps(body)
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": 42}]})
    assert 400 <= status < 500, body
    # a new user with a profile only (k = 0), and a profile value the model does not know
    profile = {f: values[0] for f, values in bundle.profile_vocabulary.items()}
    status, body = post(f"{served}/invocations", {"dataframe_records": [{"history": [], **profile}]})
    assert status == 200 and len(body["predictions"]) == 10, body
    status, body = post(
        f"{served}/invocations", {"dataframe_records": [{"history": [], **profile, "occupation": "astronaut"}]}
    )
    assert 400 <= status < 500 and "unknown occupation 'astronaut'" in json.dumps(body), body
    status, body = post(
        f"{served}/invocations", {"dataframe_records": [{"user_id": user, "history": []}], "params": {"k": 0}}
    )
    assert 400 <= status < 500 and "between 1 and 1000" in json.dumps(body)
    # the server is still healthy after bad requests
    status, _ = post(
        f"{served}/invocations", {"dataframe_records": [{"user_id": user, "history": []}], "params": {"k": 3}}
    )
    assert status == 200
