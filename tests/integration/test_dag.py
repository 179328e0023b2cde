"""The DAG: integrity (imports, tasks, owners, retries, tags) and one full in-process run on synthetic platforms."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import quote

import mlflow
import pandas as pd
import pytest

from bench.synthetic import SyntheticPlatform
from transfer_rec import cli
from transfer_rec.io.state import StateLayout
from transfer_rec.ops import task_log
from transfer_rec.registry.models import serving_requirements
from transfer_rec.stages import pipeline
from transfer_rec.stages.promote import platform_digest

REPO = Path(__file__).resolve().parents[2]

EXPECTED_TASKS = {
    "plan",
    "select_targets",
    "check_inputs",
    "pull",
    "validate",
    "unify",
    "build_features",
    "pretrain",
    "finetune",
    "evaluate",
    "promote",
    "publish",
    "summarize",
    "outcome",
}


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag("transfer_rec")


def test_dag_integrity(airflow_db):
    from airflow.sdk import AssetOrTimeSchedule

    dag = load_dag()
    # weekly, or when any platform's ingest DAG announces new validated data (config `schedule:`)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 0 * * 0"
    assert {a.uri for a in dag.timetable.asset_condition.objects} == {
        f"transfer-rec://platform/{name}" for name in ("ml-1m", "ml-100k", "action", "family", "drama")
    }
    assert set(dag.task_dict) == EXPECTED_TASKS
    # the DAG list shows only the asset part of the schedule: the whole of it is a tag there
    assert set(dag.tags) >= {"transfer-rec", "schedule: @weekly UTC or new data"}
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.owner == "ml-platform"
        assert task.doc_md, f"{task.task_id} has no documentation"
    assert dag.task_dict["pull"].retries == 2
    assert dag.task_dict["validate"].retries == 0, "validation failures are deterministic: no retries"
    for mapped in ("pull", "validate", "finetune", "evaluate", "promote", "publish"):
        assert dag.task_dict[mapped].map_index_template == "{{ label }}"
    # a target's tasks are mapped as one group: each depends on its own target's earlier task only
    groups = [dag.task_dict[t].get_closest_mapped_task_group() for t in ("finetune", "evaluate", "promote", "publish")]
    assert groups[0] is not None and all(g is groups[0] for g in groups)
    # summarize reports whatever finished; the run's state comes from `outcome`, which watches every task
    assert dag.task_dict["summarize"].trigger_rule == "all_done"
    assert dag.task_dict["outcome"].trigger_rule == "one_failed"
    assert dag.task_dict["outcome"].upstream_task_ids == set(dag.task_dict) - {"outcome"}
    # exactly the params plan takes: plan refuses any other key (a misspelt one)
    assert set(dag.params.keys()) == set(pipeline.RUN_PARAMS)

    # what the trigger form sends is validated at the trigger: out of range or unknown is refused, never clamped
    def validate(**conf):
        params = copy.deepcopy(dag.params)
        for key, value in conf.items():
            params[key] = value
        return params.validate()

    assert validate(epochs_finetune=500, seed=0, targets=["ml-100k"])["epochs_finetune"] == 500
    bads = ({"epochs_finetune": -3}, {"epochs_finetune": 0}, {"epochs_finetune": 501}, {"seed": -1}, {"seed": 2**32})
    for bad in bads:
        with pytest.raises(Exception, match="epochs_finetune|seed"):
            validate(**bad)
    with pytest.raises(Exception, match="targets"):
        validate(targets=["no-such-platform"])
    for bad in ("..", ".", "a/b"):
        with pytest.raises(Exception, match="run_key|does not match"):
            validate(run_key=bad)
    assert validate(run_key="v1.2_x")["run_key"] == "v1.2_x"
    assert dag.params.get_param("targets").schema["examples"] == ["ml-100k", "action"]


def test_a_scheduled_run_covers_the_period_since_the_previous_one(airflow_db):
    # an incremental platform pulls the days of the run's data interval: a zero-length interval at the run's own
    # time (a cron string's default in Airflow 3) would pull the day just starting
    from datetime import UTC, datetime, timedelta

    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    bag = DagBag(dag_folder=str(REPO / "dags"))
    restriction = TimeRestriction(earliest=datetime(2026, 1, 1, tzinfo=UTC), latest=None, catchup=False)
    for dag_id, period in (("transfer_rec", timedelta(days=7)), ("transfer_rec_ingest_ml-1m", timedelta(days=1))):
        # the timetable as the scheduler reads it: serialized with the DAG
        timetable = decode_timetable(encode_timetable(bag.get_dag(dag_id).timetable))
        info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        assert info.data_interval.end - info.data_interval.start == period, (dag_id, info.data_interval)
        assert info.data_interval.end <= info.run_after, "a run starts once its period is over"


def test_one_ingest_dag_per_platform_updates_its_asset(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    for platform in ("ml-1m", "ml-100k", "action", "family", "drama"):
        dag = bag.get_dag(f"transfer_rec_ingest_{platform}")
        assert set(dag.task_dict) == {"pull", "validate"} and dag.max_active_runs == 1
        assert [a.uri for a in dag.task_dict["validate"].outlets] == [f"transfer-rec://platform/{platform}"]
        assert dag.task_dict["validate"].retries == 0 and dag.task_dict["pull"].retries == 2
        assert all(task.doc_md and task.owner == "ml-platform" for task in dag.tasks)


def test_full_dag_run_registers_logs_and_publishes_even_when_another_target_fails(
    pipeline_env, airflow_db, monkeypatch, capsys
):
    # two sources: the target learns from both, and the fine-tune records what each one weighs; a second target,
    # hamlet, fails in its fine-tune (a folder where its checkpoint goes), which must stop no other target
    env = pipeline_env(
        extra=[
            SyntheticPlatform("plaza", "source", users=150, interactions_per_user=20),
            SyntheticPlatform("hamlet", "target", users=120, interactions_per_user=15),
        ]
    )
    (env["state"] / "models" / "itest" / "hamlet.finetune.ckpt").mkdir(parents=True)
    monkeypatch.setenv(task_log.ENV, "1")  # as `transfer-rec run` sets it for its in-process run
    dag = load_dag()
    dag.task_dict["finetune"].retries = 0  # an I/O error is retried in production; here it fails at once
    # promoted by override, so that publishing always runs (the gate's own verdicts have their tests)
    run = dag.test(run_conf={"run_key": "itest", "gate_override": "promote", "targets": ["village", "hamlet"]})
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    hamlet = 1  # the targets in config order: village, then the extra hamlet
    assert run.state == "failed", states
    assert states[("finetune", hamlet)] == "failed", states
    for task_id in ("evaluate", "promote", "publish"):
        assert states[(task_id, hamlet)] == "upstream_failed" and states[(task_id, 0)] == "success", states
    assert states[("summarize", -1)] == "success" and states[("outcome", -1)] == "failed", states
    assert "FAILED transfer_rec.finetune[hamlet]" in (env["state"] / "reports" / "failures.log").read_text()
    _assert_task_logs_readable(run)

    summary = json.loads((env["state"] / "reports" / "itest" / "summary.json").read_text())
    assert summary["targets"]["hamlet"] == {"failed_at": "finetune"}
    assert json.loads((env["state"] / "reports" / "latest.json").read_text()) == summary
    capsys.readouterr()
    cli.summary(StateLayout.from_env())  # what `make run` prints
    printed = capsys.readouterr().out
    assert "target hamlet: FAILED at finetune" in printed and "PROMOTED to champion" in printed, printed
    village = summary["targets"]["village"]
    assert set(village["metrics"]) == {"candidate", "target_only", "ease", "popularity"}
    assert 0 < village["metrics"]["candidate"]["ndcg"] <= 1

    client = mlflow.MlflowClient()
    # the MLflow UI opens the experiment as a training record, not in its GenAI view
    assert client.get_experiment_by_name("transfer_rec").tags["mlflow.experimentKind"] == "custom_model_development"
    versions = client.search_model_versions("name = 'transfer_rec-village'")
    assert len(versions) == 1
    version = versions[0]
    assert version.tags["gate.decision"] == "promoted" and version.tags["gate.override"] == "promote"
    assert version.tags["gate.reasons"]
    parent = client.get_run(summary["mlflow_parent_run_id"]).data
    assert parent.tags["validation.village"] == "passed" and parent.metrics["validation_village_critical"] == 0
    assert "validation/campus.json" in [
        a.path for a in client.list_artifacts(summary["mlflow_parent_run_id"], "validation")
    ]
    # the parent run ties back to Airflow and holds the resolved config and each platform's data lineage
    parent_tags = parent.tags
    assert parent_tags["airflow.dag_id"] == "transfer_rec" and parent_tags["airflow.run_id"] == run.run_id
    # it spans the DAG run (ended by summarize, not at once), holds the run's params and links to Airflow
    parent_info = client.get_run(summary["mlflow_parent_run_id"]).info
    stages = client.search_runs(
        [parent_info.experiment_id], f"tags.mlflow.parentRunId = '{summary['mlflow_parent_run_id']}'"
    )
    assert {"pretrain", "finetune village"} <= {r.info.run_name for r in stages}
    # ended FAILED by the summary, which names each target's outcome
    assert parent_info.status == "FAILED" and parent_info.end_time >= max(r.info.end_time for r in stages)
    assert parent.params["param.run_key"] == "itest"
    assert parent_tags["transfer_rec.outcome"] == "village: promoted; hamlet: failed at finetune"
    # a failure reported after the summary (a killed task's callback comes late, from the scheduler) keeps it
    pipeline.run_failed({"parent_run_id": summary["mlflow_parent_run_id"]}, RuntimeError("late"))
    late = client.get_run(summary["mlflow_parent_run_id"])
    assert (
        late.info.status == "FAILED" and late.data.tags["transfer_rec.outcome"] == parent_tags["transfer_rec.outcome"]
    )
    assert f"]({parent_tags['airflow.url']})" in parent_tags["mlflow.note.content"]
    assert parent_tags["airflow.url"] == f"http://127.0.0.1:8080/dags/transfer_rec/runs/{quote(run.run_id, safe='')}"
    assert parent_tags["airflow.logical_date"]
    assert {"config/pipeline.resolved.json", "config/overrides.json"} <= {
        a.path for a in client.list_artifacts(summary["mlflow_parent_run_id"], "config")
    }
    unified = json.loads(
        (
            Path(json.loads((env["state"] / "lake" / "features" / "itest" / "manifest.json").read_text())["unified"])
            / "manifest.json"
        ).read_text()
    )
    lineage = {
        i.dataset.name: {t.key: t.value for t in i.tags}
        for i in client.get_run(summary["mlflow_parent_run_id"]).inputs.dataset_inputs
    }
    assert set(lineage) == {"campus", "plaza", "village", "hamlet"}
    assert lineage["village"]["sha256.interactions.txt"] == unified["hashes"]["village"]["interactions.txt"]
    assert lineage["village"]["validation"] == "passed" and int(lineage["village"]["features.test"]) > 0

    # the version names its data and source run; its card has CIs, baselines and segments
    assert version.tags["source_run_id"] == version.run_id
    # few readable tags; every file's sha256 is in provenance.json on the run
    assert len(version.tags) <= 15, sorted(version.tags)
    provenance = client.download_artifacts(version.run_id, "provenance.json")
    assert json.loads(Path(provenance).read_text())["data"]["hashes"] == unified["hashes"]
    for platform, files in unified["hashes"].items():
        assert version.tags[f"data.{platform}.sha256"] == platform_digest(files)
    card = version.description.replace("&emsp;", "")  # each cell ends in an em space (promote.CELL_END)
    assert "| ease |" in card and "By user segment" in card

    # the served model names its packages, pinned to this environment (given, not inferred in a subprocess)
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/transfer_rec-village/1")).read_text().split()
    assert requirements == serving_requirements()
    _assert_extra_links(run, version.run_id, env["state"], failed=("finetune", hamlet, "finetune hamlet"))
    run_data = client.get_run(version.run_id).data
    # the evaluation is its own run, nested under the model's (fine-tune) run, which keeps the headline
    evaluation = client.get_run(run_data.tags["evaluation_run_id"])
    assert evaluation.data.tags["mlflow.parentRunId"] == version.run_id
    assert evaluation.data.tags["transfer_rec.stage"] == "evaluate village"
    assert run_data.metrics["ndcg_at_10.candidate"] == evaluation.data.metrics["ndcg_at_10.candidate"]
    assert "ndcg_at_10.ease" not in run_data.metrics
    metrics = evaluation.data.metrics
    # metrics named for people, metric first; chosen settings are params, not metrics
    assert "ndcg_at_10.candidate" in metrics and "ndcg_at_10.ease" in metrics
    for metric in ("coverage_at_10", "diversity_at_10", "novelty_at_10", "retention", "retention.candidate.ci_low"):
        assert metric in metrics or f"{metric}.candidate" in metrics, metric
    assert 0 < metrics["coverage_at_10.candidate"] <= 1
    assert any(m.startswith("ndcg_at_10.segment.history_") for m in metrics)
    assert not any("__" in m for m in [*metrics, *run_data.metrics]), "no mangled names"
    assert {
        "chosen.best_epoch",
        "chosen.blend_beta",
        "chosen.kernel_weight",
        "chosen.item_settings_averaged",
        "chosen.kernel_lam",
    } <= set(run_data.params)
    # one setting's (alpha, lam, drop_p) only where the item-item part is that setting's alone
    assert ("chosen.item_lam" in run_data.params) == (run_data.params["chosen.item_settings_averaged"] == "1")
    assert not {"beta", "kernel_weight", "best_epoch"} & set(run_data.metrics)
    assert all(len(repr(v)) <= 12 for m, v in metrics.items() if "." in m), "values to 4 digits"
    listed = client.list_artifacts
    evaluated = {a.path for folder in ("plots", "evaluation") for a in listed(evaluation.info.run_id, folder)}
    assert {"plots/segments.png", "plots/cold_start_curve.png", "evaluation/segments.json"} <= evaluated
    assert "plots/training_curves.png" in {a.path for a in client.list_artifacts(version.run_id, "plots")}
    # the data version it was trained from: every platform's batch of the unified version
    assert {i.dataset.name for i in client.get_run(version.run_id).inputs.dataset_inputs} == set(lineage)
    weights = {k: float(v) for k, v in run_data.params.items() if k.startswith("source_weight.")}
    assert set(weights) == {"source_weight.campus", "source_weight.plaza"} and set(weights.values()) <= {0.0, 1.0}
    assert "Sources (weight in the item-item prior" in version.description
    report = json.loads((env["state"] / "reports" / "itest" / "village" / "evaluation.json").read_text())
    segments = {r["segment"] for r in report["segments"] if r["users"]}
    assert "all" in segments and any(s.startswith("history ") for s in segments)
    assert {r["contender"] for r in report["segments"]} == set(village["metrics"])
    assert "finetune_loss" in run_data.metrics
    # the cold-start curve: every contender at every history length, the metric logged
    curve = report["cold_start_curve"]
    assert {(r["history_length"], r["contender"]) for r in curve} == {
        (n, c) for n in (0, 1, 3, 5, 10) for c in village["metrics"]
    }
    users = {n: {r["users"] for r in curve if r["history_length"] == n} for n in (0, 1, 3, 5, 10)}
    assert all(len(u) == 1 for u in users.values()), "the contenders of one length are judged on the same users"
    counts = [next(iter(users[n])) for n in (0, 1, 3, 5, 10)]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0, "fewer users reach longer histories"
    assert all(r["ci_low"] <= r["ndcg"] <= r["ci_high"] for r in curve)
    assert "ndcg_at_10.cold_start.history_0.candidate" in metrics
    assert run_data.tags["mlflow.parentRunId"] == summary["mlflow_parent_run_id"]

    recs_path = env["state"] / "recommendations" / "village" / "recommendations.parquet"
    recs = pd.read_parquet(recs_path)
    assert recs["user_id"].nunique() > 0 and recs.groupby("user_id").size().eq(10).all()
    # beside the unified keys, the platform's own ids ("vi3", "course-00012")
    assert (("village:" + recs["platform_user_id"]) == recs["user_id"]).all()
    assert recs["platform_item_id"].str.startswith("course-").all()
    assert recs["model_version"].eq(str(version.version)).all()
    history = pd.read_parquet(
        Path(json.loads((env["state"] / "lake" / "features" / "itest" / "manifest.json").read_text())["dir"])
        / "village.interactions.parquet"
    )
    seen = set(zip(history["user_id"], history["item_id"]))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"])), "seen items recommended"


def test_bad_batch_fails_the_run_names_the_cause_and_changes_nothing(pipeline_env, airflow_db):
    env = pipeline_env(faults=["out_of_range"])
    dag = load_dag()
    run = dag.test(run_conf={"run_key": "bad"})
    assert run.state == "failed"
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert states[("pull", 1)] == "success" and states[("validate", 1)] == "failed"
    assert states[("unify", -1)] == "upstream_failed" and states[("promote", -1)] in ("upstream_failed", None)
    failures = (env["state"] / "reports" / "failures.log").read_text()
    assert "FAILED transfer_rec.validate[village] run=" in failures
    assert "expect_column_values_to_be_between" in failures, failures
    assert (env["state"] / "lake" / "quarantine" / "village" / "bad" / "interactions.txt").exists()
    # the failed batch has its Data Docs, naming the failed expectation
    docs = env["state"] / "data_docs" / "village" / "bad"
    assert (docs / "index.html").is_file() and list((docs / "validations").rglob("*.html"))
    assert not (env["state"] / "lake" / "unified" / "current").exists()
    assert mlflow.MlflowClient().search_registered_models() == []
    assert not (env["state"] / "recommendations").exists()
    # the run's MLflow parent run ends FAILED, naming the cause
    (parent,) = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("transfer_rec").experiment_id], "tags.`transfer_rec.stage` = 'pipeline'"
    )
    assert parent.info.status == "FAILED" and parent.data.tags["transfer_rec.outcome"].startswith("failed: ")


def _assert_task_logs_readable(run) -> None:
    """The UI's log tab (Airflow's own reader) shows what an in-process task logged, its mapped instances too."""
    from airflow.utils.log.log_reader import TaskLogReader

    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    for key, expected in {("validate", 1): "passed validation", ("unify", -1): "unified village: "}.items():
        ti = tis[key]
        logs, _ = TaskLogReader().read_log_chunks(ti, ti.try_number, {})
        events = [getattr(m, "event", str(m)) for m in logs]
        assert any(expected in e for e in events), (key, events[:10])
        assert any("started (log written by transfer-rec run" in e for e in events), (key, events[:10])


def _assert_extra_links(run, candidate_run_id: str, state: Path, failed: tuple[str, int, str]) -> None:
    """The plugin's links, resolved as the API server resolves them: from the XComs the tasks pushed. `failed`: a
    task that failed inside its own MLflow run (task id, map index, the run's stage name), linked to that run."""
    from airflow import plugins_manager

    link = {lk.name: lk for lk in plugins_manager.get_global_operator_extra_links()}
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    experiment = mlflow.get_experiment_by_name("transfer_rec").experiment_id
    finetune = link["MLflow run"].get_link(None, ti_key=tis[("finetune", 0)].key)
    assert (
        finetune
        == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{candidate_run_id}?workflowType=machine_learning"
    )
    evaluate = link["MLflow run"].get_link(None, ti_key=tis[("evaluate", 0)].key)
    evaluation = mlflow.MlflowClient().get_run(candidate_run_id).data.tags["evaluation_run_id"]
    assert evaluate.endswith(f"/runs/{evaluation}?workflowType=machine_learning"), evaluate
    unify = link["MLflow run"].get_link(None, ti_key=tis[("unify", -1)].key)
    parent = mlflow.MlflowClient().get_run(candidate_run_id).data.tags["mlflow.parentRunId"]
    assert unify.endswith(f"/runs/{parent}?workflowType=machine_learning"), unify
    docs = link["Data Docs"].get_link(None, ti_key=tis[("validate", 1)].key)
    assert docs.endswith("/transfer-rec/data-docs/village/itest/index.html"), docs
    page = state / "data_docs" / "village" / "itest"
    assert "village.itest" in (page / "index.html").read_text(), "the index lists this batch's validations"
    assert max(p.stat().st_size for p in (page / "validations").rglob("*.html")) > 1000
    # the unified tables' own validation, under the version's name
    unified = Path(json.loads((state / "lake" / "features" / "itest" / "manifest.json").read_text())["unified"])
    docs = link["Data Docs"].get_link(None, ti_key=tis[("unify", -1)].key)
    assert docs.endswith(f"/transfer-rec/data-docs/unified/{unified.name}/index.html"), docs
    assert (state / "data_docs" / "unified" / unified.name / "index.html").exists()
    assert link["Data Docs"].get_link(None, ti_key=tis[("finetune", 0)].key) == ""
    # a failed fine-tune is traced to its own run (where its params and last epochs are), not the pipeline's
    task_id, index, stage = failed
    broken = link["MLflow run"].get_link(None, ti_key=tis[(task_id, index)].key)
    found = mlflow.search_runs([experiment], f"tags.`transfer_rec.stage` = '{stage}'", output_format="list")
    assert len(found) == 1 and found[0].info.status == "FAILED", found
    assert broken.endswith(f"/runs/{found[0].info.run_id}?workflowType=machine_learning"), broken
