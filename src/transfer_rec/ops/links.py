"""Where an operator clicks from an Airflow task: its MLflow run and its batch's Data Docs (no Airflow import here;
plugins/transfer_rec_plugin.py wires these into the UI as extra links)."""

from __future__ import annotations

import os
from urllib.parse import quote

# XCom keys the DAG's tasks push for the links (plain strings, so the API server reads them without unpickling).
MLFLOW_RUN_KEY = "mlflow_run_id"
MLFLOW_EXPERIMENT_KEY = "mlflow_experiment_id"
DATA_DOCS_KEY = "data_docs_page"
# Where the Airflow plugin's web app is mounted under the API server, and its Data Docs route.
PLUGIN_PREFIX = "/transfer-rec"
DATA_DOCS_PREFIX = f"{PLUGIN_PREFIX}/data-docs"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def data_docs_page(platform: str, batch_id: str) -> str:
    """A batch's Data Docs index, relative to the Data Docs folder (known before validation runs)."""
    return f"{platform}/{batch_id}/index.html"


def mlflow_ui_url() -> str:
    """The MLflow UI operators open: $TRANSFER_REC_MLFLOW_UI_URL, default `make mlflow-ui`'s address."""
    return (os.environ.get("TRANSFER_REC_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI).rstrip("/")


def mlflow_run_url(experiment_id: str | None, run_id: str | None, base: str | None = None) -> str:
    """The MLflow UI page of a run; empty when the task recorded no run (Airflow then shows the link disabled)."""
    if not run_id or not experiment_id:
        return ""
    page = f"{(base or mlflow_ui_url()).rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"
    return page + TRAINING_VIEW


# MLflow 3's UI shows every experiment in its GenAI view (traces, judges, an assistant) unless the page is asked for
# its model-training view: a UI-wide toggle remembered per browser, or this query on the page's address.
TRAINING_VIEW = "?workflowType=machine_learning"


def api_base_url(base_url: str | None, host: str | None, port: int | str | None) -> str:
    """The API server's address as a browser reaches it: [api] base_url when set, else host:port on loopback."""
    if base_url:
        return base_url.rstrip("/")
    host = host if host and host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{port or 8080}"


# Airflow's task log address is built on [api] base_url, and this is its default when it is not set.
AIRFLOW_DEFAULT_BASE = "http://localhost:8080"


def task_log_url(url: str | None, api_base: str) -> str | None:
    """A task's log address as a browser reaches it: Airflow's default base (localhost, which may resolve to ::1,
    where nothing listens) becomes the address the API server listens on (`api_base`, from api_base_url)."""
    if url and url.startswith(AIRFLOW_DEFAULT_BASE + "/"):
        return api_base + url[len(AIRFLOW_DEFAULT_BASE) :]
    return url


def data_docs_url(page: str | None, api_base: str) -> str:
    """A Data Docs page (relative to the Data Docs folder) as served by the plugin; empty without a page."""
    if not page:
        return ""
    if page.startswith("/") or ".." in page.split("/"):
        raise ValueError(f"Data Docs page {page!r} must be a path inside the Data Docs folder")
    return f"{api_base.rstrip('/')}{DATA_DOCS_PREFIX}/{quote(page)}"
