"""The MLflow record of a pipeline run: its parent run, as plans of the same run key meet it again."""

from __future__ import annotations

import mlflow

from transfer_rec.registry import tracking
from transfer_rec.stages import pipeline


def test_a_run_key_planned_again_with_other_params_reopens_its_run_and_keeps_the_first_params(pipeline_env):
    pipeline_env()
    first = pipeline.plan({"run_key": "again", "epochs_finetune": 3}, airflow_run_id="again-1")
    tracking.end_pipeline_run(first["parent_run_id"], outcome="done")
    # MLflow refuses to change a logged param: the second plan must neither fail nor rewrite the first's
    second = pipeline.plan({"run_key": "again", "epochs_finetune": 5, "dry_run": True}, airflow_run_id="again-2")
    assert second["parent_run_id"] == first["parent_run_id"]
    run = mlflow.MlflowClient().get_run(second["parent_run_id"])
    assert run.info.status == "RUNNING", "a run key used again reopens its parent run"
    assert run.data.params["param.epochs_finetune"] == "3" and run.data.params["param.dry_run"] == "True"
