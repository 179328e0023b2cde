"""Extra links (tasks/links.py) and the Airflow plugin that wires them: URLs, the plugin's load, its Data Docs route."""

from __future__ import annotations

import pytest

from transfer_rec.ops import links


def test_mlflow_run_url_uses_the_configured_ui(monkeypatch):
    monkeypatch.delenv("TRANSFER_REC_MLFLOW_UI_URL", raising=False)
    assert (
        links.mlflow_run_url("3", "abc")
        == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    monkeypatch.setenv("TRANSFER_REC_MLFLOW_UI_URL", "https://mlflow.example.com/")
    assert (
        links.mlflow_run_url("3", "abc")
        == "https://mlflow.example.com/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert links.mlflow_run_url("3", None) == "" and links.mlflow_run_url(None, "abc") == ""


def test_data_docs_url_stays_inside_the_docs_folder():
    base = links.api_base_url(None, "0.0.0.0", 8793)
    assert base == "http://127.0.0.1:8793"
    assert links.api_base_url("https://airflow.example.com/", "127.0.0.1", 8080) == "https://airflow.example.com"
    assert (
        links.data_docs_url("ml-100k/run 1/index.html", base)
        == "http://127.0.0.1:8793/transfer-rec/data-docs/ml-100k/run%201/index.html"
    )
    assert links.data_docs_url(None, base) == ""
    for bad in ("/etc/passwd", "ml-100k/../../secret"):
        with pytest.raises(ValueError, match="inside the Data Docs folder"):
            links.data_docs_url(bad, base)


def test_plugin_loads_with_its_links_and_web_app():
    from airflow import plugins_manager

    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    assert "transfer_rec" in info, plugins_manager.get_import_errors()
    names = {link.name for link in plugins_manager.get_global_operator_extra_links()}
    assert {"MLflow run", "Data Docs"} <= names
    apps, _ = plugins_manager.get_fastapi_plugins()
    assert any(app["url_prefix"] == links.PLUGIN_PREFIX for app in apps)


def test_plugin_serves_data_docs_and_nothing_outside(tmp_path, monkeypatch):
    from airflow import plugins_manager
    from fastapi.testclient import TestClient

    monkeypatch.setenv("TRANSFER_REC_STATE_DIR", str(tmp_path / "var"))
    page = tmp_path / "var" / "data_docs" / "village" / "b1" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<h1>Validation of village</h1>")
    (tmp_path / "var" / "secret.txt").write_text("no")
    from airflow.api_fastapi.core_api.security import get_user

    app = next(a["app"] for a in plugins_manager.get_fastapi_plugins()[0] if a["url_prefix"] == links.PLUGIN_PREFIX)
    client = TestClient(app)
    prefix = links.DATA_DOCS_PREFIX.removeprefix(links.PLUGIN_PREFIX)
    # the pages name failing rows' ids: nobody who has not signed in to Airflow reads them
    assert client.get(f"{prefix}/village/b1/index.html").status_code == 401
    monkeypatch.setitem(app.dependency_overrides, get_user, lambda: "a signed-in user")
    response = client.get(f"{prefix}/village/b1/index.html")
    assert response.status_code == 200 and "Validation of village" in response.text
    assert client.get(f"{prefix}/village/b1/").status_code == 200
    # encoded: the client would collapse a plain "/../" before sending, so only this reaches the handler
    assert client.get(f"{prefix}/%2E%2E/secret.txt").status_code == 404
    assert client.get(f"{prefix}/village/nothing.html").status_code == 404


def test_a_task_log_link_on_airflows_default_base_points_where_the_api_server_listens():
    from transfer_rec.ops.links import task_log_url

    url = "http://localhost:8080/dags/transfer_rec/runs/manual__1/tasks/unify?try_number=1"
    assert task_log_url(url, "http://127.0.0.1:8080") == (
        "http://127.0.0.1:8080/dags/transfer_rec/runs/manual__1/tasks/unify?try_number=1"
    )
    behind_proxy = "https://airflow.example.org/dags/transfer_rec/runs/r/tasks/unify"
    assert task_log_url(behind_proxy, "https://airflow.example.org") == behind_proxy
    assert task_log_url(None, "http://127.0.0.1:8080") is None
