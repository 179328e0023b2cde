"""The pipeline's stage entry points, as the DAG calls them: a run plan (plain dict) plus upstream manifests in,
a manifest out. Each resolves config and state from the plan, so a task needs nothing else from Airflow.

Stage modules are imported by the function that runs them: Airflow parses the DAG file (which imports this module)
in every task process and in the dag-processor, and importing GX, MLflow and torch there took ~25 s per task on a
busy 2-core machine."""

from __future__ import annotations

import json
import logging
import re
import shutil
from datetime import datetime
from typing import Any

from tasks.config import PipelineConfig, ScheduleConfig, load_config
from tasks.state import StateLayout

log = logging.getLogger(__name__)

# DAG params that override config values, and where they go.
PARAM_OVERRIDES = {
    "epochs_finetune": ("training", "epochs_finetune"),
    "strategy": ("training", "strategy"),
    "seed": ("training", "seed"),
}


def platform_names() -> list[str]:
    """Every platform of the registry (read when the DAG file is parsed)."""
    return [p.name for p in load_config().platforms]


def platform_asset_uri(platform: str) -> str:
    """The Airflow Asset a platform's ingest DAG updates when it lands a new validated batch."""
    return f"transfer-rec://platform/{platform}"


def schedule() -> ScheduleConfig:
    """The DAGs' schedules (config `schedule:`, read when the DAG files are parsed)."""
    return load_config().schedule


def run_key_from(airflow_run_id: str) -> str:
    """A file-system and MLflow friendly name from an Airflow run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", airflow_run_id).strip("_")[:100]


def plan(params: dict[str, Any], airflow_run_id: str, dag_id: str = "transfer_rec",
         interval: tuple[Any, Any] | None = None, logical_date: Any = None) -> dict[str, Any]:
    """Resolve config + params into the run plan every task receives; open the MLflow parent run.

    `interval` is the run's data interval (start, end): incremental platforms pull exactly that slice. The parent
    run is tagged with the Airflow run (ids, logical date, interval, link) and keeps the resolved config.
    """
    from tasks import tracking

    overrides: dict[str, Any] = {}
    for param, (section, key) in PARAM_OVERRIDES.items():
        if params.get(param) is not None:
            overrides.setdefault(section, {})[key] = params[param]
    if params.get("seed") is not None:
        overrides.setdefault("features", {})["seed"] = params["seed"]
    config = load_config(overrides=overrides)
    targets = [t.name for t in config.targets]
    chosen = list(params.get("targets") or targets)
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        raise ValueError(f"param targets: {unknown} are not target platforms of the config (targets: {targets})")
    run_key = params.get("run_key") or run_key_from(airflow_run_id)
    layout = StateLayout.from_env()
    interval_iso = [_iso(t) for t in interval] if interval and None not in interval else None
    parent = tracking.pipeline_run(layout, run_key, tracking.airflow_tags(dag_id, airflow_run_id, logical_date,
                                                                          interval_iso))
    tracking.log_config(parent, config, overrides)
    experiment_id = tracking.configure(layout)
    log.info("run %s: platforms %s, targets %s, MLflow parent run %s", run_key,
             [p.name for p in config.platforms], chosen, parent)
    return {
        "run_key": run_key,
        "overrides": overrides,
        "platforms": [p.name for p in config.platforms],
        "targets": chosen,
        "parent_run_id": parent,
        "experiment_id": experiment_id,
        "gate_override": params.get("gate_override", "none"),
        "dry_run": bool(params.get("dry_run", False)),
        "interval": interval_iso,
    }


def _iso(moment: Any) -> str:
    return moment if isinstance(moment, str) else moment.isoformat()


def _resolve(run: dict[str, Any]) -> tuple[PipelineConfig, StateLayout]:
    return load_config(overrides=run["overrides"]), StateLayout.from_env()


def pull(run: dict[str, Any], platform: str) -> dict[str, Any]:
    from tasks import pull as pull_stage

    config, layout = _resolve(run)
    interval = tuple(datetime.fromisoformat(t) for t in run["interval"]) if run.get("interval") else None
    return pull_stage.pull_platform(config.platform(platform), layout, run["run_key"], interval)


def validate(run: dict[str, Any], pulled: dict[str, Any]) -> dict[str, Any]:
    """Validate a landed batch; its result goes to the pipeline's MLflow run whether it passes or not."""
    from tasks import tracking
    from tasks import validate as validate_stage

    config, layout = _resolve(run)
    platform = pulled["platform"]
    try:
        validated = validate_stage.validate_batch(pulled, config.platform(platform), layout)
    except validate_stage.DataValidationError:
        result = layout.quarantine / platform / pulled["batch_id"] / validate_stage.VALIDATION_FILE
        tracking.log_validation(layout, run["parent_run_id"], platform, json.loads(result.read_text()))
        raise
    tracking.log_validation(layout, run["parent_run_id"], platform, validated["validation"])
    return validated


def unify(run: dict[str, Any], validated: list[dict[str, Any]]) -> dict[str, Any]:
    from tasks import unify as unify_stage

    config, layout = _resolve(run)
    return unify_stage.unify(validated, config, layout)


def build_features(run: dict[str, Any], unified: dict[str, Any]) -> dict[str, Any]:
    from tasks import features as features_stage
    from tasks import tracking

    config, layout = _resolve(run)
    features = features_stage.build_features(unified, config, layout, run["run_key"])
    tracking.log_lineage(layout, run["parent_run_id"], unified, features)
    return features


def pretrain(run: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    from tasks import train as train_stage

    config, layout = _resolve(run)
    return train_stage.pretrain(features, config, layout, run["run_key"], run["parent_run_id"])


def finetune(run: dict[str, Any], target: str, features: dict[str, Any], pretrained: dict[str, Any]) -> dict[str, Any]:
    from tasks import train as train_stage

    config, layout = _resolve(run)
    return train_stage.finetune(target, features, pretrained, config, layout, run["run_key"], run["parent_run_id"])


def evaluate(run: dict[str, Any], candidate: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    from tasks import evaluate as evaluate_stage

    config, layout = _resolve(run)
    report = evaluate_stage.evaluate(candidate["target"], features, candidate, config, layout, run["run_key"])
    return {**report, "candidate": candidate}


def promote(run: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    from tasks import promote as promote_stage

    config, layout = _resolve(run)
    return promote_stage.promote(evaluation, evaluation["candidate"], config.gate, layout, run["run_key"],
                                 override=run["gate_override"], dry_run=run["dry_run"])


def publish(run: dict[str, Any], decision: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    from tasks import publish as publish_stage

    config, layout = _resolve(run)
    if run["dry_run"]:
        return {"target": decision["target"], "published": False, "reason": "dry run"}
    return publish_stage.publish(decision["target"], features, config, layout, run["run_key"])


def summarize(run: dict[str, Any], validated: list[dict[str, Any]], unified: dict[str, Any],
              features: dict[str, Any], pretrained: dict[str, Any], evaluations: list[dict[str, Any]],
              decisions: list[dict[str, Any]], published: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's report for operators, written to reports/<run_key>/summary.json and reports/latest.json."""
    _, layout = _resolve(run)
    summary = {
        "run_key": run["run_key"],
        "mlflow_parent_run_id": run["parent_run_id"],
        "platforms": {
            v["platform"]: {
                "role": v["role"],
                "rows_pulled": sum(f["rows"] for f in v["files"] if f["table"] == "interactions"),
                "validation": "passed" if v["validation"]["success"] else "failed",
                "validation_warnings": len(v["validation"]["warnings"]),
                "rows_unified": unified["platforms"][v["platform"]]["rows_out"],
                "rows_kept": features["platforms"][v["platform"]]["interactions"],
            }
            for v in validated
        },
        "pretrain": {"epochs": pretrained["epochs"], "seconds": round(pretrained["seconds"], 1)},
        "targets": {
            e["target"]: {
                "k": e["k"],
                "test_users": e["test_users"],
                "metrics": e["metrics"],
                "decision": next(d for d in decisions if d["target"] == e["target"]),
                "published": next((p for p in published if p["target"] == e["target"]), None),
            }
            for e in evaluations
        },
    }
    folder = layout.reports / run["run_key"]
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=str)
    (folder / "summary.json").write_text(text)
    (layout.reports / "latest.json").write_text(text)
    return {"summary": str(folder / "summary.json")}


# Ingest DAGs (one per platform): land and validate a platform's export, and announce it only when it is new.
ANNOUNCED_FILE = "_announced.json"


def ingest_pull(platform: str, airflow_run_id: str, interval: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Land a platform's export as batch `ingest_<airflow run>` (an incremental platform: its data interval's slice);
    no MLflow run (nothing is trained here)."""
    from tasks import pull as pull_stage

    config, layout = load_config(), StateLayout.from_env()
    interval = tuple(datetime.fromisoformat(_iso(t)) for t in interval) if interval and None not in interval else None
    return pull_stage.pull_platform(config.platform(platform), layout, "ingest_" + run_key_from(airflow_run_id),
                                    interval)


def fingerprint(pulled: dict[str, Any]) -> str:
    """What makes two batches the same data: each table's file hash."""
    return ",".join(f"{f['table']}={f['sha256']}" for f in sorted(pulled["files"], key=lambda f: f["table"]))


def ingest_validate(pulled: dict[str, Any]) -> dict[str, Any]:
    """Validate a landed batch (failure quarantines it and raises); `new` says whether its data differs from the
    last batch announced for this platform. A repeat of that batch is removed from landing."""
    from tasks import validate as validate_stage

    config, layout = load_config(), StateLayout.from_env()
    platform = pulled["platform"]
    validated = validate_stage.validate_batch(pulled, config.platform(platform), layout)
    record = layout.landing / platform / ANNOUNCED_FILE
    last = json.loads(record.read_text()) if record.exists() else {}
    current = fingerprint(pulled)
    if last.get("fingerprint") == current:
        shutil.rmtree(pulled["batch_dir"], ignore_errors=True)
        log.info("platform %s: same data as batch %s, nothing new to announce", platform, last.get("batch_id"))
        return {"platform": platform, "batch_id": pulled["batch_id"], "new": False, "same_as": last.get("batch_id")}
    record.write_text(json.dumps({"batch_id": pulled["batch_id"], "fingerprint": current}, indent=2))
    rows = {f["table"]: f["rows"] for f in pulled["files"]}
    log.info("platform %s: new validated batch %s (%s): announcing %s", platform, pulled["batch_id"], rows,
             platform_asset_uri(platform))
    return {"platform": platform, "batch_id": pulled["batch_id"], "new": True, "rows": rows,
            "warnings": len(validated["validation"]["warnings"])}
