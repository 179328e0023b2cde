"""The registry path without Airflow: gate decisions on real runs, aliases, rollback, and the pyfunc model served
from `models:/<name>@champion` for known and new users."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from inline import run_inline
from mlflow.exceptions import MlflowException

from transfer_rec import cli
from transfer_rec.config import GateConfig
from transfer_rec.io.state import StateLayout, Superseded
from transfer_rec.manifests import Evaluation
from transfer_rec.serving.pyfunc import RequestError
from transfer_rec.stages.promote import ChampionMoved, promote, rollback

MODEL = "transfer_rec-village"


def aliases() -> dict[str, str]:
    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model(MODEL).aliases.items()}


def test_gate_aliases_override_dry_run_and_rollback(pipeline_env, monkeypatch):
    from transfer_rec.stages import pipeline

    env = pipeline_env()
    first = run_inline("r1", gate_override="promote")
    assert first["decision"]["promoted"] and aliases() == {"champion": "1"}
    assert "champion" not in first["evaluation"]["metrics"], "the first model has no champion to meet"
    run_inline("r1", gate_override="promote")  # a retry of the same run registers nothing new
    # the same run key triggered again with a rejecting override or as a dry run: its version is champion and stays
    # so, its record untouched (no "rejected" on the serving model, no challenger alias on it)
    for override, dry_run in (("reject", False), ("none", True)):
        layout, evaluation = StateLayout.from_env(), Evaluation.model_validate(first["evaluation"])
        later = promote(evaluation, GateConfig(), layout, "r1", override, dry_run=dry_run)
        assert not later.promoted and "is champion already" in later.reasons[-1], later
        assert aliases() == {"champion": "1"}
        assert mlflow.MlflowClient().get_model_version(MODEL, "1").tags["gate.decision"] == "promoted"
    # the operator's commands say what they cannot do, in one line
    with pytest.raises(SystemExit, match="cannot roll back village: it needs a champion and a previous_champion"):
        cli.main(["rollback", "village"])
    with pytest.raises(SystemExit, match="no model to serve at models:/transfer_rec-nowhere@champion"):
        cli.main(["serve", "--model", "models:/transfer_rec-nowhere@champion"])
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")) == 1

    second = run_inline("r2", gate_override="reject")
    assert not second["decision"]["promoted"]
    assert aliases() == {"champion": "1", "challenger": "2"}
    assert "champion" in second["evaluation"]["metrics"], "later candidates are compared with the champion"
    assert set(second["evaluation"]["paired_vs_champion"]) == {"ndcg", "retention"}
    card = mlflow.MlflowClient().get_model_version(MODEL, "2").description.replace("&emsp;", "")
    assert "| candidate |" in card and "| champion |" in card and "not promoted" in card
    # the whole card is on the candidate's run too (the description is cut past the registry's column)
    whole = mlflow.artifacts.load_text(f"runs:/{second['evaluation']['candidate']['run_id']}/model_card.md")
    assert whole.replace("&emsp;", "") == card
    tags = mlflow.MlflowClient().get_model_version(MODEL, "2").tags
    assert tags["gate.decision"] == "rejected" and "override" in tags["gate.reasons"]
    assert tags["gate.override"] == "reject"

    dry = run_inline("r3", dry_run=True)
    assert not dry["decision"]["promoted"] and not dry["published"]["published"]
    assert aliases() == {"champion": "1", "challenger": "2"}, "a dry run moves no alias"
    assert mlflow.MlflowClient().get_model_version(MODEL, "3").tags["dry_run"] == "true"

    fourth = run_inline("r4", gate_override="promote")
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "1"
    again = promote(
        Evaluation.model_validate(fourth["evaluation"]), GateConfig(), StateLayout.from_env(), "r4", "promote"
    )
    assert again.previous_champion == "1", "a retry after the crowning names the one it replaced, not itself"
    rollback("village", StateLayout.from_env())
    assert aliases()["champion"] == "1" and aliases()["previous_champion"] == "4"

    # r4's promote run again (a retry or a cleared task) after the rollback: crowning v4 again would undo it
    with pytest.raises(ChampionMoved, match=r"v1 is champion again because an operator rolled back from candidate v4"):
        promote(Evaluation.model_validate(fourth["evaluation"]), GateConfig(), StateLayout.from_env(), "r4", "promote")
    assert aliases()["champion"] == "1" and aliases()["previous_champion"] == "4", "the rollback stands"
    cli.main(["rollback", "village"])  # what the refusal says to do
    assert aliases()["champion"] == "4"

    # r2 was evaluated against v1; crowned over v4 it would replace a model it was never measured against
    with pytest.raises(ChampionMoved, match=r"the champion is v4 now, but candidate v2 was evaluated against v1"):
        promote(Evaluation.model_validate(second["evaluation"]), GateConfig(), StateLayout.from_env(), "r2", "promote")
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "1", "nothing moved"

    # v2 (evaluated against v1) promoted while v1 is in front; an operator moves the champion while promote writes
    # the version's card: nothing is crowned, and the version does not say it was promoted
    from transfer_rec.registry import models as registry

    mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", "1")
    written = registry.describe

    def and_meanwhile(*args, **kwargs):
        written(*args, **kwargs)
        if not monkeypatch_moved:
            monkeypatch_moved.append(True)
            mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", "4")

    monkeypatch_moved: list[bool] = []
    monkeypatch.setattr(registry, "describe", and_meanwhile)
    with pytest.raises(ChampionMoved, match=r"the champion is v4 now, but candidate v2 was evaluated against v1"):
        promote(Evaluation.model_validate(second["evaluation"]), GateConfig(), StateLayout.from_env(), "r2", "promote")
    monkeypatch.setattr(registry, "describe", written)
    version = mlflow.MlflowClient().get_model_version(MODEL, "2")
    assert version.tags["gate.decision"] == "rejected" and "the champion is v4 now" in version.tags["gate.reasons"]
    assert "**Gate: not promoted**" in version.description
    run = second["evaluation"]["candidate"]["run_id"]
    assert mlflow.artifacts.load_dict(f"runs:/{run}/provenance.json")["gate"]["promoted"] is False
    assert "**Gate: not promoted**" in mlflow.artifacts.load_text(f"runs:/{run}/model_card.md")
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "1", "not crowned"

    # v5, trained on the platform's next export, is rolled back to v4: a run on v5's inputs would rebuild v5
    # (training is deterministic) and the gate would crown it again; it trains nothing unless forced
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export, dtype=str)
    frame.iloc[: len(frame) - 40].to_csv(export, index=False)
    fifth = run_inline("r5", gate_override="promote")
    rollback("village", StateLayout.from_env())
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "5"
    # r2's promote cleared now: judged on the export before, it is refused whatever its gate would say
    with pytest.raises(Superseded, match="promote village: this run's unified data .* is no longer current"):
        promote(Evaluation.model_validate(second["evaluation"]), GateConfig(), StateLayout.from_env(), "r2", "promote")
    assert aliases()["champion"] == "4"

    # and v5, rolled back from, is not crowned again by its own promote run again
    with pytest.raises(ChampionMoved, match=r"v4 is champion again because an operator rolled back from candidate v5"):
        promote(Evaluation.model_validate(fifth["evaluation"]), GateConfig(), StateLayout.from_env(), "r5", "promote")

    def check(**params) -> dict:
        run = pipeline.plan({"run_key": "after-rollback", **params}, airflow_run_id="after-rollback")
        validated = [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]]
        return pipeline.check_inputs(run, pipeline.unify(run, validated))

    checked = check()
    assert not checked["changed"] and "village v5 (rolled back from by the operator)" in checked["reason"], checked
    assert check(force=True)["changed"]

    # a person v5 holds withdraws consent: rolling back to v5 would answer about them again
    from transfer_rec.registry.models import PREVIOUS, champion_bundle

    users_path = StateLayout.from_env().unified / "current" / "users.parquet"
    users = pd.read_parquet(users_path)
    held = next(iter(champion_bundle("village", PREVIOUS)[0].histories))
    users.loc[(users["platform"] == "village") & (users["user_id"] == held), "consent"] = False
    users.to_parquet(users_path)
    with pytest.raises(SystemExit, match=r"cannot roll back village: .* v5 holds 1 account.*withheld consent.*--force"):
        cli.main(["rollback", "village"])
    assert aliases()["champion"] == "4" and aliases()["previous_champion"] == "5", "nothing moved"
    cli.main(["rollback", "village", "--force"])
    assert aliases()["champion"] == "5" and aliases()["previous_champion"] == "4"
    # a rollback stopped between its two alias writes (both on the restored version, still marked) is finished by
    # the next one, without --force: the restored model is already in front
    client = mlflow.MlflowClient()
    client.set_model_version_tag(MODEL, "5", "rollback.pending", "4")
    client.set_registered_model_alias(MODEL, "previous_champion", "5")
    cli.main(["rollback", "village"])
    assert aliases()["champion"] == "5" and aliases()["previous_champion"] == "4"
    assert "rollback.pending" not in client.get_model_version(MODEL, "5").tags
    # both aliases on one version without that mark (a crowning stopped between its writes): v5's old rollback.from
    # tag names a model rolled away from; nothing is moved back to it
    client.set_registered_model_alias(MODEL, "previous_champion", "5")
    with pytest.raises(SystemExit, match="both v5: nothing to return to"):
        cli.main(["rollback", "village"])
    assert aliases()["champion"] == "5" and aliases()["previous_champion"] == "5"


def test_champion_pyfunc_answers_known_and_new_users(pipeline_env):
    env = pipeline_env()
    first_two = _newcomers(env)
    first = run_inline("serve", gate_override="promote")
    _everyone_published(first, first_two)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    bundle = model.unwrap_python_model().bundle
    # a user with an item whose rating weight is not 1 (one rated other than 4)
    known_user = next((u for u, w in bundle.history_weights.items() if set(w) - {1.0}), None)
    assert known_user is not None and bundle.meta["rating_weight"] > 0, "the village's scores give weights"
    some_items = bundle.histories[known_user][:3]
    requests = pd.DataFrame({"user_id": [known_user, None], "history": [None, some_items + ["no-such-course"]]})
    out = model.predict(requests)
    assert sorted(out["request"].unique()) == [0, 1]
    assert out.groupby("request").size().tolist() == [10, 10]
    # answers name items by the platform's own ids
    own = bundle.native_of
    assert set(out["item_id"]) <= set(own.values())
    assert not set(out[out["request"] == 0]["item_id"]) & {own[i] for i in bundle.histories[known_user]}
    rated_low = bundle.disliked_items()
    assert rated_low, "the champion keeps what its users rated low"
    for user, items in list(rated_low.items())[:20]:
        served = model.predict(pd.DataFrame({"user_id": [user], "history": [[]]}), params={"k": 50})
        assert not set(served["item_id"]) & {own.get(i, i) for i in items}, user
    assert not set(out[out["request"] == 1]["item_id"]) & {own[i] for i in some_items}
    assert out[out["request"] == 1]["unknown_items"].iloc[0] == ["no-such-course"]
    assert out.groupby("request")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    # a known user's items count their rating weights, as evaluation judged the model, in the served answer and in
    # the published list alike
    published = pd.read_parquet(first["published"]["path"]).query("user_id == @known_user")
    assert list(published["platform_item_id"]) == list(out[out["request"] == 0]["item_id"])
    with pytest.raises(RequestError, match="nothing to recommend from"):
        model.predict(pd.DataFrame({"user_id": ["nobody"], "history": [None]}))
    with pytest.raises(RequestError, match="none of the history's 2 item ids is known"):
        model.predict(pd.DataFrame({"user_id": [None], "history": [["no-such-course", "nor-this"]]}))


def test_champion_answers_a_profile_only_request(pipeline_env):
    """k = 0: a new user with only a profile gets the profile prior's list; a different profile, a different list."""
    pipeline_env()
    run_inline("profile", gate_override="promote")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    bundle = model.unwrap_python_model().bundle
    vocabulary = bundle.profile_vocabulary
    assert vocabulary is not None, "the pipeline's fine-tune gives the served model a profile prior"
    first = {f: values[0] for f, values in vocabulary.items()}
    last = {f: values[-1] for f, values in vocabulary.items()}
    out = model.predict(
        pd.DataFrame([{"user_id": None, "history": None, **first}, {"user_id": None, "history": None, **last}])
    )
    assert out.groupby("request").size().tolist() == [10, 10]
    lists = out.groupby("request")["item_id"].apply(list)
    assert lists[0] != lists[1], "the profile, the only input, must change the list"
    prior = bundle.model.short_history.prior.score(pd.DataFrame([first]))[0]
    expected = bundle.native_ids[bundle.candidates][pd.Series(prior[bundle.candidates]).nlargest(10).index]
    assert lists[0] == expected.tolist(), "with no history the list is the profile prior's top 10"
    user = next(iter(bundle.histories))
    assert bundle.profile_of(user), "known users' profiles travel with the model"
    with pytest.raises(RequestError, match="unknown gender 'X'"):
        model.predict(pd.DataFrame([{"user_id": None, "history": None, **first, "gender": "X"}]))
    with pytest.raises(MlflowException, match="input types for column age"):  # the signature refuses it first
        model.predict(pd.DataFrame([{"user_id": None, "history": None, "age": 7}]))
    bundle.model.short_history = None  # a model without a prior cannot answer by profile, and says so
    with pytest.raises(RequestError, match="no profile prior"):
        model.predict(pd.DataFrame([{"user_id": None, "history": None, **first}]))


def _newcomers(env) -> pd.DataFrame:
    """Two users training leaves out: one with two enrolments (returned), one with none yet."""
    folder = env["exports"] / "village"
    inter = pd.read_csv(folder / "interactions.txt", dtype=str)
    users = pd.read_csv(folder / "users.txt", dtype=str)
    newcomers = users.iloc[:2].assign(**{users.columns[0]: ["newcomer-a", "newcomer-b"]})
    pd.concat([users, newcomers]).to_csv(folder / "users.txt", index=False)
    first_two = inter.iloc[:2].assign(learner="newcomer-a", score="5")
    pd.concat([inter, first_two]).to_csv(folder / "interactions.txt", index=False)
    return first_two


def _everyone_published(out: dict, first_two: pd.DataFrame) -> None:
    """Publish gives every consenting user a top-K: those below the training threshold too, from what they have."""
    recs = pd.read_parquet(out["published"]["path"])
    unified = pd.read_parquet(f"{out['features']['unified']}/users.parquet")
    assert set(recs["user_id"]) == set(unified.loc[unified["platform"] == "village", "user_id"])
    assert out["published"]["short_history_users"] >= 2
    for newcomer, seen in (("village:newcomer-a", set(first_two["course"])), ("village:newcomer-b", set())):
        theirs = recs[recs["user_id"] == newcomer]
        assert theirs["rank"].tolist() == list(range(1, 11)) and theirs["personalised"].all(), newcomer
        assert not set(theirs["platform_item_id"]) & seen
    a, b = (recs[recs["user_id"] == f"village:newcomer-{x}"]["item_id"].tolist() for x in "ab")
    assert a != b, "newcomer-a's two items change their list"
    # what a user rated low (seen, never a history item: training reads positives) is not published back to them
    interactions = pd.read_parquet(f"{out['features']['unified']}/interactions.parquet")
    low = interactions[(interactions["platform"] == "village") & (interactions["label"] == 0)]
    assert len(low), "the village's ratings include low ones"
    assert not len(recs.merge(low[["user_id", "item_id"]], on=["user_id", "item_id"]))
