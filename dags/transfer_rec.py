"""
### transfer_rec: transfer learning from the source platform to every target platform

Stages (each task calls one module of `tasks/`; XCom carries small manifests, never data or models):

1. **plan**: resolve the config (`config/pipeline.yaml` + this run's params), open the MLflow parent run.
2. **pull** (one per platform): land each export file as it came, with sha256 and row counts.
3. **validate** (one per platform): Great Expectations suites on the raw batch; a failure quarantines the batch.
4. **unify**: map native schemas onto one schema; written atomically to `lake/unified/current`.
5. **build_features**: implicit feedback, k-core filter, seeded train/valid/test split per target.
6. **pretrain**: the recommender learns from the source platform.
7. **finetune** (one per target): adapt to the target with early stopping on its validation split.
8. **evaluate** (one per target): candidate vs champion vs target-only vs EASE vs popularity on held-out users.
9. **promote** (one per target): register the candidate; alias `champion` only if the gate passes.
10. **publish** (one per target): the champion's top-K for every target user, as Parquet.
11. **summarize**: one report of the run for operators (`make run` prints it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from tasks import alerts, pipeline


def _on_failure(context: dict[str, Any]) -> None:
    """One line for the operator: what failed, on which platform, and where the log is."""
    ti = context["ti"]
    alerts.record_failure(alerts.failure_line(
        ti.dag_id, ti.task_id, context.get("label") or str(getattr(ti, "map_index", "")), ti.run_id,
        getattr(ti, "try_number", 0), context.get("exception"), getattr(ti, "log_url", None)))


DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": _on_failure,
}
# Deterministic stages: a retry would fail the same way, so fail fast.
NO_RETRY = {"retries": 0}


def per_platform(**kwargs: Any):
    """A mapped stage: each instance is named by its platform in the UI and documented by the function's docstring
    (mapped tasks do not pick docstrings up by themselves)."""

    def wrap(fn):
        return task(map_index_template="{{ label }}", doc_md=fn.__doc__, **kwargs)(fn)

    return wrap


def _label(name: str) -> None:
    """Name a mapped task instance in the UI (rendered by map_index_template)."""
    get_current_context()["label"] = name


@dag(
    dag_id="transfer_rec",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["transfer-rec", "recommendation", "mlops"],
    doc_md=__doc__,
    params={
        "run_key": Param("", type="string", pattern=r"^[A-Za-z0-9_.-]{0,100}$",
                         description="Name of this run's outputs (lake, models, MLflow). Empty: the Airflow run id."),
        "targets": Param([], type="array", items={"type": "string"},
                         description="Target platforms to fine-tune. Empty: every target in config/pipeline.yaml."),
        "epochs_finetune": Param(None, type=["null", "integer"], minimum=1, maximum=500,
                                 description="Maximum fine-tuning epochs (early stopping may end sooner)."),
        "strategy": Param(None, type=["null", "string"], enum=[None, "full", "freeze_encoder"],
                          description="Fine-tuning strategy: full, or freeze_encoder (only the output layer adapts). "
                                      "Empty: the config's."),
        "seed": Param(None, type=["null", "integer"], minimum=0,
                      description="Seed of the split and of training. Empty: the config's."),
        "gate_override": Param("none", type="string", enum=["none", "promote", "reject"],
                               description="Manual override of the promotion gate, recorded on the model version."),
        "dry_run": Param(False, type="boolean",
                         description="Train and evaluate but never promote or publish."),
    },
)
def transfer_rec() -> None:
    @task
    def plan(**context: Any) -> dict[str, Any]:
        """Resolve config and params; open the MLflow parent run."""
        interval = (context.get("data_interval_start"), context.get("data_interval_end"))
        return pipeline.plan(dict(context["params"]), airflow_run_id=context["run_id"], dag_id=context["dag"].dag_id,
                             interval=interval)

    @task(**NO_RETRY)
    def select_targets(run: dict[str, Any]) -> list[str]:
        """The target platforms this run fine-tunes (param `targets`, default all)."""
        return run["targets"]

    @per_platform()
    def pull(platform: str, run: dict[str, Any]) -> dict[str, Any]:
        """Land one platform's export files with their hashes and row counts."""
        _label(platform)
        return pipeline.pull(run, platform)

    @per_platform(**NO_RETRY)
    def validate(pulled: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Great Expectations on the raw batch; failure quarantines it and stops this run."""
        _label(pulled["platform"])
        return pipeline.validate(run, pulled)

    @task(**NO_RETRY)
    def unify(validated: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
        """One schema for all platforms, switched in atomically."""
        return pipeline.unify(run, list(validated))

    @task(**NO_RETRY)
    def build_features(unified: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Implicit feedback, k-core, seeded per-user split of each target."""
        return pipeline.build_features(run, unified)

    @task
    def pretrain(features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Learn from the source platform."""
        return pipeline.pretrain(run, features)

    @per_platform()
    def finetune(target: str, features: dict[str, Any], pretrained: dict[str, Any],
                 run: dict[str, Any]) -> dict[str, Any]:
        """Adapt to one target platform; the result is the candidate model."""
        _label(target)
        return pipeline.finetune(run, target, features, pretrained)

    @per_platform()
    def evaluate(candidate: dict[str, Any], features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Candidate, champion and baselines on the same held-out users."""
        _label(candidate["target"])
        return pipeline.evaluate(run, candidate, features)

    @per_platform()
    def promote(evaluation: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Register the candidate; move `champion` only if the gate passes."""
        _label(evaluation["target"])
        return pipeline.promote(run, evaluation)

    @per_platform()
    def publish(decision: dict[str, Any], features: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """The champion's top-K for every user of the target."""
        _label(decision["target"])
        return pipeline.publish(run, decision, features)

    @task
    def summarize(validated: list[dict[str, Any]], unified: dict[str, Any], features: dict[str, Any],
                  pretrained: dict[str, Any], evaluations: list[dict[str, Any]], decisions: list[dict[str, Any]],
                  published: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
        """Write the run's report (var/reports/<run_key>/summary.json)."""
        return pipeline.summarize(run, list(validated), unified, features, pretrained, list(evaluations),
                                  list(decisions), list(published))

    run = plan()
    # The platform registry is static configuration: one pull/validate pair per platform, visible in the graph.
    pulled = pull.partial(run=run).expand(platform=pipeline.platform_names())
    validated = validate.partial(run=run).expand(pulled=pulled)
    unified = unify(validated, run)
    features = build_features(unified, run)
    pretrained = pretrain(features, run)
    candidates = finetune.partial(features=features, pretrained=pretrained, run=run).expand(target=select_targets(run))
    evaluations = evaluate.partial(features=features, run=run).expand(candidate=candidates)
    decisions = promote.partial(run=run).expand(evaluation=evaluations)
    published = publish.partial(features=features, run=run).expand(decision=decisions)
    summarize(validated, unified, features, pretrained, evaluations, decisions, published, run)


transfer_rec()
