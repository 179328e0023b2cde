"""
### transfer_rec: transfer learning from the source platform to every target platform

Stages (each task calls one stage of `transfer_rec.stages`; XCom carries typed manifests, never data or models):

1. **plan**: resolve the config (`config/pipeline.yaml` + this run's params), open the MLflow parent run.
2. **pull** (one per platform): land each export file as it came, with sha256 and row counts.
3. **validate** (one per platform): Great Expectations suites on the raw batch; a failure quarantines the batch.
4. **unify**: map native schemas onto one schema; written atomically to `lake/unified/current`. Then
   **check_inputs** skips the rest when the data files and config are those the champions were trained on
   (param `force` retrains anyway).
5. **build_features**: implicit feedback, k-core filter, seeded train/valid/test split per target.
6. **pretrain**: the recommender learns from the source platform.
7. **finetune** (one per target): adapt to the target with early stopping on its validation split.
8. **evaluate** (one per target): candidate vs champion vs target-only vs EASE vs popularity on held-out users.
9. **promote** (one per target): register the candidate; alias `champion` only if the gate passes.
10. **publish** (one per target): the champion's top-K for every target user, as Parquet.
11. **summarize**: one report of the run for operators (`make run` prints it), also when some targets failed.
12. **outcome**: fails the DAG run when any task failed (skipped otherwise).

Steps 7-10 of one target form the task group `per_target`, mapped over the targets: a target that fails stops no
other.

Schedule (config `schedule:`): weekly by default, and also whenever a platform's ingest DAG
(`transfer_rec_ingest_<platform>`) announces a new validated batch through its Asset `transfer-rec://platform/<name>`.
Every task links to its MLflow run, and each validate task to its batch's Data Docs (extra links of the
`transfer_rec` plugin).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from airflow.sdk import (
    Asset,
    AssetAny,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
    TriggerRule,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, AirflowTaskTimeout

from transfer_rec.ops import alerts, links, task_log
from transfer_rec.stages import pipeline

log = logging.getLogger(__name__)


def _on_failure(context: dict[str, Any]) -> None:
    """One line for the operator: what failed, on which platform, and where the log is; the run's MLflow parent run
    ends FAILED (a task's failure callback runs once its retries are spent)."""
    ti = context["ti"]
    alerts.record_failure(
        alerts.failure_line(
            ti.dag_id,
            ti.task_id,
            context.get("label") or str(getattr(ti, "map_index", "")),
            ti.run_id,
            getattr(ti, "try_number", 0),
            context.get("exception"),
            links.task_log_url(
                getattr(ti, "log_url", None),
                links.api_base_url(
                    conf.get("api", "base_url", fallback=None),
                    conf.get("api", "host", fallback=None),
                    conf.get("api", "port", fallback=None),
                ),
            ),
        )
    )
    if ti.dag_id == "transfer_rec" and ti.task_id != "plan":
        try:
            pipeline.run_failed(ti.xcom_pull(task_ids="plan"), context.get("exception"))
        except Exception:  # the alert above is what must not be lost; a tracking outage only leaves the run open
            log.exception("could not mark the MLflow parent run failed")


DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=pipeline.stage_timeout_minutes("default")),
    "on_failure_callback": _on_failure,
}
# Deterministic stages: a retry would fail the same way, so fail fast.
NO_RETRY = {"retries": 0}


def fail_fast(fn, timeout_is_final: bool = False):
    """A deterministic error (bad params or config, refused data) fails the task at once: a retry would fail alike.
    So does a training stage past its time limit (`timeout_is_final`): training is deterministic, and each retry
    would run the same fit on the same data for the whole limit again while every later run waits."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except pipeline.DETERMINISTIC as error:
            raise AirflowFailException(f"{type(error).__name__}: {error}") from error
        except AirflowTaskTimeout as error:
            if not timeout_is_final:
                raise
            raise AirflowFailException(
                f"{fn.__name__} ran past its time limit: not retried (it would train the same model on the same data "
                "again); raise runtime.stage_timeout_minutes in the config, or give it a faster machine"
            ) from error

    run.timeout_is_final = timeout_is_final
    return run


def with_log_file(fn):
    """Under `transfer-rec run` (in-process tasks), the task's log also goes where the UI reads it."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with task_log.captured(_log_file() if task_log.wanted() else None, fn.__name__):
            return fn(*args, **kwargs)

    return run


def _log_file() -> Path:
    """This task instance's log file as the UI finds it ([logging] base_log_folder and log_filename_template)."""
    ti = get_current_context()["ti"]
    template = jinja2.Template(conf.get("logging", "log_filename_template"))
    return Path(conf.get("logging", "base_log_folder")) / template.render(ti=ti, try_number=ti.try_number)


def stage(timeout_is_final: bool = False, **kwargs: Any):
    """A stage task: its time limit from config (`runtime.stage_timeout_minutes`), deterministic errors not retried
    (nor a time limit reached, where `timeout_is_final`)."""

    def wrap(fn):
        limit = timedelta(minutes=pipeline.stage_timeout_minutes(fn.__name__))
        run = fail_fast(with_log_file(fn), timeout_is_final)
        return task(execution_timeout=limit, doc_md=fn.__doc__, **kwargs)(run)

    return wrap


def per_platform(timeout_is_final: bool = False, **kwargs: Any):
    """A mapped stage: each instance is named by its platform in the UI and documented by the function's docstring
    (mapped tasks do not pick docstrings up by themselves)."""
    return stage(timeout_is_final, map_index_template="{{ label }}", **kwargs)


def _label(name: str) -> None:
    """Name a mapped task instance in the UI (rendered by map_index_template)."""
    get_current_context()["label"] = name


def _mlflow_link(run: dict[str, Any], run_id: str | None = None) -> None:
    """Record the MLflow run this task logs to (default: the pipeline's parent run) for the plugin's extra link.
    Plans made before links existed carry no experiment id: such a task just has no link."""
    if not run.get("experiment_id"):
        return
    ti = get_current_context()["ti"]
    ti.xcom_push(key=links.MLFLOW_EXPERIMENT_KEY, value=run["experiment_id"])
    ti.xcom_push(key=links.MLFLOW_RUN_KEY, value=run_id or run["parent_run_id"])


def _data_docs_link(page: str) -> None:
    """Record a Data Docs page (relative to the Data Docs folder) before validating, so the link works on a failed
    validation too."""
    get_current_context()["ti"].xcom_push(key=links.DATA_DOCS_KEY, value=page)


def _each(outputs: Any) -> list[dict[str, Any]]:
    """A per-target task's outputs as a list. Read from outside the mapped group, Airflow gives the instances that
    succeeded: a list, one bare value when only one did, None when none did."""
    if outputs is None:
        return []
    return [outputs] if isinstance(outputs, dict) else list(outputs)


def platform_asset(platform: str) -> Asset:
    """Updated by a platform's ingest DAG when it lands a new validated batch."""
    return Asset(pipeline.platform_asset_uri(platform))


def cron(expression: str | None) -> CronDataIntervalTimetable | str | None:
    """A cron schedule (UTC) whose run covers the period since the previous one: an incremental platform pulls the
    days of [previous run, this run). Airflow 3's default for a cron string gives a run an empty interval at its
    own time, which would pull the day just starting."""
    if not expression or expression in ("@once", "@continuous"):  # Airflow's presets that are no cron
        return expression
    return CronDataIntervalTimetable(expression, timezone="UTC")


def training_schedule():
    """Config `schedule:`: the periodic retrain (cron, UTC), OR any platform's new validated batch, or both."""
    config = pipeline.schedule()
    timetable = cron(config.training)
    if not config.on_new_data:
        return timetable
    assets = AssetAny(*(platform_asset(p) for p in pipeline.platform_names()))
    return AssetOrTimeSchedule(timetable=timetable, assets=assets) if timetable else assets


TARGETS = pipeline.target_names()


@dag(
    dag_id="transfer_rec",
    schedule=training_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    # the schedule as a tag: the DAG list shows a time-or-assets schedule as its assets alone
    tags=["transfer-rec", "recommendation", "mlops", pipeline.schedule_label(pipeline.schedule())],
    doc_md=__doc__,
    params={
        # nullable: the UI's trigger form refuses an empty value of a required (non-null) param, so a default of ""
        # would make every operator type a run key before the Trigger button works
        "run_key": Param(
            None,
            type=["null", "string"],
            # never "." or "..", or a hidden name: the key names folders that are replaced whole (plan refuses
            # the two file names the state keeps beside them too)
            pattern=r"^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,99})?$",
            description="Name of this run's outputs (lake, models, MLflow; letters, digits and _.-, not starting "
            "with a dot). Empty: the Airflow run id.",
        ),
        # a multi-select of the configured targets (the form lists `examples`); a name outside them is refused
        # when the run is triggered, not three retries later
        "targets": Param(
            [],
            type=["null", "array"],
            items={"type": "string", "enum": TARGETS},
            uniqueItems=True,  # one target twice would race its own twin for the champion alias
            examples=TARGETS,
            description=f"Target platforms to fine-tune, of {', '.join(TARGETS)}. Empty: every target.",
        ),
        # Bounds as exclusive ones: the form's number field clamps to `minimum`/`maximum` silently (-3 was sent as
        # 1); it ignores the exclusive forms, so an out-of-range value reaches the trigger's validation, which
        # refuses the run and says why.
        "epochs_finetune": Param(
            None,
            type=["null", "integer"],
            exclusiveMinimum=0,
            exclusiveMaximum=501,
            description="Maximum fine-tuning epochs, 1 to 500 (early stopping may end sooner). Empty: the config's.",
        ),
        "strategy": Param(
            None,
            type=["null", "string"],
            enum=[None, "full", "freeze_encoder"],
            values_display={
                "null": "the config's",
                "full": "full: every layer adapts",
                "freeze_encoder": "freeze_encoder: only the output layer adapts",
            },
            description="Fine-tuning strategy. Empty: the config's.",
        ),
        "seed": Param(
            None,
            type=["null", "integer"],
            # exclusive bounds: the form's number field clamps to minimum/maximum instead of refusing
            exclusiveMinimum=-1,
            exclusiveMaximum=2**32,  # numpy's and torch's seeds
            description="Seed of the split and of training, 0 to 4294967295. Another seed splits the data anew, so "
            "the champion is re-scored on a different test split. Empty: the config's.",
        ),
        "gate_override": Param(
            "none",
            type="string",
            enum=["none", "promote", "reject"],
            description="Manual override of the promotion gate for every target of the run (name them in targets), "
            "recorded on the model version. Not with dry_run.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Train and evaluate but never promote or publish: the candidate is registered, tagged "
            "dry_run, and moves no alias. Unchanged inputs skip training unless force is on too.",
        ),
        "force": Param(
            False,
            type="boolean",
            description="Retrain even when the data files and config are those the champions (or the last rejected "
            "candidates) were trained on. A gate_override retrains too.",
        ),
    },
)
def transfer_rec() -> None:
    @stage()
    def plan(**context: Any) -> dict[str, Any]:
        """Resolve config and params; open the MLflow parent run."""
        interval = (context.get("data_interval_start"), context.get("data_interval_end"))
        run = pipeline.plan(
            dict(context["params"]), airflow_run_id=context["run_id"], dag_id=context["dag"].dag_id, interval=interval
        )
        _mlflow_link(run)
        return run

    @stage(**NO_RETRY)
    def select_targets(run: dict[str, Any]) -> list[str]:
        """The target platforms this run fine-tunes (param `targets`, default all)."""
        return run["targets"]

    @per_platform()
    def pull(platform: str, run: dict[str, Any]) -> dict[str, Any]:
        """Land one platform's export files with their hashes and row counts."""
        _label(platform)
        _mlflow_link(run)
        return pipeline.pull(run, platform)

    @per_platform(**NO_RETRY)
    def validate(pulled: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Great Expectations on the raw batch; failure quarantines it and stops this run."""
        _label(pulled["platform"])
        _mlflow_link(run)
        _data_docs_link(links.data_docs_page(pulled["platform"], pulled["batch_id"]))
        return pipeline.validate(run, pulled)

    @stage(**NO_RETRY)
    def unify(validated: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
        """One schema for all platforms, switched in atomically."""
        _mlflow_link(run)
        return pipeline.unify(run, list(validated), data_docs=_data_docs_link)

    @stage()  # it reads the registry: a brief outage is ridden out like any other I/O
    def check_inputs(unified: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Skip the rest of the run when the data files and config are those every champion was trained on."""
        checked = pipeline.check_inputs(run, unified)
        if not checked["changed"]:
            raise AirflowSkipException(checked["reason"])
        return checked

    @stage(**NO_RETRY)
    def build_features(unified: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Implicit feedback, k-core, seeded per-user split of each target."""
        _mlflow_link(run)
        return pipeline.build_features(run, unified)

    @stage(timeout_is_final=True)
    def pretrain(features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Learn from the source platform."""
        _mlflow_link(run)
        # a failed pretraining links to the run it failed in; a finished one to its first family's
        pretrained = pipeline.pretrain(run, features, on_run=lambda run_id: _mlflow_link(run, run_id))
        _mlflow_link(run, pretrained["run_id"])
        return pretrained

    @per_platform(timeout_is_final=True)
    def finetune(
        target: str, features: dict[str, Any], pretrained: dict[str, Any], run: dict[str, Any]
    ) -> dict[str, Any]:
        """Adapt to one target platform; the result is the candidate model."""
        _label(target)
        _mlflow_link(run)
        # linked to the fine-tune's own run as soon as it exists: a failed fine-tune is traced to it too
        candidate = pipeline.finetune(
            run, target, features, pretrained, on_run=lambda run_id: _mlflow_link(run, run_id)
        )
        return candidate

    @per_platform(timeout_is_final=True)
    def evaluate(candidate: dict[str, Any], features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Candidate, champion and baselines on the same held-out users."""
        _label(candidate["target"])
        _mlflow_link(run, candidate["run_id"])  # until the evaluation's own run exists
        evaluation = pipeline.evaluate(run, candidate, features)
        _mlflow_link(run, evaluation.get("run_id") or candidate["run_id"])
        return evaluation

    @per_platform()
    def promote(evaluation: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Register the candidate; move `champion` only if the gate passes."""
        _label(evaluation["target"])
        _mlflow_link(run, evaluation["candidate"]["run_id"])
        return pipeline.promote(run, evaluation)

    @per_platform()
    def publish(decision: dict[str, Any], features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """The champion's top-K for every user of the target."""
        _label(decision["target"])
        _mlflow_link(run)
        return pipeline.publish(run, decision, features)

    @task_group(group_id="per_target", prefix_group_id=False)
    def per_target(target: str, features: dict[str, Any], pretrained: dict[str, Any], run: dict[str, Any]):
        """One target's fine-tune, evaluation, promotion and publication. Mapped as a group, so each target depends
        only on its own earlier tasks: one target failing stops no other."""
        candidate = finetune(target, features, pretrained, run)
        evaluation = evaluate(candidate, features, run)
        decision = promote(evaluation, run)
        return candidate, evaluation, decision, publish(decision, features, run)

    @stage(trigger_rule=TriggerRule.ALL_DONE)
    def summarize(
        validated: list[dict[str, Any]],
        unified: dict[str, Any] | None,
        features: dict[str, Any] | None,
        pretrained: dict[str, Any] | None,
        candidates: list[dict[str, Any]],
        evaluations: list[dict[str, Any]],
        decisions: list[dict[str, Any]],
        published: list[dict[str, Any]],
        run: dict[str, Any],
    ) -> dict[str, Any]:
        """Write the run's report (var/reports/<run_key>/summary.json), also when some targets failed: the report
        says which, and at which stage, beside what the others did."""
        if unified is None or features is None or pretrained is None:
            raise AirflowSkipException(
                "nothing to report: check_inputs found nothing to retrain (its report says why), or a task before "
                "fine-tuning failed"
            )
        _mlflow_link(run)
        return pipeline.summarize(
            run,
            list(validated),
            unified,
            features,
            pretrained,
            *(_each(outputs) for outputs in (candidates, evaluations, decisions, published)),
        )

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
    def outcome() -> None:
        """Fails the DAG run when any task failed. summarize runs whatever happened (to report the targets that did
        finish), so the run's state comes from here; skipped when nothing failed."""
        raise AirflowFailException("a task of this run failed: its failure line is in reports/failures.log")

    run = plan()
    # The platform registry is static configuration: one pull/validate pair per platform, visible in the graph.
    pulled = pull.partial(run=run).expand(platform=pipeline.platform_names())
    validated = validate.partial(run=run).expand(pulled=pulled)
    unified = unify(validated, run)
    features = build_features(unified, run)
    checked = check_inputs(unified, run)
    checked >> features
    pretrained = pretrain(features, run)
    targets = select_targets(run)
    per_target_outputs = per_target.partial(features=features, pretrained=pretrained, run=run).expand(target=targets)
    summary = summarize(validated, unified, features, pretrained, *per_target_outputs, run)
    outcome() << [run, pulled, validated, unified, checked, features, pretrained, targets, *per_target_outputs, summary]


transfer_rec()


def ingest_dag(platform: str):
    """`transfer_rec_ingest_<platform>`: land and validate the platform's export on the ingest schedule; a new
    validated batch updates the platform's Asset, which triggers `transfer_rec` (config `schedule.on_new_data`)."""
    asset = platform_asset(platform)

    @dag(
        dag_id=f"transfer_rec_ingest_{platform}",
        schedule=cron(pipeline.schedule().ingest),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["transfer-rec", "ingest"],
        doc_md=f"""### transfer_rec_ingest_{platform}: look for new data of platform `{platform}`

1. **pull**: land the export under `lake/landing/{platform}/ingest_<run>/`, with sha256 and row counts.
2. **validate**: the platform's Great Expectations suites (a failure quarantines the batch, as in `transfer_rec`).
   When the files differ from the last announced batch it updates the Asset `{asset.uri}`, which triggers
   `transfer_rec`; the same data again is removed from landing and the task is skipped (no Asset event).
""",
    )
    def ingest() -> None:
        @stage()
        def pull(**context: Any) -> dict[str, Any]:
            """Land the platform's export files with their hashes and row counts."""
            _label(platform)
            return pipeline.ingest_pull(
                platform, context["run_id"], (context.get("data_interval_start"), context.get("data_interval_end"))
            )

        @stage(outlets=[asset], **NO_RETRY)
        def validate(pulled: dict[str, Any], **context: Any) -> dict[str, Any]:
            """Great Expectations on the batch; announce it (Asset event) only when its data is new."""
            _label(platform)
            _data_docs_link(links.data_docs_page(platform, pulled["batch_id"]))
            result = pipeline.ingest_validate(pulled)
            if not result["new"]:
                raise AirflowSkipException(f"platform {platform}: same data as batch {result['same_as']}")
            context["outlet_events"][asset].extra = {"batch_id": result["batch_id"], "rows": result["rows"]}
            return result

        validate(pull())

    return ingest()


for _platform in pipeline.platform_names():
    ingest_dag(_platform)
