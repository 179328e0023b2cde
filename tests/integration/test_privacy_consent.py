"""A full pipeline run on platforms that export emails, phones and consent flags: no raw identity leaves landing,
opted-out users never reach training or evaluation data, and they get only non-personalised recommendations."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from tests.integration.inline import run_inline

from bench.synthetic import write_config
from transfer_rec.io.state import StateLayout
from transfer_rec.serving.withheld import WITHHELD_COUNT_TAG, WITHHELD_TAG, Withheld
from transfer_rec.stages import pipeline

SALT = "pii-salt-for-the-privacy-test-0123"


def _add_identity(folder: Path, sep: str, prefix: str, opt_out_every: int | None) -> pd.DataFrame:
    users = pd.read_csv(folder / "users.txt", sep=sep, dtype=str)
    n = len(users)
    users["mail"] = [f"Person{i}@Example.org" for i in range(n)]
    users["tel"] = [f"+44 20 7946 {i:04d}" for i in range(n)]
    if opt_out_every:
        users["consent"] = ["no" if i % opt_out_every == 0 else "yes" for i in range(n)]
    users.to_csv(folder / "users.txt", sep=sep, index=False)
    return users


def test_no_raw_identity_leaves_landing_and_opted_out_users_are_excluded(pipeline_env, monkeypatch):
    env = pipeline_env()
    monkeypatch.setenv("TRANSFER_REC_PII_SALT", SALT)
    # credentials in the environment, as a deployment has them: none may end up in any output or logged param
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST-SENTINEL-KEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-sentinel-secret-0b5e7")
    village = _add_identity(env["exports"] / "village", ",", "vi", opt_out_every=4)
    _add_identity(env["exports"] / "campus", "\t", "ca", opt_out_every=None)  # same people by email: linkable
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][0]["columns"]["users"].update({"mail": "email", "tel": "phone"})
    raw["platforms"][1]["columns"]["users"].update({"mail": "email", "tel": "phone", "consent": "consent"})
    write_config(env["config"], raw)

    result = run_inline("privacy")
    assert result["published"]["opted_out_users"] > 0
    state = env["state"]
    secrets = (
        set(village["mail"])
        | {m.lower() for m in village["mail"]}
        | set(village["tel"])
        | {SALT, "AKIA-TEST-SENTINEL-KEY", "test-sentinel-secret-0b5e7"}
    )

    # every file outside landing/quarantine: parquet cells parsed, anything else scanned as bytes
    for path in state.rglob("*"):
        if not path.is_file() or {"landing", "quarantine"} & set(path.relative_to(state).parts):
            continue
        if path.suffix == ".parquet":
            text = "\n".join(str(c) for c in pd.read_parquet(path).to_numpy().ravel())
            leaked = {s for s in secrets if s in text}
        else:
            blob = path.read_bytes()
            leaked = {s for s in secrets if s.encode() in blob}
        assert not leaked, f"{path} holds raw identity values {sorted(leaked)[:3]}"
    blob = (state.parent / "mlflow.db").read_bytes()
    assert not {s for s in secrets if s.encode() in blob}, "MLflow params/tags hold raw identity values"

    unified = Path((state / "lake" / "unified" / "current").resolve())
    users = pd.read_parquet(unified / "users.parquet")
    linked = users.dropna(subset=["link_id"]).groupby("link_id")["platform"].nunique()
    assert (linked == 2).sum() >= 10, "people present on both platforms share a link id"
    opted_out = set("village:" + village.loc[village["consent"] == "no", "uid"])
    assert opted_out and opted_out <= set(users.loc[~users["consent"], "user_id"])
    # the link table: hashes and account keys only, and no opted-out person in it
    links = pd.read_parquet(unified / "links.parquet")
    assert list(links.columns) == ["link_id", "platform", "user_id"]
    assert not links["user_id"].isin(opted_out).any() and users.loc[~users["consent"], "link_id"].isna().all()
    assert (links.groupby("link_id")["platform"].nunique() == 2).sum() >= 10
    # evaluation reports the target's users by the sources they are linked on, with CIs
    report = json.loads(Path(result["evaluation"]["report"]).read_text())
    linked = [
        r
        for r in report["segments"]
        if r["segment"] == "linked on 1 source" and r["contender"] == "candidate" and r["metric"] == "ndcg"
    ]
    assert linked and linked[0]["users"] > 0 and linked[0]["ci_low"] <= linked[0]["mean"] <= linked[0]["ci_high"]
    inter = pd.read_parquet(unified / "interactions.parquet")
    assert not inter["user_id"].isin(opted_out).any()
    for path in (state / "lake" / "features").rglob("*.parquet"):
        frame = pd.read_parquet(path)
        if "user_id" in frame:
            assert not frame["user_id"].isin(opted_out).any(), f"{path} holds opted-out users"

    recs = pd.read_parquet(state / "recommendations" / "village" / "recommendations.parquet")
    theirs = recs[recs["user_id"].isin(opted_out)]
    assert set(theirs["user_id"]) == opted_out and not theirs["personalised"].any()
    assert theirs.groupby("user_id")["item_id"].apply(tuple).nunique() == 1, "the same list for everyone"
    assert recs.loc[~recs["user_id"].isin(opted_out), "personalised"].all()


def test_a_champion_holding_people_who_withdrew_consent_gives_way(pipeline_env, monkeypatch):
    """Consent withdrawn after a champion was trained: the next run's evaluation counts the accounts the champion
    still holds, and the gate requires its replacement instead of comparing with it."""
    env = pipeline_env()
    monkeypatch.setenv("TRANSFER_REC_PII_SALT", SALT)
    folder = env["exports"] / "village"
    users = _add_identity(folder, ",", "vi", opt_out_every=None)
    users["consent"] = "yes"
    users.to_csv(folder / "users.txt", index=False)
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["columns"]["users"].update({"mail": "email", "consent": "consent"})
    write_config(env["config"], raw)
    first = run_inline("consent-1", gate_override="promote")
    assert first["evaluation"]["champion_withdrawn"] == 0
    assert not any("withheld consent" in r for r in first["decision"]["reasons"])

    users.loc[users.index[:5], "consent"] = "no"  # five people withdraw
    users.to_csv(folder / "users.txt", index=False)
    second = run_inline("consent-2")
    assert second["evaluation"]["champion_withdrawn"] == 5
    decision = second["decision"]
    line = next(r for r in decision["reasons"] if "withheld consent" in r)
    assert "holds 5 account(s)" in line
    assert not any(
        r.startswith("pass: ndcg vs champion") or r.startswith("FAIL: ndcg vs champion") for r in decision["reasons"]
    )
    assert decision["promoted"] == line.startswith("pass")
    assert any(r.startswith("info (not required)") and "vs champion" in r for r in decision["reasons"])

    # two more withdraw, and no candidate can meet the floors: the champion stays, and the operator is told so,
    # on this run and on every later run that skips for unchanged inputs (the same rejected candidate again)
    users.loc[users.index[5:7], "consent"] = "no"
    users.to_csv(folder / "users.txt", index=False)
    raw["gate"] = {**raw.get("gate", {}), "min_ndcg": 0.99}
    write_config(env["config"], raw)
    failures = StateLayout.from_env().reports / "failures.log"
    third = run_inline("consent-3")
    assert not third["decision"]["promoted"] and third["evaluation"]["champion_withdrawn"] >= 2
    alert = f"ATTENTION transfer_rec-village: champion v{third['evaluation']['champion_version']} holds"
    assert failures.read_text().count(alert) == 1, failures.read_text()
    rejected = mlflow.MlflowClient().get_model_version("transfer_rec-village", third["decision"]["version"])
    assert rejected.tags["gate.champion_withdrawn"] == str(third["evaluation"]["champion_withdrawn"])
    # the champion that stays names them for its servers (test_http_serving shows a server honouring the list)
    kept = mlflow.MlflowClient().get_model_version("transfer_rec-village", third["evaluation"]["champion_version"])
    assert kept.tags[WITHHELD_COUNT_TAG] == str(third["evaluation"]["champion_withdrawn"])
    listed = Withheld.read(Path(mlflow.artifacts.download_artifacts(kept.tags[WITHHELD_TAG])))
    withdrew = {("village", f"village:{uid}") for uid in users.loc[users["consent"] == "no", "uid"]}
    assert listed.accounts <= withdrew and len(listed.accounts) == third["evaluation"]["champion_withdrawn"]
    # and the link ids the champion holds them under (none here: no source shares village's people; the unit tests
    # in test_serving_withheld.py follow links)
    held = mlflow.pyfunc.load_model(f"models:/transfer_rec-village/{kept.version}").unwrap_python_model().bundle
    theirs = held.accounts[[(p, u) in withdrew for p, u in zip(held.accounts["platform"], held.accounts["user_id"])]]
    assert listed.links == (set(theirs["link_id"]) if len(theirs) else set())
    run = pipeline.plan({"run_key": "consent-4"}, airflow_run_id="consent-4")
    unified = pipeline.unify(run, [pipeline.validate(run, pipeline.pull(run, p)) for p in run["platforms"]])
    checked = pipeline.check_inputs(run, unified)
    assert not checked["changed"] and alert in checked["reason"], checked
    assert failures.read_text().count(alert) == 2
