"""The registry path without Airflow: gate decisions on real runs, aliases, rollback, and the pyfunc model served
from `models:/<name>@champion` for known and new users."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tasks.promote import rollback
from tasks.serving import RequestError
from tasks.state import StateLayout

from inline import run_inline

MODEL = "transfer_rec-village"


def aliases() -> dict[str, str]:
    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model(MODEL).aliases.items()}


def test_gate_aliases_override_dry_run_and_rollback(pipeline_env):
    pipeline_env()
    first = run_inline("r1", gate_override="promote")
    assert first["decision"]["promoted"] and aliases() == {"champion": "1"}
    assert "champion" not in first["evaluation"]["metrics"], "the first model has no champion to meet"
    run_inline("r1", gate_override="promote")  # a retry of the same run registers nothing new
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")) == 1

    second = run_inline("r2", gate_override="reject")
    assert not second["decision"]["promoted"]
    assert aliases() == {"champion": "1", "challenger": "2"}
    assert "champion" in second["evaluation"]["metrics"], "later candidates are compared with the champion"
    assert set(second["evaluation"]["paired_vs_champion"]) == {"ndcg", "retention"}
    card = mlflow.MlflowClient().get_model_version(MODEL, "2").description
    assert "| candidate |" in card and "| champion |" in card and "not promoted" in card
    tags = mlflow.MlflowClient().get_model_version(MODEL, "2").tags
    assert tags["gate.decision"] == "rejected" and "override" in tags["gate.reasons"]
    assert tags["gate.override"] == "reject"

    dry = run_inline("r3", dry_run=True)
    assert not dry["decision"]["promoted"] and not dry["published"]["published"]
    assert aliases()["champion"] == "1"

    run_inline("r4", gate_override="promote")
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "1"
    rollback("village", StateLayout.from_env())
    assert aliases()["champion"] == "1" and aliases()["previous_champion"] == "4"


def test_champion_pyfunc_answers_known_and_new_users(pipeline_env):
    pipeline_env()
    run_inline("serve", gate_override="promote")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    bundle = model.unwrap_python_model().bundle
    known_user = next(iter(bundle.histories))
    some_items = bundle.histories[known_user][:3]
    requests = pd.DataFrame({"user_id": [known_user, None], "history": [None, some_items + ["no-such-course"]]})
    out = model.predict(requests)
    assert sorted(out["request"].unique()) == [0, 1]
    assert out.groupby("request").size().tolist() == [10, 10]
    assert not set(out[out["request"] == 0]["item_id"]) & set(bundle.histories[known_user])
    assert not set(out[out["request"] == 1]["item_id"]) & set(some_items)
    assert out[out["request"] == 1]["unknown_items"].iloc[0] == ["no-such-course"]
    assert out.groupby("request")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    with pytest.raises(RequestError, match="nothing to recommend from"):
        model.predict(pd.DataFrame({"user_id": ["nobody"], "history": [None]}))
    with pytest.raises(RequestError, match="none of the history's 2 item ids is known"):
        model.predict(pd.DataFrame({"user_id": [None], "history": [["no-such-course", "nor-this"]]}))
