"""The stages as the DAGs call them: a run plan and upstream manifests in (as XCom carries them: JSON), a manifest
out. Each resolves config and state from the plan, so a task needs nothing else from Airflow.

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

from transfer_rec.config import PipelineConfig, ScheduleConfig, load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import (
    Candidate,
    Decision,
    Evaluation,
    FeatureSet,
    IngestResult,
    Pretrained,
    Published,
    PulledBatch,
    RunPlan,
    UnifiedVersion,
    ValidatedBatch,
)

log = logging.getLogger(__name__)

Json = dict[str, Any]

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


def plan(
    params: dict[str, Any],
    airflow_run_id: str,
    dag_id: str = "transfer_rec",
    interval: tuple[Any, Any] | None = None,
    logical_date: Any = None,
) -> Json:
    """Resolve config + params into the run plan every task receives; open the MLflow parent run.

    `interval` is the run's data interval (start, end): incremental platforms pull exactly that slice. The parent
    run is tagged with the Airflow run (ids, logical date, interval, link) and keeps the resolved config.
    """
    from transfer_rec.registry import tracking

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
    parent = tracking.pipeline_run(
        layout, run_key, tracking.airflow_tags(dag_id, airflow_run_id, logical_date, interval_iso)
    )
    tracking.log_config(parent, config, overrides)
    experiment_id = tracking.configure(layout)
    log.info(
        "run %s: platforms %s, targets %s, MLflow parent run %s",
        run_key,
        [p.name for p in config.platforms],
        chosen,
        parent,
    )
    return RunPlan(
        run_key=run_key,
        overrides=overrides,
        platforms=[p.name for p in config.platforms],
        targets=chosen,
        parent_run_id=parent,
        experiment_id=experiment_id,
        gate_override=params.get("gate_override", "none"),
        dry_run=bool(params.get("dry_run", False)),
        interval=interval_iso,
    ).to_xcom()


def _iso(moment: Any) -> str:
    return moment if isinstance(moment, str) else moment.isoformat()


def _resolve(run: Json) -> tuple[RunPlan, PipelineConfig, StateLayout]:
    plan_ = RunPlan.model_validate(run)
    return plan_, load_config(overrides=plan_.overrides), StateLayout.from_env()


def pull(run: Json, platform: str) -> Json:
    from transfer_rec.stages import pull as pull_stage

    plan_, config, layout = _resolve(run)
    interval = tuple(datetime.fromisoformat(t) for t in plan_.interval) if plan_.interval else None
    return pull_stage.pull_platform(config.platform(platform), layout, plan_.run_key, interval).to_xcom()


def validate(run: Json, pulled: Json) -> Json:
    """Validate a landed batch; its result goes to the pipeline's MLflow run whether it passes or not."""
    from transfer_rec.registry import tracking
    from transfer_rec.stages import validate as validate_stage

    plan_, config, layout = _resolve(run)
    batch = PulledBatch.model_validate(pulled)
    try:
        validated = validate_stage.validate_batch(batch, config.platform(batch.platform), layout)
    except validate_stage.DataValidationError:
        result = layout.quarantine / batch.platform / batch.batch_id / validate_stage.VALIDATION_FILE
        tracking.log_validation(layout, plan_.parent_run_id, batch.platform, json.loads(result.read_text()))
        raise
    tracking.log_validation(layout, plan_.parent_run_id, batch.platform, validated.validation.to_xcom())
    return validated.to_xcom()


def unify(run: Json, validated: list[Json]) -> Json:
    from transfer_rec.stages import unify as unify_stage

    _, config, layout = _resolve(run)
    return unify_stage.unify([ValidatedBatch.model_validate(v) for v in validated], config, layout).to_xcom()


def build_features(run: Json, unified: Json) -> Json:
    from transfer_rec.registry import tracking
    from transfer_rec.stages import features as features_stage

    plan_, config, layout = _resolve(run)
    unified_ = UnifiedVersion.model_validate(unified)
    features = features_stage.build_features(unified_, config, layout, plan_.run_key)
    tracking.log_lineage(layout, plan_.parent_run_id, unified_.to_xcom(), features.to_xcom())
    return features.to_xcom()


def pretrain(run: Json, features: Json) -> Json:
    from transfer_rec.stages import train as train_stage

    plan_, config, layout = _resolve(run)
    return train_stage.pretrain(
        FeatureSet.model_validate(features), config, layout, plan_.run_key, plan_.parent_run_id
    ).to_xcom()


def finetune(run: Json, target: str, features: Json, pretrained: Json) -> Json:
    from transfer_rec.stages import train as train_stage

    plan_, config, layout = _resolve(run)
    return train_stage.finetune(
        target,
        FeatureSet.model_validate(features),
        Pretrained.model_validate(pretrained),
        config,
        layout,
        plan_.run_key,
        plan_.parent_run_id,
    ).to_xcom()


def evaluate(run: Json, candidate: Json, features: Json) -> Json:
    from transfer_rec.stages import evaluate as evaluate_stage

    plan_, config, layout = _resolve(run)
    return evaluate_stage.evaluate(
        Candidate.model_validate(candidate), FeatureSet.model_validate(features), config, layout, plan_.run_key
    ).to_xcom()


def promote(run: Json, evaluation: Json) -> Json:
    from transfer_rec.stages import promote as promote_stage

    plan_, config, layout = _resolve(run)
    return promote_stage.promote(
        Evaluation.model_validate(evaluation),
        config.gate,
        layout,
        plan_.run_key,
        override=plan_.gate_override,
        dry_run=plan_.dry_run,
    ).to_xcom()


def publish(run: Json, decision: Json, features: Json) -> Json:
    from transfer_rec.stages import publish as publish_stage

    plan_, config, layout = _resolve(run)
    target = Decision.model_validate(decision).target
    if plan_.dry_run:
        return Published(target=target, published=False, reason="dry run").to_xcom()
    return publish_stage.publish(target, FeatureSet.model_validate(features), config, layout, plan_.run_key).to_xcom()


def summarize(
    run: Json,
    validated: list[Json],
    unified: Json,
    features: Json,
    pretrained: Json,
    evaluations: list[Json],
    decisions: list[Json],
    published: list[Json],
) -> Json:
    """The run's report for operators, written to reports/<run_key>/summary.json and reports/latest.json."""
    plan_, _, layout = _resolve(run)
    batches = [ValidatedBatch.model_validate(v) for v in validated]
    unified_, features_ = UnifiedVersion.model_validate(unified), FeatureSet.model_validate(features)
    pretrained_ = Pretrained.model_validate(pretrained)
    decided = {d["target"]: Decision.model_validate(d).to_xcom() for d in decisions}
    out = {p["target"]: Published.model_validate(p).to_xcom() for p in published}
    summary = {
        "run_key": plan_.run_key,
        "mlflow_parent_run_id": plan_.parent_run_id,
        "platforms": {
            b.platform: {
                "role": b.role,
                "rows_pulled": b.interaction_rows(),
                "validation": "passed" if b.validation.success else "failed",
                "validation_warnings": len(b.validation.warnings),
                "rows_unified": unified_.platforms[b.platform]["rows_out"],
                "rows_kept": features_.platforms[b.platform]["interactions"],
            }
            for b in batches
        },
        "pretrain": {"epochs": pretrained_.epochs, "seconds": round(pretrained_.seconds, 1)},
        "targets": {
            e.target: {
                "k": e.k,
                "test_users": e.test_users,
                "metrics": e.metrics,
                "report": e.report,
                "decision": decided[e.target],
                "published": out.get(e.target),
            }
            for e in (Evaluation.model_validate(e) for e in evaluations)
        },
    }
    folder = layout.reports / plan_.run_key
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=str)
    (folder / "summary.json").write_text(text)
    (layout.reports / "latest.json").write_text(text)
    return {"summary": str(folder / "summary.json")}


def ingest_all(config: PipelineConfig, layout: StateLayout, batch_id: str) -> UnifiedVersion:
    """Pull, validate and unify every platform with the stage code the DAG runs, without Airflow (the benchmarks'
    data path); the embedded platforms' exports are filled first when needed."""
    from transfer_rec.io.embedded import export_all
    from transfer_rec.stages.pull import pull_platform
    from transfer_rec.stages.unify import unify as unify_all
    from transfer_rec.stages.validate import validate_batch

    export_all(config)
    validated = [validate_batch(pull_platform(p, layout, batch_id), p, layout) for p in config.platforms]
    return unify_all(validated, config, layout)


# Ingest DAGs (one per platform): land and validate a platform's export, and announce it only when it is new.
ANNOUNCED_FILE = "_announced.json"


def ingest_pull(platform: str, airflow_run_id: str, interval: tuple[Any, Any] | None = None) -> Json:
    """Land a platform's export as batch `ingest_<airflow run>` (an incremental platform: its data interval's slice);
    no MLflow run (nothing is trained here)."""
    from transfer_rec.stages import pull as pull_stage

    config, layout = load_config(), StateLayout.from_env()
    interval = tuple(datetime.fromisoformat(_iso(t)) for t in interval) if interval and None not in interval else None
    return pull_stage.pull_platform(
        config.platform(platform), layout, "ingest_" + run_key_from(airflow_run_id), interval
    ).to_xcom()


def fingerprint(pulled: PulledBatch) -> str:
    """What makes two batches the same data: each table's file hash."""
    return ",".join(f"{f.table}={f.sha256}" for f in sorted(pulled.files, key=lambda f: f.table))


def ingest_validate(pulled: Json) -> Json:
    """Validate a landed batch (failure quarantines it and raises); `new` says whether its data differs from the
    last batch announced for this platform. A repeat of that batch is removed from landing."""
    from transfer_rec.stages import validate as validate_stage

    config, layout = load_config(), StateLayout.from_env()
    batch = PulledBatch.model_validate(pulled)
    platform = batch.platform
    validated = validate_stage.validate_batch(batch, config.platform(platform), layout)
    record = layout.landing / platform / ANNOUNCED_FILE
    last = json.loads(record.read_text()) if record.exists() else {}
    current = fingerprint(batch)
    if last.get("fingerprint") == current:
        shutil.rmtree(batch.batch_dir, ignore_errors=True)
        log.info("platform %s: same data as batch %s, nothing new to announce", platform, last.get("batch_id"))
        return IngestResult(
            platform=platform, batch_id=batch.batch_id, new=False, same_as=last.get("batch_id")
        ).to_xcom()
    record.write_text(json.dumps({"batch_id": batch.batch_id, "fingerprint": current}, indent=2))
    rows = {f.table: f.rows for f in batch.files}
    log.info(
        "platform %s: new validated batch %s (%s): announcing %s",
        platform,
        batch.batch_id,
        rows,
        platform_asset_uri(platform),
    )
    return IngestResult(
        platform=platform, batch_id=batch.batch_id, new=True, rows=rows, warnings=len(validated.validation.warnings)
    ).to_xcom()
