"""The gate judges the champion as it was promoted, and a run on the champion's own inputs trains nothing."""

from __future__ import annotations

import mlflow
import pytest
import yaml
from inline import run_inline

from transfer_rec.io.state import StateLayout
from transfer_rec.registry import models
from transfer_rec.stages import pipeline
from transfer_rec.stages.promote import INPUTS_TAG

MODEL = "transfer_rec-village"


def test_a_retrain_on_the_same_data_rescores_the_champion_exactly_and_is_no_change(pipeline_env):
    pipeline_env()
    first = run_inline("fair1")
    assert first["decision"]["promoted"]
    again = run_inline("fair2")  # same data, same config, same seed: the same model
    metrics = again["evaluation"]["metrics"]
    for name, value in metrics["candidate"].items():
        if value is not None:
            assert abs(value - metrics["champion"][name]) < 1e-9, name
    # and the champion scores now what it scored when it was promoted
    assert abs(metrics["champion"]["ndcg"] - first["evaluation"]["metrics"]["candidate"]["ndcg"]) < 1e-9
    assert again["evaluation"]["same_as_champion"]
    decision = again["decision"]
    assert not decision["promoted"] and any(r.startswith("no change") for r in decision["reasons"])
    assert {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model(MODEL).aliases.items()}["champion"] == "1"


def test_identical_inputs_skip_the_run_force_or_new_config_do_not(pipeline_env):
    env = pipeline_env()
    run_inline("inputs1")
    version = mlflow.MlflowClient().get_model_version(MODEL, "1")
    assert len(version.tags[INPUTS_TAG]) == 64

    def check(**params):
        run = pipeline.plan({"run_key": "inputs-check", **params}, airflow_run_id="inputs-check")
        validated = [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]]
        return pipeline.check_inputs(run, pipeline.unify(run, validated))

    same = check()
    assert not same["changed"] and "no change" in same["reason"] and "village v1" in same["reason"]
    # the ingest DAG, given the data the champion was trained on, announces nothing (no retrain is queued)
    ingest = pipeline.ingest_validate(pipeline.ingest_pull("village", "ingest-check"))
    assert not ingest["new"] and "champion transfer_rec-village v1" in ingest["same_as"], ingest
    assert check(force=True)["changed"]
    raw = yaml.safe_load(env["config"].read_text())
    raw.setdefault("training", {})["rating_weight"] = 0.5  # another model would come out of these data
    env["config"].write_text(yaml.safe_dump(raw))
    changed = check()
    assert changed["changed"] and "village" in changed["reason"]
    # a candidate of these inputs, rejected, is not trained again either: it would be the same model and verdict
    run_inline("inputs-rejected", gate_override="reject")
    rejected = check()
    assert not rejected["changed"] and "village v2 (challenger, not promoted)" in rejected["reason"], rejected
    assert check(gate_override="promote")["changed"], "an override asks for a verdict: there must be a candidate"


def test_a_champion_that_cannot_be_loaded_leaves_the_decision_to_an_operator(pipeline_env):
    """A champion whose files this code cannot load (damaged, or an older format): evaluation judges the candidate
    on floors and baselines, the gate does not promote it on its own (it was compared with nothing), and an
    operator's override replaces the champion; failing the evaluation instead would block every later run."""
    pipeline_env()
    assert run_inline("broken1")["decision"]["promoted"]
    stored = list((StateLayout.from_env().mlflow / "artifacts").rglob("candidate/model.pt"))
    assert stored, "the champion's weights in the artifact store"
    for path in stored:  # the champion's stored model, damaged
        path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"transfer_rec-village v1 cannot be loaded \(UnpicklingError"):
        models.champion_bundle("village")

    run = pipeline.plan({"run_key": "broken2", "seed": 7}, airflow_run_id="broken2")
    features = pipeline.build_features(
        run, pipeline.unify(run, [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]])
    )
    candidate = pipeline.finetune(run, "village", features, pipeline.pretrain(run, features))
    evaluation = pipeline.evaluate(run, candidate, features)
    assert evaluation["champion_version"] == "1" and "UnpicklingError" in evaluation["champion_unloadable"]
    assert "champion" not in evaluation["metrics"]
    decision = pipeline.promote(run, evaluation)
    assert not decision["promoted"]
    assert any(r.startswith("FAIL: champion v1 (UnpicklingError") for r in decision["reasons"]), decision["reasons"]
    failures = (StateLayout.from_env().reports / "failures.log").read_text()
    assert "ATTENTION transfer_rec-village: champion v1 cannot be loaded (UnpicklingError" in failures
    # no verdict on these inputs: the next run on them retrains and tries the champion again
    rejected = mlflow.MlflowClient().get_model_version(MODEL, decision["version"])
    assert INPUTS_TAG not in rejected.tags and rejected.tags["gate.decision"] == "rejected"

    forced = run_inline("broken3", seed=7, gate_override="promote")
    assert forced["decision"]["promoted"] and forced["evaluation"]["champion_unloadable"]
    aliases = mlflow.MlflowClient().get_registered_model(MODEL).aliases
    assert str(aliases["champion"]) == forced["decision"]["version"]
