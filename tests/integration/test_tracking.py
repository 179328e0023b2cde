"""The MLflow record of a pipeline run: its parent run, as plans of the same run key meet it again."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from inline import run_inline

from bench.synthetic import SyntheticPlatform
from transfer_rec.registry import tracking
from transfer_rec.stages import pipeline


def test_a_run_key_planned_again_resumes_its_run_with_the_same_params_and_refuses_others(pipeline_env):
    pipeline_env(extra=[SyntheticPlatform("hamlet", "target", users=40, interactions_per_user=10)])
    first = pipeline.plan({"run_key": "again", "epochs_finetune": 3}, airflow_run_id="again-1")
    tracking.end_pipeline_run(first["parent_run_id"], outcome="done")
    # MLflow keeps a stage run's first params: other settings under the same key would fail training later
    with pytest.raises(ValueError, match=r"run_key again: .*other training params \(epochs_finetune 3 -> 5\)"):
        pipeline.plan({"run_key": "again", "epochs_finetune": 5, "dry_run": True}, airflow_run_id="again-2")
    # other targets reopen the stage runs of other families (a pretrain logged with other sources): refused too
    with pytest.raises(ValueError, match=r"run_key again: .*\(targets hamlet, village -> village\)"):
        pipeline.plan({"run_key": "again", "epochs_finetune": 3, "targets": ["village"]}, airflow_run_id="again-2")
    # ... but every target named, in any order, is the run that named none
    both = {"run_key": "again", "epochs_finetune": 3, "targets": ["village", "hamlet", "village"]}
    assert pipeline.plan(both, airflow_run_id="again-2")["parent_run_id"] == first["parent_run_id"]
    # a dry run, or a forced one, of the same settings changes no stage run's params: it resumes the run
    second = pipeline.plan({"run_key": "again", "epochs_finetune": 3, "dry_run": True}, airflow_run_id="again-2")
    assert second["parent_run_id"] == first["parent_run_id"]
    run = mlflow.MlflowClient().get_run(second["parent_run_id"])
    assert run.info.status == "RUNNING", "a run key used again reopens its parent run"
    assert run.data.params["param.epochs_finetune"] == "3" and run.data.params["param.dry_run"] == "True"


def test_a_run_key_that_registered_a_model_on_other_inputs_is_refused_before_training(pipeline_env):
    """Its retried fine-tune would find that earlier version and hand it on as this run's candidate."""
    env = pipeline_env()
    run_inline("weekly", gate_override="promote")
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export, dtype=str)
    frame.iloc[: len(frame) - 40].to_csv(export, index=False)
    run = pipeline.plan({"run_key": "weekly", "gate_override": "promote"}, airflow_run_id="weekly-2")
    unified = pipeline.unify(run, [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]])
    with pytest.raises(ValueError, match=r"run_key weekly: it registered village v1, trained on other data"):
        pipeline.check_inputs(run, unified)


def test_a_plan_that_fails_after_opening_its_parent_run_ends_it_failed(pipeline_env, monkeypatch):
    # the failure callback closes the parent run of every task but plan, which has no plan to read it from
    pipeline_env()

    def unreachable(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(tracking, "log_params", unreachable)
    with pytest.raises(OSError, match="unreachable"):
        pipeline.plan({"run_key": "broken"}, airflow_run_id="broken")
    runs = mlflow.search_runs(experiment_names=["transfer_rec"], filter_string="tags.`transfer_rec.stage` = 'pipeline'")
    assert runs["status"].tolist() == ["FAILED"]
    assert "artifact store unreachable" in runs["tags.transfer_rec.outcome"].iloc[0]
