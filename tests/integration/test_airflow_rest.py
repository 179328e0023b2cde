"""Airflow for real: `airflow standalone` (scheduler, dag-processor, API server; LocalExecutor on SQLite) runs the DAG
triggered through the REST API with params, rejects a mistyped param, and resolves the plugin's extra links."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import mlflow
import pytest
from airflow_server import wait_for

# Starts a real Airflow (~4-6 min on a busy 2-core machine): `make test-servers`, not `make test`.
pytestmark = pytest.mark.servers

DAG = "/api/v2/dags/transfer_rec"


def test_rest_trigger_with_params_runs_to_success_and_links_resolve(airflow_api):
    api, env = airflow_api
    wait_for(api, DAG, lambda body: body.get("dag_id") == "transfer_rec", 180, "dag-processor parsed transfer_rec")
    status, body = api.call("PATCH", DAG, {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body

    # a mistyped param is refused before any run exists, and the answer names the param
    status, body = api.call("POST", f"{DAG}/dagRuns", {"logical_date": None, "conf": {"epochs_finetune": "many"}})
    assert status == 400, body
    assert "epochs_finetune" in json.dumps(body) and "integer" in json.dumps(body), body
    status, body = api.call("POST", f"{DAG}/dagRuns", {"logical_date": None, "conf": {"strategy": "sideways"}})
    assert status == 400 and "strategy" in json.dumps(body), body
    assert api.call("GET", f"{DAG}/dagRuns")[1]["total_entries"] == 0

    conf = {"run_key": "rest", "epochs_finetune": 2, "strategy": "freeze_encoder", "targets": ["village"]}
    status, body = api.call("POST", f"{DAG}/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 200, body
    run_id = body["dag_run_id"]
    run = f"{DAG}/dagRuns/{urllib.request.quote(run_id, safe='')}"
    try:
        wait_for(api, run, lambda b: b["state"] in ("success", "failed"), 600, f"run {run_id} finished")
    finally:
        tis = api.call("GET", f"{run}/taskInstances")[1].get("task_instances", [])
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert api.call("GET", run)[1]["state"] == "success", (states, env["log"].read_text()[-3000:])

    # mapped tasks are named by their platform
    named = {(t["task_id"], t["rendered_map_index"]) for t in tis if t["map_index"] >= 0}
    assert {("finetune", "village"), ("validate", "campus"), ("validate", "village")} <= named

    # the params reached the training code
    # this test's MLflow DB: earlier in-process tests may have set another tracking URI on the mlflow module
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    summary = json.loads((env["state"] / "reports" / "rest" / "summary.json").read_text())
    status, body = api.call("GET", f"{run}/taskInstances/finetune/links?map_index=0")
    assert status == 200, body
    mlflow_url = body["extra_links"]["MLflow run"]
    finetune_run = client.get_run(mlflow_url.rsplit("/runs/", 1)[1].split("?")[0])  # the link opens a view of it
    assert finetune_run.data.tags["transfer_rec.stage"] == "finetune village"
    assert finetune_run.data.params["strategy"] == "freeze_encoder"
    assert finetune_run.data.params["epochs_finetune"] == "2"
    assert finetune_run.data.tags["mlflow.parentRunId"] == summary["mlflow_parent_run_id"]
    assert mlflow_url.startswith("http://127.0.0.1:5000/#/experiments/")

    # the validate task's Data Docs link is an http URL the API server serves (plugin web app)
    status, body = api.call("GET", f"{run}/taskInstances/validate/links?map_index=1")
    docs_url = body["extra_links"]["Data Docs"]
    assert docs_url == f"{api.base}/transfer-rec/data-docs/village/rest/index.html", body
    # only for a signed-in Airflow user (the UI's session cookie, an API client's token): the pages name failing rows
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(docs_url, timeout=30)
    assert refused.value.code in (401, 403)
    signed = urllib.request.Request(docs_url, headers={"Cookie": f"_token={api.token}"})
    with urllib.request.urlopen(signed, timeout=30) as response:
        page = response.read().decode()
    # GX's own Data Docs index of this platform's batch, listing the batch's validation runs
    assert "Data Docs created by Great Expectations" in page and "village.rest." in page and "Success" in page
