"""The stages as the DAGs call them: a run plan and upstream manifests in (as XCom carries them: JSON), a manifest
out. Each resolves config and state from the plan, so a task needs nothing else from Airflow.

Stage modules are imported by the function that runs them: Airflow parses the DAG file (which imports this module)
in every task process and in the dag-processor, and importing GX, MLflow and torch there took ~25 s per task on a
busy 2-core machine."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from transfer_rec.config import PipelineConfig, ScheduleConfig, load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import write_text_atomic
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
from transfer_rec.ops.alerts import FAILURES_FILE
from transfer_rec.runtime.signals import stage_guard
from transfer_rec.runtime.workers import configured_workers
from transfer_rec.schema.unified import RATING_SCALE

log = logging.getLogger(__name__)

Json = dict[str, Any]

# DAG params that override config values, and where they go.
PARAM_OVERRIDES = {
    "epochs_finetune": ("training", "epochs_finetune"),
    "strategy": ("training", "strategy"),
    "seed": ("training", "seed"),
}
# Every param a run takes (the DAG declares exactly these). Airflow adds a conf key the DAG does not declare to the
# run's params without a word, so a misspelt one ("dryrun") would be ignored and, say, a dry run would promote.
RUN_PARAMS = ("run_key", "targets", *PARAM_OVERRIDES, "gate_override", "dry_run", "force")


# Errors that a retry would meet again (bad params or config, refused data, a file that is not what it claims): the
# DAG fails such a task at once. Anything else (I/O, network, database, a worker past its deadline) keeps its retries.
DETERMINISTIC: tuple[type[BaseException], ...] = (ValueError, LookupError, TypeError)

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    """Run a stage inside stage_guard: SIGTERM stops it (workers killed, partial output removed) and a heartbeat
    line reaches the task log every minute while it runs; it forks at most the config's runtime.workers."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with stage_guard(fn.__name__), configured_workers(load_config().runtime.workers):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def stage_timeout_minutes(stage: str) -> int:
    """A stage's time limit (config `runtime.stage_timeout_minutes`, read when the DAG file is parsed)."""
    return load_config().runtime.stage_timeout(stage)


def platform_names() -> list[str]:
    """Every platform of the registry (read when the DAG file is parsed)."""
    return [p.name for p in load_config().platforms]


def target_names() -> list[str]:
    """Every target platform of the registry (read when the DAG file is parsed: the trigger form's choices)."""
    return [p.name for p in load_config().targets]


def platform_asset_uri(platform: str) -> str:
    """The Airflow Asset a platform's ingest DAG updates when it lands a new validated batch."""
    return f"transfer-rec://platform/{platform}"


def schedule() -> ScheduleConfig:
    """The DAGs' schedules (config `schedule:`, read when the DAG files are parsed)."""
    return load_config().schedule


def schedule_label(config: ScheduleConfig) -> str:
    """The training schedule in a few words, for the DAG list (whose schedule column shows only the asset part of a
    schedule that is time OR assets): "schedule: @weekly UTC or new data"."""
    parts = [f"{config.training} UTC"] if config.training else []
    if config.on_new_data:
        parts.append("new data")
    return "schedule: " + (" or ".join(parts) or "manual only")


def run_key_from(airflow_run_id: str) -> str:
    """A file-system and MLflow friendly name from an Airflow run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", airflow_run_id).strip("_")[:100]


# what the state keeps beside the run keys' folders (reports/latest.json, reports/failures.log): a run key of that
# name would turn the file into a folder, or a run's report into the summary
RESERVED_RUN_KEYS = ("latest.json", FAILURES_FILE)


def check_run_key(run_key: str) -> str:
    """The run key names folders that stages replace whole (landing/<platform>/<key>, features/<key>, ...): "." or
    ".." would name the folder above and a leading dot the stages' own hidden folders (.versions, staging files),
    so a key is letters, digits and _.- (up to 100), not starting with a dot, and none of RESERVED_RUN_KEYS."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", run_key) or run_key in RESERVED_RUN_KEYS:
        raise ValueError(
            f"param run_key: {run_key!r} is not a run key "
            "(letters, digits and _.-, 1 to 100 characters, not starting with a dot, "
            f"not {' or '.join(RESERVED_RUN_KEYS)})"
        )
    return run_key


def plan(
    params: dict[str, Any],
    airflow_run_id: str,
    dag_id: str = "transfer_rec",
    interval: tuple[Any, Any] | None = None,
) -> Json:
    """Resolve config + params into the run plan every task receives; open the MLflow parent run.

    `interval` is the run's data interval (start, end): incremental platforms pull exactly that slice. The parent
    run is tagged with the Airflow run (ids, logical date, interval, link) and keeps the resolved config.
    """
    from transfer_rec.registry import tracking

    strange = sorted(set(params) - set(RUN_PARAMS))
    if strange:
        raise ValueError(
            f"params {strange}: not params of this pipeline (it takes {', '.join(RUN_PARAMS)}); "
            "a misspelt param would be ignored, so the run is refused"
        )
    overrides: dict[str, Any] = {}
    for param, (section, key) in PARAM_OVERRIDES.items():
        if params.get(param) is not None:
            overrides.setdefault(section, {})[key] = params[param]
    if params.get("seed") is not None:
        overrides.setdefault("features", {})["seed"] = params["seed"]
    config = load_config(overrides=overrides)
    targets = [t.name for t in config.targets]
    chosen = list(dict.fromkeys(params.get("targets") or targets))  # a target named twice is trained once
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        raise ValueError(f"param targets: {unknown} are not target platforms of the config (targets: {targets})")
    if params.get("dry_run") and params.get("gate_override", "none") not in (None, "none"):
        raise ValueError(
            f"params dry_run and gate_override={params['gate_override']}: a dry run never promotes; "
            "leave gate_override at none"
        )
    if params.get("gate_override", "none") not in (None, "none") and not params.get("targets") and len(targets) > 1:
        # one field set by mistake would override the gate of every target at once
        raise ValueError(
            f"param gate_override={params['gate_override']}: name the targets it applies to in param targets "
            f"(of {targets})"
        )
    run_key = check_run_key(params.get("run_key") or run_key_from(airflow_run_id))
    layout = StateLayout.from_env()
    given = {f"param.{k}": v for k, v in sorted(params.items()) if v not in (None, [], "")}
    earlier = tracking.pipeline_params(layout, run_key)
    if earlier is not None:
        # a run key names one run's outputs: its stage runs are reopened, and MLflow keeps their first params, so
        # other training settings would fail training; the same ones resume the run (force, gate_override and
        # dry_run change no stage run's params)
        now = {k: tracking.param_text(v) for k, v in given.items()}

        def trained(text: str | None) -> str:  # the targets a run trains, in any order, all when none is named
            named = {t.strip() for t in (text or "").split(",") if t.strip()}
            return ", ".join(sorted(named or targets))

        # targets: which stage runs there are (another family's pretrain, other fine-tunes)
        earlier = {**earlier, "param.targets": trained(earlier.get("param.targets"))}
        now["param.targets"] = trained(now.get("param.targets"))
        shaping = {f"param.{name}" for name in PARAM_OVERRIDES} | {"param.targets"}
        differ = sorted(k for k in shaping & (set(earlier) | set(now)) if earlier.get(k) != now.get(k))
        if differ:
            changes = ", ".join(
                f"{k.removeprefix('param.')} {earlier.get(k, '(empty)')} -> {now.get(k, '(empty)')}" for k in differ
            )
            raise ValueError(
                f"param run_key {run_key}: an earlier run used this key with other training params ({changes}); "
                "give a new run_key (or leave it empty), or the same params to resume that run"
            )
    interval_iso = [_iso(t) for t in interval] if interval and None not in interval else None
    parent = tracking.pipeline_run(
        layout, run_key, tracking.airflow_tags(dag_id, airflow_run_id, interval=interval_iso)
    )
    try:
        tracking.log_config(parent, config, overrides)
        # the trigger's params as the run's params (those left empty fall back to the config, logged as an artifact)
        tracking.log_params(parent, given)
        experiment_id = tracking.configure(layout)
    except Exception as error:
        # the failure callback closes the parent run of a plan that exists; this one failed before it did (a retry
        # of plan reopens the run). The store that failed may fail this too: the original error is what is raised.
        try:
            run_failed({"parent_run_id": parent}, f"plan: {error}")
        except Exception:
            log.exception("could not mark the MLflow parent run failed")
        raise
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
        force=bool(params.get("force", False)),
        interval=interval_iso,
    ).to_xcom()


def _iso(moment: Any) -> str:
    return moment if isinstance(moment, str) else moment.isoformat()


def _resolve(run: Json) -> tuple[RunPlan, PipelineConfig, StateLayout]:
    plan_ = RunPlan.model_validate(run)
    return plan_, load_config(overrides=plan_.overrides), StateLayout.from_env()


@_guarded
def pull(run: Json, platform: str) -> Json:
    from transfer_rec.stages import pull as pull_stage

    plan_, config, layout = _resolve(run)
    interval = tuple(datetime.fromisoformat(t) for t in plan_.interval) if plan_.interval else None
    return pull_stage.pull_platform(config.platform(platform), layout, plan_.run_key, interval).to_xcom()


def engine_stage(config: PipelineConfig, name: str) -> ModuleType:
    """The module that runs stage `name` (unify or features) on the config's engine: same functions, same manifests."""
    return importlib.import_module(f"transfer_rec.{'spark' if config.engine == 'spark' else 'stages'}.{name}")


def raw_engine(config: PipelineConfig) -> Any:
    """What the validate stage reads and checks landed files with: None (pandas) unless the config says Spark."""
    if config.engine != "spark":
        return None
    from transfer_rec.spark.session import spark_session
    from transfer_rec.spark.validate import SparkRaw

    return SparkRaw(spark_session(config.spark))


@_guarded
def validate(run: Json, pulled: Json) -> Json:
    """Validate a landed batch; its result goes to the pipeline's MLflow run whether it passes or not."""
    from transfer_rec.registry import tracking
    from transfer_rec.stages import validate as validate_stage

    plan_, config, layout = _resolve(run)
    batch = PulledBatch.model_validate(pulled)
    try:
        validated = validate_stage.validate_batch(
            batch, config.platform(batch.platform), layout, engine=raw_engine(config)
        )
    except validate_stage.DataValidationError:
        result = layout.quarantine / batch.platform / batch.batch_id / validate_stage.VALIDATION_FILE
        try:
            tracking.log_validation(layout, plan_.parent_run_id, batch.platform, json.loads(result.read_text()))
        except Exception:  # the refusal is what the task ends with (its one failure line names platform and rule)
            log.exception(
                "platform %s: the refused batch's validation result could not be logged to MLflow", batch.platform
            )
        raise
    tracking.log_validation(layout, plan_.parent_run_id, batch.platform, validated.validation.to_xcom())
    return validated.to_xcom()


@_guarded
def unify(run: Json, validated: list[Json], data_docs: Callable[[str], None] | None = None) -> Json:
    """The unified version; `data_docs` is told its Data Docs page before its tables are validated."""
    _, config, layout = _resolve(run)
    batches = [ValidatedBatch.model_validate(v) for v in validated]
    return engine_stage(config, "unify").unify(batches, config, layout, data_docs=data_docs).to_xcom()


@_guarded
def build_features(run: Json, unified: Json) -> Json:
    from transfer_rec.registry import tracking

    plan_, config, layout = _resolve(run)
    unified_ = UnifiedVersion.model_validate(unified)
    features = engine_stage(config, "features").build_features(unified_, config, layout, plan_.run_key)
    tracking.log_lineage(layout, plan_.parent_run_id, unified_.to_xcom(), features.to_xcom())
    return features.to_xcom()


@_guarded
def pretrain(run: Json, features: Json, on_run: Callable[[str], None] | None = None) -> Json:
    """The pretrained families; `on_run` is told each family's MLflow run id as soon as the run exists."""
    from transfer_rec.stages import train as train_stage

    plan_, config, layout = _resolve(run)
    return train_stage.pretrain(
        FeatureSet.model_validate(features), config, layout, plan_.run_key, plan_.parent_run_id, plan_.targets, on_run
    ).to_xcom()


@_guarded
def finetune(
    run: Json, target: str, features: Json, pretrained: Json, on_run: Callable[[str], None] | None = None
) -> Json:
    """One target's candidate; `on_run` is told its MLflow run id as soon as the run exists."""
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
        on_run,
    ).to_xcom()


@_guarded
def evaluate(run: Json, candidate: Json, features: Json) -> Json:
    from transfer_rec.stages import evaluate as evaluate_stage

    plan_, config, layout = _resolve(run)
    return evaluate_stage.evaluate(
        Candidate.model_validate(candidate), FeatureSet.model_validate(features), config, layout, plan_.run_key
    ).to_xcom()


@_guarded
def promote(run: Json, evaluation: Json) -> Json:
    from transfer_rec.stages import promote as promote_stage

    plan_, config, layout = _resolve(run)
    evaluation_ = Evaluation.model_validate(evaluation)
    hashes = json.loads(open(evaluation_.report).read()).get("data", {}).get("hashes", {})
    return promote_stage.promote(
        evaluation_,
        config.gate.for_target(evaluation_.target),
        layout,
        plan_.run_key,
        override=plan_.gate_override,
        dry_run=plan_.dry_run,
        inputs=inputs_fingerprint(hashes, config),
    ).to_xcom()


def inputs_fingerprint(hashes: dict[str, dict[str, str]], config: PipelineConfig) -> str:
    """sha256 of what a model is trained from: every pulled file's sha256 per platform and the resolved config
    (its schedules and the machine's settings aside: time limits, worker processes, torch threads and device change
    when and how fast runs happen, not what they produce beyond float rounding; `force` retrains anyway)."""
    settings = config.model_dump(mode="json", exclude={"schedule": True, "runtime": {"stage_timeout_minutes"}})
    # as the defaults are: a champion's fingerprint from before machine settings were left out stays its own
    settings["runtime"] = type(config.runtime)().model_dump(mode="json", exclude={"stage_timeout_minutes"})
    inputs: dict[str, Any] = {"data": hashes, "config": settings}
    # unify puts a platform on another rating scale onto RATING_SCALE: a model trained on its raw ratings (the same
    # files and config) was not trained on these inputs; platforms already on it keep their fingerprints
    rescaled = {p.name: list(RATING_SCALE) for p in config.platforms if tuple(p.rating_scale) != RATING_SCALE}
    if rescaled:
        inputs["unified_ratings"] = rescaled
    payload = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def outcome_line(target: str, decision: Json | None, failed_at: str | None) -> str:
    """A target's outcome on the pipeline's MLflow run. Promoted, then failed at publish: the champion alias moved
    (serving answers with it) though the published lists are still the earlier champion's, so both are said."""
    promoted = bool((decision or {}).get("promoted"))
    if failed_at:
        crowned = f"promoted v{decision['version']}, then " if promoted and decision else ""
        return f"{target}: {crowned}failed at {failed_at}"
    return f"{target}: {'promoted' if promoted else 'not promoted'}"


@_guarded
def check_inputs(run: Json, unified: Json) -> Json:
    """Whether this run would train on exactly what every target's champion, or its last rejected candidate (the
    challenger), was trained on (same data files, same config): training is deterministic, so the same inputs give
    the same model, and each unchanged run would add a version of it. A gate override retrains (it asks for a
    verdict of its own), and so does param `force`. {"changed": bool, "reason": str}. An unchanged run writes its
    summary (the reason) so that `transfer-rec run` and the reports say why nothing was trained."""
    from transfer_rec.ops.alerts import record_failure
    from transfer_rec.registry.models import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS,
        ROLLED_BACK_TAG,
        alias_version,
        registered_model_name,
    )
    from transfer_rec.stages.promote import INPUTS_TAG, WITHDRAWN_OF_TAG, WITHDRAWN_TAG, withdrawn_alert

    plan_, config, layout = _resolve(run)
    fingerprint = inputs_fingerprint(UnifiedVersion.model_validate(unified).hashes, config)
    from transfer_rec.registry import tracking
    from transfer_rec.registry.models import run_key_versions

    tracking.configure(layout)
    for t in plan_.targets:
        # a run key names one run's outputs: its retried fine-tune finds the version it registered, so on other
        # inputs it would hand on that earlier model as this run's candidate
        for version in run_key_versions(t, plan_.run_key):
            trained_on = (version.tags or {}).get(INPUTS_TAG)
            if trained_on and trained_on != fingerprint:
                raise ValueError(
                    f"param run_key {plan_.run_key}: it registered {t} v{version.version}, trained on other data or "
                    "config than this run has; give a new run_key (or leave it empty; a cleared run keeps its key: "
                    "trigger a new run instead)"
                )
    if plan_.force:
        return {"changed": True, "reason": "param force: retrain whatever the inputs"}
    if plan_.gate_override != "none":  # the operator asks for a verdict of their own: there must be a candidate
        return {"changed": True, "reason": f"param gate_override={plan_.gate_override}: retrain to apply it"}
    trained: dict[str, str] = {}  # target -> the version trained on these inputs, named for the reason
    alerts: list[str] = []  # what an unchanged run must not stay quiet about
    for t in plan_.targets:
        champion = alias_version(t, CHAMPION)
        for alias in (CHAMPION, CHALLENGER, PREVIOUS):
            version = champion if alias == CHAMPION else alias_version(t, alias)
            if version is None or (version.tags or {}).get(INPUTS_TAG) != fingerprint:
                continue
            if alias == PREVIOUS:
                # a version an operator rolled back from: retraining on its inputs would rebuild it and the gate
                # would crown it again over the restored champion, undoing the rollback
                rolled_back = champion is not None and (champion.tags or {}).get(ROLLED_BACK_TAG) == str(
                    version.version
                )
                if not rolled_back:
                    continue
                trained[t] = f"{t} v{version.version} (rolled back from by the operator)"
            else:
                trained[t] = f"{t} v{version.version}" + ("" if alias == CHAMPION else " (challenger, not promoted)")
                withdrawn, of = (version.tags or {}).get(WITHDRAWN_TAG), (version.tags or {}).get(WITHDRAWN_OF_TAG)
                # while the champion it could not replace still serves (not after a rollback, say)
                if alias == CHALLENGER and withdrawn and champion is not None and of == str(champion.version):
                    alerts.append(withdrawn_alert(registered_model_name(t), of, withdrawn))
            break
    differ = [t for t in plan_.targets if t not in trained]
    if differ:
        return {"changed": True, "reason": f"new inputs for {', '.join(differ)}"}
    reason = (
        f"no change: the data files (sha256) and the config are those "
        f"{', '.join(trained.values())} {'were' if len(trained) > 1 else 'was'} trained on; nothing to retrain "
        "(trigger with force=true to retrain anyway)"
    )
    reason += "".join(f"; {alert}" for alert in alerts)
    _write_summary(layout, plan_.run_key, {"run_key": plan_.run_key, "skipped": reason})
    tracking.end_pipeline_run(plan_.parent_run_id, outcome=reason)
    # last: a retry after a registry error above would write them twice
    for alert in alerts:  # the same inputs rebuild the same rejected candidate: the run says so again instead
        record_failure(alert, layout)
    log.info(reason)
    return {"changed": False, "reason": reason}


def run_failed(run: Json | None, error: BaseException | str | None) -> None:
    """A task of the run failed for good (no retry left): its MLflow parent run ends FAILED, naming the error. A
    failure before the plan existed has no parent run to close."""
    if not run or not run.get("parent_run_id"):
        return
    from transfer_rec.ops.alerts import error_text
    from transfer_rec.registry import tracking

    tracking.configure(StateLayout.from_env())
    tracking.end_pipeline_run(run["parent_run_id"], failed=True, outcome=f"failed: {error_text(error)}")


def _write_summary(layout: StateLayout, run_key: str, summary: Json) -> str:
    folder = layout.reports / run_key
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=str)
    # whole or not at all: `transfer-rec summary` and dashboards read these while the next run writes them
    write_text_atomic(folder / "summary.json", text)
    write_text_atomic(layout.reports / "latest.json", text)
    return str(folder / "summary.json")


@_guarded
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
    candidates: list[Json],
    evaluations: list[Json],
    decisions: list[Json],
    published: list[Json],
) -> Json:
    """The run's report for operators, written to reports/<run_key>/summary.json and reports/latest.json. The
    per-target lists hold the targets that got that far: a planned target missing from one is reported with the
    stage it failed at, and the MLflow parent run then ends FAILED."""
    plan_, _, layout = _resolve(run)
    batches = [ValidatedBatch.model_validate(v) for v in validated]
    unified_, features_ = UnifiedVersion.model_validate(unified), FeatureSet.model_validate(features)
    pretrained_ = Pretrained.model_validate(pretrained)
    evaluated = {e.target: e for e in (Evaluation.model_validate(e) for e in evaluations)}
    decided = {d["target"]: Decision.model_validate(d).to_xcom() for d in decisions}
    out = {p["target"]: Published.model_validate(p).to_xcom() for p in published}
    reached = {
        "finetune": {Candidate.model_validate(c).target for c in candidates},
        "evaluate": set(evaluated),
        "promote": set(decided),
        "publish": set(out),
    }
    failed_at = {t: next((s for s, done in reached.items() if t not in done), None) for t in plan_.targets}
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
                "linked_users": unified_.platforms[b.platform].get("linked_users", 0),
                "users_linked_to_a_source": unified_.platforms[b.platform].get("users_linked_to_a_source"),
            }
            for b in batches
        },
        "pretrain": [
            {"sources": f.sources, "targets": f.targets, "epochs": f.epochs, "seconds": round(f.seconds, 1)}
            for f in pretrained_.families
        ],
        "targets": {
            target: {"failed_at": failed_at[target]}
            if target not in evaluated
            else {
                "k": (e := evaluated[target]).k,
                "test_users": e.test_users,
                "metrics": e.metrics,
                "report": e.report,
                "decision": decided.get(target),
                "published": out.get(target),
                **({"failed_at": failed_at[target]} if failed_at[target] else {}),
            }
            for target in plan_.targets
        },
    }
    path = _write_summary(layout, plan_.run_key, summary)
    from transfer_rec.registry import tracking

    outcomes = [outcome_line(t, decided.get(t), failed_at[t]) for t in plan_.targets]
    tracking.end_pipeline_run(
        plan_.parent_run_id, failed=any(failed_at.values()), outcome="; ".join(outcomes), summary=path
    )
    return {"summary": path}


# Ingest DAGs (one per platform): land and validate a platform's export, and announce it only when it is new.
ANNOUNCED_FILE = "_announced.json"


@_guarded
def ingest_pull(platform: str, airflow_run_id: str, interval: tuple[Any, Any] | None = None) -> Json:
    """Land a platform's export as batch `ingest_<airflow run>` (an incremental platform: its data interval's slice);
    no MLflow run (nothing is trained here)."""
    from transfer_rec.stages import pull as pull_stage

    config, layout = load_config(), StateLayout.from_env()
    interval = tuple(datetime.fromisoformat(_iso(t)) for t in interval) if interval and None not in interval else None
    if interval is None and config.platform(platform).pull.mode == "incremental":
        # a training run without an interval reads the landed partitions; an ingest run would only re-land the rest
        raise ValueError(
            f"platform {platform}: an ingest run of an incremental platform lands the days of its data interval, "
            "and this run has none (a manual run without a logical date): trigger it with a logical date"
        )
    return pull_stage.pull_platform(
        config.platform(platform), layout, "ingest_" + run_key_from(airflow_run_id), interval
    ).to_xcom()


def fingerprint(pulled: PulledBatch) -> str:
    """What makes two batches the same data: each table's file hash."""
    return ",".join(f"{f.table}={f.sha256}" for f in sorted(pulled.files, key=lambda f: f.table))


def _champions_trained_on(batch: PulledBatch, config: PipelineConfig) -> str | None:
    """'champion <model> v<n>, ...' when every target's champion was trained on exactly these files of the platform
    (its data tags), else None: announcing such a batch would only queue a retrain on the same data."""
    from mlflow.exceptions import MlflowException

    from transfer_rec.registry import tracking
    from transfer_rec.registry.models import alias_version
    from transfer_rec.stages.promote import platform_digest

    named = []
    try:
        tracking.configure(StateLayout.from_env())
        champions = [alias_version(target.name) for target in config.targets]
    except MlflowException as error:  # validate is not retried: announced, at worst a retrain on the same data
        log.warning("registry unreadable (%s): the batch is announced as new", str(error).splitlines()[0][:200])
        return None
    for version in champions:
        tags = (version.tags or {}) if version is not None else {}
        digest = platform_digest({f.file: f.sha256 for f in batch.files})
        if version is None or tags.get(f"data.{batch.platform}.sha256") != digest:
            return None
        named.append(f"champion {version.name} v{version.version}")
    return ", ".join(named) or None


def _announced(record: Path) -> dict[str, Any]:
    """The last batch announced for a platform; {} when none is recorded, or the record cannot be read (then the
    next new-looking batch is announced: a retrain too many, never a batch kept from training)."""
    if not record.exists():
        return {}
    try:
        last = json.loads(record.read_text())
    except (OSError, ValueError) as error:
        log.warning("%s unreadable (%s): taken as no batch announced", record, error)
        return {}
    return last if isinstance(last, dict) else {}


@_guarded
def ingest_validate(pulled: Json) -> Json:
    """Validate a landed batch (failure quarantines it and raises); `new` says whether its data differs from the
    last batch announced for this platform. A snapshot that repeats that batch is removed from landing."""
    from transfer_rec.stages import validate as validate_stage

    config, layout = load_config(), StateLayout.from_env()
    batch = PulledBatch.model_validate(pulled)
    platform = batch.platform
    validated = validate_stage.validate_batch(batch, config.platform(platform), layout, engine=raw_engine(config))
    record = layout.landing / platform / ANNOUNCED_FILE
    last = _announced(record)
    current = fingerprint(batch)
    if last.get("batch_id") == batch.batch_id and last.get("announced", True):
        # recorded by an earlier attempt of this very task: its announcement (an Asset event) goes out only when the
        # task succeeds, which that attempt may not have (the API server slow, the time limit): announce it again
        same_as = _champions_trained_on(batch, config)
    elif last.get("fingerprint") == current:
        same_as = last.get("batch_id")
    else:
        same_as = _champions_trained_on(batch, config)
    if same_as:
        # a snapshot's repeat is a copy of data landed before; an incremental batch is its interval's partitions,
        # which training reads from landing (it replaces the interval's earlier batch once a unify reads it): it stays
        if batch.mode == "snapshot":
            shutil.rmtree(batch.batch_dir, ignore_errors=True)
        log.info("platform %s: same data as %s, nothing new to announce", platform, same_as)
        kept = same_as if batch.mode == "snapshot" else batch.batch_id
        # announced: False, so that this task cleared later is no retry of an announcement (an incremental repeat
        # is recorded under its own id)
        write_text_atomic(record, json.dumps({"batch_id": kept, "fingerprint": current, "announced": False}, indent=2))
        return IngestResult(platform=platform, batch_id=batch.batch_id, new=False, same_as=same_as).to_xcom()
    write_text_atomic(
        record, json.dumps({"batch_id": batch.batch_id, "fingerprint": current, "announced": True}, indent=2)
    )
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
