"""Airflow plugin of transfer-rec: extra links from a task to its MLflow run and from a validate task to its batch's
Data Docs, and the Data Docs folder served under the API server (browsers do not open file:// links from the UI).

The link logic lives in src/transfer_rec/ops/links.py (plain functions, unit-tested); this file only wires it into
Airflow. The links are global: every task shows them, and they are enabled where the task pushed the XComs named in
src/transfer_rec/ops/links.py.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse

from transfer_rec.io.state import StateLayout
from transfer_rec.ops import links


def _xcom(ti_key: Any, key: str) -> str | None:
    """A string XCom of this task instance, read from the metadata DB (the links are resolved by the API server)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=key,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if row is None or row.value is None:
        return None
    value = row.value
    try:
        value = json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError:
        pass
    return str(value)


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run a task logged to (its own run, or the pipeline's parent run)."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return links.mlflow_run_url(_xcom(ti_key, links.MLFLOW_EXPERIMENT_KEY), _xcom(ti_key, links.MLFLOW_RUN_KEY))


class DataDocsLink(BaseOperatorLink):
    """The Great Expectations Data Docs of the batch a validate task checked (also when it failed)."""

    name = "Data Docs"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.configuration import conf

        base = links.api_base_url(
            conf.get("api", "base_url", fallback=None),
            conf.get("api", "host", fallback=None),
            conf.get("api", "port", fallback=None),
        )
        return links.data_docs_url(_xcom(ti_key, links.DATA_DOCS_KEY), base)


data_docs_app = FastAPI(title="transfer-rec Data Docs", docs_url=None, redoc_url=None, openapi_url=None)
# A plugin's app is mounted beside Airflow's API without its login: the pages show validation results (identity
# columns withheld, but user and item ids of failing rows), so they need a signed-in Airflow user, as the UI has
# (its session cookie) and an API client (its bearer token).
signed_in = requires_authenticated()


@data_docs_app.get(
    links.DATA_DOCS_PREFIX.removeprefix(links.PLUGIN_PREFIX) + "/{page:path}", dependencies=[Depends(signed_in)]
)
def data_docs(page: str) -> FileResponse:
    """A file of the Data Docs folder (state folder's data_docs/); nothing outside it."""
    root = StateLayout.from_env().data_docs.resolve()
    path = (root / (page or "index.html")).resolve()
    if path.is_dir():
        path = path / "index.html"
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no Data Docs page {page!r} under {root}")
    return FileResponse(path)


class TransferRecPlugin(AirflowPlugin):
    name = "transfer_rec"
    global_operator_extra_links = [MlflowRunLink(), DataDocsLink()]
    fastapi_apps = [{"app": data_docs_app, "url_prefix": links.PLUGIN_PREFIX, "name": "transfer-rec Data Docs"}]
