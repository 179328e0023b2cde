"""A served model given a withheld list (people who withdrew since it was trained) answers as if it did not know
them: no stored history or profile, and no link followed from or to their accounts."""

import types

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.support import small_model

from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.serving.pyfunc import RequestError, _person, recommend_frame
from transfer_rec.serving.withheld import Withheld

ITEMS = np.array([f"i{j}" for j in range(12)])


def linked_bundle() -> ModelBundle:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((30, 12)) < 0.35).astype(np.float32))
    model = small_model(12, hidden=8, epochs_finetune=1, patience=1, batch_size=8, seed=1)
    model.finetune(train, train, np.ones(12, bool))
    rows, cols = train.nonzero()
    histories = pd.DataFrame({"user_id": [f"t:u{r}" for r in rows], "item_id": ITEMS[cols]})
    accounts = pd.DataFrame(
        {
            "platform": ["t", "books", "t", "books"],
            "user_id": ["t:u1", "books:b1", "t:u2", "books:b2"],
            "link_id": ["L1", "L1", "L2", "L2"],
        }
    )
    return ModelBundle(model, ITEMS, np.ones(12, bool), histories, {"target": "t"}, accounts=accounts)


def items(frame: pd.DataFrame) -> list[str]:
    return frame["item_id"].tolist()


def test_a_withheld_account_and_its_link_are_unknown_to_the_served_model():
    bundle = linked_bundle()
    gone = Withheld(frozenset({("t", "t:u1"), ("books", "books:b1")}), frozenset({"L1"}))
    known = pd.DataFrame({"user_id": ["t:u1"]})
    assert len(recommend_frame(bundle, known, 3)) == 3  # before the list
    for request, said in (
        (known, "unknown user 't:u1'"),
        (pd.DataFrame({"user_id": ["u1"]}), "unknown user 'u1'"),  # by the platform's own id too
        (pd.DataFrame({"link_id": ["L1"]}), "link id 'L1'"),
        (pd.DataFrame({"platform": ["books"], "user_id": ["b1"]}), "unknown user 'b1' on 'books'"),
    ):
        with pytest.raises(RequestError, match=said):
            recommend_frame(bundle, request, 3, gone)
    # with items of their own they are answered as anyone new with those items: nothing stored about them is used
    with_items = recommend_frame(bundle, pd.DataFrame({"user_id": ["t:u1"], "history": [["i0", "i5"]]}), 3, gone)
    anonymous = recommend_frame(bundle, pd.DataFrame({"history": [["i0", "i5"]]}), 3, gone)
    assert items(with_items) == items(anonymous)
    assert items(with_items) != items(recommend_frame(bundle, pd.DataFrame({"user_id": ["t:u1"]}), 3))
    # everyone else as before
    others = pd.DataFrame({"user_id": ["t:u2", "t:u3"]})
    pd.testing.assert_frame_equal(recommend_frame(bundle, others, 3, gone), recommend_frame(bundle, others, 3))


def test_a_person_who_withdrew_on_a_source_only_keeps_their_target_account_but_is_not_reached_through_it():
    bundle = linked_bundle()
    source_only = Withheld(frozenset({("books", "books:b2")}), frozenset({"L2"}))
    # named by their target account they are that account alone: the link to their books history is not followed
    assert _person(bundle, {"user_id": "t:u2"}, 0) == ("t:u2", "L2")
    assert _person(bundle, {"user_id": "t:u2"}, 0, source_only) == ("t:u2", None)
    assert _person(bundle, {"user_id": "t:u2", "link_id": "L2"}, 0, source_only) == ("t:u2", None)
    own = pd.DataFrame({"user_id": ["t:u2"]})
    pd.testing.assert_frame_equal(recommend_frame(bundle, own, 3, source_only), recommend_frame(bundle, own, 3))
    # their withdrawn books account, or the link, no longer leads to the target account
    assert len(recommend_frame(bundle, pd.DataFrame({"platform": ["books"], "user_id": ["b2"]}), 3)) == 3
    for request in (pd.DataFrame({"platform": ["books"], "user_id": ["b2"]}), pd.DataFrame({"link_id": ["L2"]})):
        with pytest.raises(RequestError, match="nothing to recommend from"):
            recommend_frame(bundle, request, 3, source_only)


def test_the_list_round_trips_and_a_damaged_one_is_refused_by_name(tmp_path):
    listed = Withheld(frozenset({("t", "t:u1"), ("books", "books:b1")}), frozenset({"L1"}))
    assert Withheld.read(listed.write(tmp_path / "withheld.json")) == listed
    assert not Withheld() and listed
    (tmp_path / "bad.json").write_text('{"accounts": [["t"]]}')
    with pytest.raises(ValueError, match="bad.json: not a withheld list"):
        Withheld.read(tmp_path / "bad.json")


def test_a_worker_that_has_not_read_its_list_answers_nothing(tmp_path, monkeypatch):
    """A worker started while the registry cannot be read does not know whom to withhold: it answers 503 (its health
    check too) until a check succeeds, instead of answering from people its version withholds."""
    import asyncio

    from transfer_rec.serving.http import Served

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")  # knows no such model
    answered = []

    async def app(scope, receive, send):
        answered.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def status_of(served: Served, path: str) -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(served({"type": "http", "path": path, "headers": []}, receive, send))
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    served = Served(app, "transfer_rec-t/1", ("transfer_rec-t", "champion", 60), model=None)
    served._check_logged()  # the registry has no such model: the check fails, logged
    assert [status_of(served, path) for path in ("/invocations", "/ping")] == [503, 503] and not answered
    assert status_of(Served(app, "transfer_rec-t/1"), "/ping") == 200, "a server that follows nothing answers"

    # the alias moved to a version this worker cannot load: it answers on with its own, under that one's list
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("transfer_rec-t")
    for _ in range(2):
        client.create_model_version("transfer_rec-t", str(tmp_path / "no-such-model"))
    client.set_registered_model_alias("transfer_rec-t", "champion", "2")
    model = types.SimpleNamespace(withheld=Withheld(frozenset({("t", "t:u1")})))
    served = Served(app, "transfer_rec-t/1", ("transfer_rec-t", "champion", 60), model=model)
    served._check_logged()
    assert served.version == "transfer_rec-t/1" and not model.withheld, "v1 names no list: nobody withheld"
    assert status_of(served, "/invocations") == 200 and answered[-1] == "/invocations"
