"""MLflow tracking: one parent run per pipeline run, nested runs per stage; the registry's model names."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import mlflow
from mlflow.tracking import MlflowClient

from tasks.state import StateLayout

log = logging.getLogger(__name__)

EXPERIMENT = "transfer_rec"
RUN_KEY_TAG = "transfer_rec.run_key"
STAGE_TAG = "transfer_rec.stage"


def registered_model_name(target: str) -> str:
    """One registered model per target platform."""
    return f"transfer_rec-{target}"


def configure(layout: StateLayout) -> str:
    """Point MLflow at the configured tracking URI and make sure the experiment exists; return the experiment id."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", layout.mlflow_uri())
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        mlflow.set_experiment(EXPERIMENT)
        return experiment.experiment_id
    artifacts = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        artifacts = (layout.mlflow / "artifacts").as_uri()
    try:
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    except mlflow.exceptions.MlflowException:  # created concurrently by another task
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    mlflow.set_experiment(EXPERIMENT)
    return experiment_id


def _find_run(experiment_id: str, filters: str) -> str | None:
    runs = MlflowClient().search_runs([experiment_id], filter_string=filters, max_results=1,
                                      order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def pipeline_run(layout: StateLayout, run_key: str, tags: dict[str, str] | None = None) -> str:
    """The parent run of a pipeline run (found by its run key, created once): every stage nests under it."""
    experiment_id = configure(layout)
    found = _find_run(experiment_id, f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = 'pipeline'")
    if found:
        return found
    run = MlflowClient().create_run(experiment_id, run_name=f"pipeline {run_key}",
                                    tags={RUN_KEY_TAG: run_key, STAGE_TAG: "pipeline", **(tags or {})})
    MlflowClient().set_terminated(run.info.run_id)
    return run.info.run_id


@contextmanager
def stage_run(layout: StateLayout, run_key: str, stage: str, parent_run_id: str,
              tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage; a retry of the same stage reuses (and overwrites) its run instead of adding one."""
    experiment_id = configure(layout)
    existing = _find_run(experiment_id, f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = '{stage}'")
    all_tags = {RUN_KEY_TAG: run_key, STAGE_TAG: stage, "mlflow.parentRunId": parent_run_id, **(tags or {})}
    if existing:
        with mlflow.start_run(run_id=existing) as run:
            mlflow.set_tags(all_tags)
            yield run
        return
    with mlflow.start_run(run_name=stage, experiment_id=experiment_id, tags=all_tags) as run:
        yield run


def log_validation(layout: StateLayout, run_id: str, platform: str, summary: dict[str, Any]) -> None:
    """A platform's validation result on the pipeline run: the full result as an artifact, counts as metrics."""
    configure(layout)
    client = MlflowClient()
    client.log_dict(run_id, summary, f"validation/{platform}.json")
    client.log_metric(run_id, f"validation_{platform}_critical", len(summary["critical"]))
    client.log_metric(run_id, f"validation_{platform}_warnings", len(summary["warnings"]))
    client.set_tag(run_id, f"validation.{platform}", "passed" if summary["success"] else "failed")


def log_epochs(history: list[dict[str, Any]]) -> None:
    """Per-epoch curves: loss, validation NDCG and time, with the epoch as the step."""
    offset = 0
    for entry in history:
        metrics = {f"{entry['stage']}_{k}": float(v) for k, v in entry.items()
                   if k not in ("stage", "epoch") and isinstance(v, (int, float))}
        mlflow.log_metrics(metrics, step=offset + int(entry["epoch"]))
