"""A whole pipeline run on three platforms that share people and no items (planted: each person keeps one taste on
every platform): the target's model learns from its linked people, newcomers known on a source are recommended from
their other-platform histories, and a request may name a person by another platform's account or by link id."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from tests.conftest import use_world
from tests.integration.inline import run_inline
from tests.model.planted_linked import export_platforms, planted_people

from transfer_rec.serving.pyfunc import RequestError

SALT = "linked-people-test-salt-0123456789"


@pytest.fixture(scope="module")
def linked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("linked")
    world = planted_people(seed=11, people=600, source_items=8)
    generated = export_platforms(world, root / "exports", target="shop", seed=11)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_REC_PII_SALT", SALT)
        env = use_world(root, mp, generated, features={"new_users": 0.25})
        result = run_inline("linked", target="shop")
        unified = Path((env["state"] / "lake" / "unified" / "current").resolve())
        links = pd.read_parquet(unified / "links.parquet")
        model = mlflow.pyfunc.load_model(result["evaluation"]["candidate"]["model_uri"])
        run = mlflow.get_run(result["evaluation"]["candidate"]["run_id"])
        yield {**result, "links": links, "model": model, "run": run, "exports": root / "exports"}


def _segment(report: dict, segment: str, contender: str) -> dict:
    rows = [
        r
        for r in report["segments"]
        if r["segment"] == segment and r["contender"] == contender and r["metric"] == "ndcg" and r["split"] == "test"
    ]
    assert rows, f"no {segment!r} row for {contender}"
    return rows[0]


def test_newcomers_known_on_a_source_are_found_through_it(linked_run):
    report = json.loads(Path(linked_run["evaluation"]["report"]).read_text())
    linked = _segment(report, "new to the target, on 2 sources", "candidate")
    popular = _segment(report, "new to the target, on 2 sources", "popularity")
    twin = _segment(report, "new to the target, on 2 sources", "target_only")
    assert linked["users"] >= 10
    # planted: a person's sources name their taste; the target alone knows only popularity and a profile
    assert linked["mean"] > popular["mean"] + 0.15, (linked, popular)
    assert linked["mean"] > twin["mean"] + 0.15, (linked, twin)
    assert linked["ci_low"] > popular["ci_high"]


def test_the_linked_settings_are_logged_with_the_candidate(linked_run):
    params = linked_run["run"].data.params
    assert params["linked.new_weight.books"] == "1.0" and params["linked.new_weight.films"] == "1.0"
    assert int(params["linked.target_users_linked"]) > 100
    assert "linked.new_simulated_ndcg" in linked_run["run"].data.metrics
    report = json.loads(Path(linked_run["evaluation"]["report"]).read_text())
    assert report["linked"]["newcomers_from"] == ["books", "films"] and report["linked"]["people"] > 500


def test_a_request_may_name_a_person_by_another_platforms_account_or_link_id(linked_run):
    links, model = linked_run["links"], linked_run["model"]
    # someone on books and not on the target at all: a newcomer
    books = links[
        (links["platform"] == "books") & ~links["link_id"].isin(links.loc[links["platform"] == "shop", "link_id"])
    ]
    person = books["link_id"].iloc[0]
    native = books["user_id"].iloc[0].split(":", 1)[1]
    by_account = model.predict(pd.DataFrame({"platform": ["books"], "user_id": [native]}))
    by_link = model.predict(pd.DataFrame({"link_id": [person]}))
    assert len(by_account) == 10 and by_account["item_id"].str.startswith("shop-").all()
    assert list(by_account["item_id"]) == list(by_link["item_id"])
    used = list(by_account["platforms_used"].iloc[0])
    assert "books" in used and "shop" not in used, used
    # the same account by its unified id answers the same
    unified = model.predict(pd.DataFrame({"platform": ["books"], "user_id": [books["user_id"].iloc[0]]}))
    assert list(unified["item_id"]) == list(by_account["item_id"])


def test_a_person_named_by_a_source_account_is_still_the_target_user_they_are(linked_run):
    links, model = linked_run["links"], linked_run["model"]
    on_both = links[links["platform"] == "books"].merge(
        links[links["platform"] == "shop"], on="link_id", suffixes=("_books", "_shop")
    )
    person = on_both.iloc[0]
    own = model.predict(pd.DataFrame({"user_id": [person["user_id_shop"]]}))
    by_link = model.predict(pd.DataFrame({"link_id": [person["link_id"]]}))
    by_books = model.predict(pd.DataFrame({"platform": ["books"], "user_id": [person["user_id_books"]]}))
    for other in (by_link, by_books):
        assert list(other["item_id"]) == list(own["item_id"])
        assert list(other["platforms_used"].iloc[0]) == list(own["platforms_used"].iloc[0])
    assert "shop" in list(own["platforms_used"].iloc[0])
    # the same person named twice agrees; two people in one row are refused, not blended
    same = model.predict(pd.DataFrame({"user_id": [person["user_id_shop"]], "link_id": [person["link_id"]]}))
    assert list(same["item_id"]) == list(own["item_id"])
    other = links.loc[(links["platform"] == "books") & (links["link_id"] != person["link_id"]), "link_id"].iloc[0]
    with pytest.raises(RequestError, match="row 0: 'link_id' names another person than user"):
        model.predict(pd.DataFrame({"user_id": [person["user_id_shop"]], "link_id": [other]}))
    with pytest.raises(RequestError, match="row 0: 'link_id' names another person than books account"):
        model.predict(pd.DataFrame({"platform": ["books"], "user_id": [person["user_id_books"]], "link_id": [other]}))
    # a null k is the default, not a server error
    assert len(model.predict(pd.DataFrame({"user_id": [person["user_id_shop"]]}), params={"k": None})) == 10


def test_answers_never_hold_an_item_the_user_has_and_match_the_published_lists(linked_run):
    model, features = linked_run["model"], linked_run["features"]
    published = pd.read_parquet(linked_run["published"]["path"])
    every = pd.read_parquet(Path(features["dir"]) / "shop.interactions.parquet")  # all three splits
    native = pd.read_parquet(Path(features["unified"]) / "item_ids.parquet").query("platform == 'shop'")
    key_of = dict(zip(native["native_id"], native["item_id"]))
    mine = published[published["personalised"]]
    user = every.loc[every["split"] == "test", "user_id"].value_counts().index[0]
    has = set(every.loc[every["user_id"] == user, "item_id"])
    answer = model.predict(pd.DataFrame({"user_id": [user]}))
    assert list(answer["item_id"]) == list(mine.loc[mine["user_id"] == user, "platform_item_id"])
    # a k past the catalogue's unseen items: fewer answers, none seen (test split included), none of another
    # platform, every score finite
    whole = model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 1000})
    assert 0 < len(whole) <= every["item_id"].nunique() - len(has)
    assert whole["item_id"].isin(list(key_of)).all()
    assert not {key_of[i] for i in whole["item_id"]} & has
    assert np.isfinite(whole["score"].to_numpy(dtype=float)).all()


def test_an_unknown_link_id_is_named_in_the_refusal(linked_run):
    with pytest.raises(RequestError, match="link id 'nobody' is not a person this model knows on a source"):
        linked_run["model"].predict(pd.DataFrame({"link_id": ["nobody"]}))


def test_a_newcomer_on_no_platform_gets_a_clear_refusal_or_the_profile_answer(linked_run):
    model = linked_run["model"]
    with pytest.raises(RequestError, match="platform 'games' is not linked to 'shop'.*books"):
        model.predict(pd.DataFrame({"platform": ["games"], "user_id": ["g1"]}))
    with pytest.raises(RequestError, match="unknown user 'nobody' on 'books'"):
        model.predict(pd.DataFrame({"platform": ["books"], "user_id": ["nobody"]}))
    with pytest.raises(RequestError, match="give its 'user_id' too"):
        model.predict(pd.DataFrame({"platform": ["books"], "link_id": [None], "user_id": [None]}))


def test_no_raw_email_reaches_the_model_artifacts(linked_run):
    users = pd.read_csv(linked_run["exports"] / "books" / "users.tsv", sep="\t", dtype=str)
    secrets = set(users["email"]) | {e.lower() for e in users["email"]} | {SALT}
    folder = Path(linked_run["evaluation"]["candidate"]["bundle"])
    assert any(p.is_file() for p in folder.rglob("*")), f"{folder}: no model files to check"
    for path in folder.rglob("*"):
        if path.is_file():
            blob = path.read_bytes() if path.suffix != ".parquet" else pd.read_parquet(path).to_csv().encode()
            assert not {s for s in secrets if s.encode() in blob}, path


def test_a_joint_catalogue_past_the_limit_leaves_the_part_out_and_says_why(linked_run):
    import numpy as np

    from transfer_rec.manifests import FeatureSet
    from transfer_rec.stages.features import PlatformData
    from transfer_rec.stages.linked import fit_linked

    features = FeatureSet.model_validate(linked_run["features"])
    target = PlatformData.of(features, "shop")
    fit = fit_linked(features, target, "shop", ["books", "films"], 10, 0, lambda rows: np.zeros(1), max_items=20)
    assert fit.part is None and "exceed training.linked_max_items (20)" in fit.reason, fit.reason
