"""MLflow tracking: one parent run per pipeline run, nested runs per stage."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
from mlflow.tracking import MlflowClient

from transfer_rec.io.state import StateLayout

log = logging.getLogger(__name__)

EXPERIMENT = "transfer_rec"
RUN_KEY_TAG = "transfer_rec.run_key"
STAGE_TAG = "transfer_rec.stage"
# the report of a run that got as far as summarize; the run's outcome then comes from it
SUMMARY_TAG = "transfer_rec.summary"
# A platform's files named one by one (lineage tags, model card); an incremental platform's landed partitions, one a
# day, are named by their count and digest instead (every hash is in provenance.json)
FILES_LISTED = 8
# The MLflow UI opens an experiment without this tag in its GenAI view (traces, token dashboards); this one is a
# training record: runs, metrics, models.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def configure(layout: StateLayout) -> str:
    """Point MLflow at the configured tracking URI and make sure the experiment exists; return the experiment id."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", layout.mlflow_uri())
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            artifacts = (layout.mlflow / "artifacts").as_uri()
        try:
            client.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
        except mlflow.exceptions.MlflowException:  # created concurrently by another task
            pass
        experiment = client.get_experiment_by_name(EXPERIMENT)
    for key, value in EXPERIMENT_TAGS.items():  # an experiment made before the tags existed gets them once
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    mlflow.set_experiment(EXPERIMENT)
    return experiment.experiment_id


def _find_run(experiment_id: str, filters: str) -> str | None:
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=filters, max_results=1, order_by=["attributes.start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def pipeline_run(layout: StateLayout, run_key: str, tags: dict[str, str] | None = None) -> str:
    """The parent run of a pipeline run (found by its run key, created once): every stage nests under it."""
    experiment_id = configure(layout)
    found = _find_run(experiment_id, f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = 'pipeline'")
    if found:
        for key, value in {**(tags or {}), **_note(tags or {})}.items():  # a retried plan refreshes the tags
            MlflowClient().set_tag(found, key, value)
        # a run key used again reopens its run, which the earlier run ended (and reported: this run reports anew)
        if SUMMARY_TAG in MlflowClient().get_run(found).data.tags:
            MlflowClient().delete_tag(found, SUMMARY_TAG)
        MlflowClient().update_run(found, status="RUNNING")
        return found
    # open while the DAG run runs: end_pipeline_run closes it when the run ends (finished, skipped or failed)
    run = MlflowClient().create_run(
        experiment_id,
        run_name=f"pipeline {run_key}",
        tags={RUN_KEY_TAG: run_key, STAGE_TAG: "pipeline", **(tags or {}), **_note(tags or {})},
    )
    return run.info.run_id


def _note(tags: dict[str, str]) -> dict[str, str]:
    """The run's description (rendered as Markdown on its page): a clickable link to the Airflow run."""
    url = tags.get("airflow.url")
    if not url:
        return {}
    return {"mlflow.note.content": f"Airflow DAG run: [{tags.get('airflow.run_id', url)}]({url})"}


def end_pipeline_run(run_id: str, failed: bool = False, outcome: str | None = None, summary: str | None = None) -> None:
    """Close the parent run with the DAG run's end: FINISHED, or FAILED when a task failed for good. `summary`: the
    run's report, which then names each target's outcome: a failure reported later (a killed task's callback runs
    late, from the scheduler) marks the run FAILED but keeps that outcome."""
    client = MlflowClient()
    if summary:
        client.set_tag(run_id, SUMMARY_TAG, summary)
    if outcome and (summary or SUMMARY_TAG not in client.get_run(run_id).data.tags):
        client.set_tag(run_id, "transfer_rec.outcome", outcome[:500])
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


@contextmanager
def stage_run(
    layout: StateLayout,
    run_key: str,
    stage: str,
    parent_run_id: str,
    tags: dict[str, str] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage; a retry of the same stage reuses (and overwrites) its run instead of adding one.
    `on_run` is told the run's id as soon as it exists, so a stage that then fails can still be traced to it."""
    experiment_id = configure(layout)
    existing = _find_run(experiment_id, f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = '{stage}'")
    all_tags = {RUN_KEY_TAG: run_key, STAGE_TAG: stage, "mlflow.parentRunId": parent_run_id, **(tags or {})}
    opened = (
        mlflow.start_run(run_id=existing)
        if existing
        else mlflow.start_run(run_name=stage, experiment_id=experiment_id, tags=all_tags)
    )
    with opened as run:
        if existing:
            mlflow.set_tags(all_tags)
        if on_run is not None:
            try:
                on_run(run.info.run_id)
            except Exception:  # a link for the UI; the stage must not fail for want of it
                log.warning("could not record stage %s's MLflow run for its link", stage, exc_info=True)
        yield run


def log_dict(run_id: str, data: dict[str, Any], path: str) -> None:
    """A JSON artifact on a finished run."""
    MlflowClient().log_dict(run_id, data, path)


def log_text(run_id: str, text: str, path: str) -> None:
    """A text artifact on a finished run."""
    MlflowClient().log_text(run_id, text, path)


def readable(value: float) -> float:
    """A metric value to four significant digits: what the CIs of these metrics can tell apart, and what a person
    reads in the MLflow UI (not 16 digits); the evaluation report keeps full precision."""
    return float(f"{value:.4g}")


def log_validation(layout: StateLayout, run_id: str, platform: str, summary: dict[str, Any]) -> None:
    """A platform's validation result on the pipeline run: the full result as an artifact, counts as metrics."""
    configure(layout)
    client = MlflowClient()
    client.log_dict(run_id, summary, f"validation/{platform}.json")
    client.log_metric(run_id, f"validation_{platform}_critical", len(summary["critical"]))
    client.log_metric(run_id, f"validation_{platform}_warnings", len(summary["warnings"]))
    client.set_tag(run_id, f"validation.{platform}", "passed" if summary["success"] else "failed")


# Stages whose entries are epochs of training (curves); the others are trials of a setting chosen on valid.
CURVE_STAGES = ("pretrain", "finetune")


def log_epochs(history: list[dict[str, Any]]) -> None:
    """Per-epoch curves as metrics (loss, validation NDCG and time, the epoch as the step); the settings tried on
    valid (blend, item-item, sources, kernel) as one table, `selection/trials.json`: a tried setting is not a
    metric."""
    offset = 0
    trials = []
    for entry in history:
        if entry["stage"] not in CURVE_STAGES:
            trials.append(entry)
            continue
        metrics = {
            f"{entry['stage']}_{k}": readable(float(v))
            for k, v in entry.items()
            if k not in ("stage", "epoch") and isinstance(v, (int, float))
        }
        mlflow.log_metrics(metrics, step=offset + int(entry["epoch"]))
    if trials:
        import pandas as pd

        mlflow.log_table(pd.DataFrame(trials), "selection/trials.json")


DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"


def airflow_tags(
    dag_id: str, run_id: str, logical_date: str | None = None, interval: list[str] | None = None
) -> dict[str, str]:
    """Tags that tie the pipeline's parent run to its Airflow DAG run, with a link back (base from AIRFLOW_BASE_URL).

    The logical date falls back to the one Airflow exports to the task's environment for this very run."""
    if logical_date is None and os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") == run_id:
        logical_date = os.environ.get("AIRFLOW_CTX_LOGICAL_DATE") or None
    base = os.environ.get("AIRFLOW_BASE_URL", DEFAULT_AIRFLOW_URL).rstrip("/")
    tags = {
        "airflow.dag_id": dag_id,
        "airflow.run_id": run_id,
        "airflow.url": f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}",
    }
    if logical_date:
        tags["airflow.logical_date"] = str(logical_date)
    if interval:
        tags["airflow.data_interval_start"], tags["airflow.data_interval_end"] = (str(t) for t in interval)
    return tags


def param_text(value: Any) -> str:
    """A param's value as MLflow keeps it (lists joined by commas: `targets` ['a', 'b'] reads a, b)."""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def pipeline_params(layout: StateLayout, run_key: str) -> dict[str, str] | None:
    """The trigger params (`param.*`) logged on the parent run of a run key; None when no run has used the key."""
    experiment_id = configure(layout)
    found = _find_run(experiment_id, f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = 'pipeline'")
    if not found:
        return None
    return {k: v for k, v in MlflowClient().get_run(found).data.params.items() if k.startswith("param.")}


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Params on a run. MLflow refuses to change a param, so on a run that already has one the first value stays and
    the change is logged, instead of failing the run (`plan` refuses a run key used again with other params)."""
    client = MlflowClient()
    logged = client.get_run(run_id).data.params
    for key, value in params.items():
        text = param_text(value)
        if key not in logged:
            client.log_param(run_id, key, text)
        elif logged[key] != text:
            log.warning(
                "run %s keeps param %s = %r (this plan asked %r): MLflow params cannot change",
                run_id,
                key,
                logged[key],
                text,
            )


def log_config(run_id: str, config: Any, overrides: dict[str, Any]) -> None:
    """The resolved configuration (YAML + this run's overrides) and the overrides alone, as artifacts."""
    client = MlflowClient()
    client.log_dict(run_id, config.model_dump(mode="json"), "config/pipeline.resolved.json")
    client.log_dict(run_id, overrides, "config/overrides.json")


def _source_of(location: str):
    from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource

    return S3ArtifactDatasetSource(location) if location.startswith("s3://") else LocalArtifactDatasetSource(location)


def lineage_inputs(landing: Path, unified: dict[str, Any], features: dict[str, Any] | None = None) -> list[Any]:
    """One MLflow dataset input per platform: the pulled files' sha256 (digest and tags), row counts through
    unification and features, and the validation result read from the landed batch."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for platform, hashes in sorted(unified.get("hashes", {}).items()):
        counts = unified.get("platforms", {}).get(platform, {})
        kept = (features or {}).get("platforms", {}).get(platform, {})
        batch = unified.get("batches", {}).get(platform, "")
        batch_dir = Path(landing) / platform / str(batch)
        digest = hashlib.sha256("".join(f"{f}:{h}" for f, h in sorted(hashes.items())).encode()).hexdigest()[:16]
        dataset = MetaDataset(_source_of(str(batch_dir)), name=platform, digest=digest)
        tags = {
            "platform": platform,
            "role": kept.get("role", ""),
            "batch": str(batch),
            # an incremental platform's partitions (one a day): their count, and the dataset's digest covers them
            **(
                {f"sha256.{f}": h for f, h in hashes.items()}
                if len(hashes) <= FILES_LISTED
                else {"files": str(len(hashes))}
            ),
            **{f"rows.{k}": str(v) for k, v in counts.items() if isinstance(v, (int, float))},
            **{f"features.{k}": str(v) for k, v in kept.items() if isinstance(v, (int, float))},
        }
        validation = batch_dir / "validation.json"
        if validation.exists():
            summary = json.loads(validation.read_text())
            tags.update(
                {
                    "validation": "passed" if summary.get("success") else "failed",
                    "validation.critical": str(len(summary.get("critical", []))),
                    "validation.warnings": str(len(summary.get("warnings", []))),
                }
            )
        tags["mlflow.data.context"] = kept.get("role") or "platform"
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v[:500]) for k, v in tags.items()]))
    return inputs


def log_lineage(
    layout: StateLayout, run_id: str, unified: dict[str, Any], features: dict[str, Any] | None = None
) -> None:
    """Record each platform's data as a dataset input of the run (Datasets column and run page in the MLflow UI)."""
    configure(layout)
    inputs = lineage_inputs(layout.landing, unified, features)
    if inputs:
        MlflowClient().log_inputs(run_id, datasets=inputs)
