"""Known users' scores precomputed at load: a request naming only a known user is a lookup that answers exactly as
scoring at request time does; anything the request adds (items, profile fields) is scored at request time."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.support import small_model

from transfer_rec.serving.bundle import ModelBundle
from transfer_rec.serving.pyfunc import RequestError, recommend_frame

ITEMS = np.array([f"i{j}" for j in range(12)])


def bundle() -> ModelBundle:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((30, 12)) < 0.35).astype(np.float32))
    valid = sp.csr_matrix((rng.random((30, 12)) < 0.1).astype(np.float32))
    model = small_model(12, hidden=8, epochs_finetune=2, patience=1, batch_size=8, seed=1)
    model.finetune(train, valid, np.arange(12) < 10)
    rows, cols = train.nonzero()
    histories = pd.DataFrame({"user_id": [f"u{r}" for r in rows], "item_id": ITEMS[cols]})
    return ModelBundle(model, ITEMS, np.arange(12) < 10, histories)


def test_known_user_lookup_answers_as_request_time_scoring():
    online, cached = bundle(), bundle()
    assert cached.precompute_known()
    scored = []
    score = cached.model.score
    cached.model.score = lambda history, *rest: scored.append(history.shape[0]) or score(history, *rest)
    requests = pd.DataFrame({"user_id": ["u1", "u2", None, "u3"], "history": [[], ["i11"], ["i0", "i4"], []]})
    expected = recommend_frame(online, requests, 5)
    got = recommend_frame(cached, requests, 5)
    pd.testing.assert_frame_equal(got, expected)
    # u1 and u3 were looked up; u2 (an added item) and the new user were scored at request time
    assert scored == [2]


def test_cache_is_skipped_past_its_size_limit():
    model_bundle = bundle()
    assert not model_bundle.precompute_known(max_entries=10)
    assert getattr(model_bundle, "_known_scores", None) is None


def test_a_link_id_names_a_target_account_only_when_it_has_one():
    base = bundle()
    accounts = pd.DataFrame(
        {
            "platform": ["t", "t", "t", "books"],
            "user_id": ["u1", "u2", "u3", "books:b1"],
            "link_id": ["one", "family", "family", "one"],
        }
    )
    linked = ModelBundle(
        base.model,
        ITEMS,
        np.arange(12) < 10,
        pd.DataFrame(columns=["user_id", "item_id"]),
        {"target": "t"},
        accounts=accounts,
    )
    assert linked.target_user_of("one") == "u1"
    assert linked.target_user_of("family") is None, "a family's shared address names neither account"
    assert linked.target_user_of("nobody") is None
    # and it names only those accounts: beside another user it is refused, not blended into their answer
    with pytest.raises(RequestError, match="'link_id' names another person than user 'u5'"):
        recommend_frame(linked, pd.DataFrame({"user_id": ["u5"], "link_id": ["family"], "history": [["i0"]]}), 3)
    assert len(
        recommend_frame(linked, pd.DataFrame({"user_id": ["u2"], "link_id": ["family"], "history": [["i0"]]}), 3)
    )
    # a field sent as "" is a field left out
    blank = pd.DataFrame({"user_id": ["u1"], "link_id": [""], "platform": [""], "history": [["i0"]]})
    assert len(recommend_frame(linked, blank, 3)) == 3


def test_an_anonymous_row_beside_a_named_one_answers_null_not_nan():
    out = recommend_frame(bundle(), pd.DataFrame({"user_id": ["u1", None], "history": [[], ["i0"]]}), 2)
    assert out["user_id"].tolist() == ["u1", "u1", None, None]
    # "" and pd.NA (a text column built in Python) are no user either
    for nobody in ("", pd.NA):
        requests = pd.DataFrame({"user_id": pd.array(["u1", nobody], dtype=object), "history": [[], ["i0"]]})
        assert recommend_frame(bundle(), requests, 2)["user_id"].tolist() == ["u1", "u1", None, None]
    # what MLflow's scoring server writes: strict JSON (no bare NaN)
    json.dumps(out.to_dict(orient="records"), allow_nan=False, default=list)


def weighted_bundle() -> tuple[ModelBundle, sp.csr_matrix]:
    """A bundle whose known users' items count their rating weights (1.25, 0.75, ...), and those histories as a
    matrix over its items."""
    base = bundle()
    rng = np.random.default_rng(3)
    history = sp.csr_matrix((rng.random((30, 12)) < 0.35).astype(np.float32))
    history.data = rng.choice([0.75, 1.0, 1.25], size=history.nnz).astype(np.float32)
    rows, cols = history.nonzero()
    frame = pd.DataFrame(
        {"user_id": [f"u{r}" for r in rows], "item_id": ITEMS[cols], "weight": np.asarray(history[rows, cols]).ravel()}
    )
    return ModelBundle(base.model, ITEMS, np.arange(12) < 10, frame, {"target": "t"}), history


def test_a_known_user_is_ranked_from_their_weighted_history_online_cached_and_after_saving(tmp_path):
    online, history = weighted_bundle()
    users = [f"u{r}" for r in range(30) if history[r].nnz]
    requests = pd.DataFrame({"user_id": users, "history": [[] for _ in users]})
    expected = online.model.score(history[[int(u[1:]) for u in users]])
    got = recommend_frame(online, requests, 3)
    first = got[got["rank"] == 1].set_index("user_id")["score"]
    best = np.where(
        np.asarray(history[[int(u[1:]) for u in users]].todense()) > 0,
        -np.inf,
        np.where(np.arange(12) < 10, 0, -np.inf),
    )
    np.testing.assert_allclose(first.loc[users].to_numpy(), (expected + best).max(axis=1), rtol=1e-6)
    # the weights reach the model: the binary history scores differently
    binary = history[[int(u[1:]) for u in users]].copy()
    binary.data[:] = 1.0
    assert not np.allclose(online.model.score(binary), expected)
    cached = ModelBundle.load(online.save(tmp_path / "b"))
    assert cached.precompute_known()
    pd.testing.assert_frame_equal(recommend_frame(cached, requests, 3), got)
    # an item the request adds counts 1, the stored ones keep their weights
    added = recommend_frame(online, pd.DataFrame({"user_id": ["u1"], "history": [["i0"]]}), 3)
    with_item = history[1].copy().tolil()
    with_item[0, 0] = 1.0
    scores = online.model.score(sp.csr_matrix(with_item))[0]
    scores[np.asarray(with_item.todense()).ravel() > 0] = -np.inf
    scores[10:] = -np.inf
    np.testing.assert_allclose(added["score"].to_numpy(), np.sort(scores)[::-1][:3], rtol=1e-6)


def test_the_stored_input_example_holds_nobodys_data():
    from transfer_rec.serving.pyfunc import input_example

    served = bundle()
    example = input_example(served)
    assert example["user_id"].isna().all(), "no known user's id"
    named = {item for items in example["history"].dropna() for item in items}
    assert named and named <= set(ITEMS[served.candidates])
    # and the example is a request the model answers
    assert len(recommend_frame(served, example, 3)) == 3 * len(example)


def test_items_a_known_user_rated_low_are_never_recommended_back(tmp_path):
    """Training reads positives only, so a low-rated item is no history item: without its own list, the user who
    rated it 1 star would be offered it."""
    base = bundle()
    user = "u1"
    offered = recommend_frame(base, pd.DataFrame({"user_id": [user]}), 3)["item_id"].tolist()
    low = pd.DataFrame({"user_id": [user, user], "item_id": [offered[0], "not-in-the-model"]})
    rated = ModelBundle(base.model, ITEMS, np.arange(12) < 10, _histories(base), base.meta, disliked=low)
    for served in (rated, ModelBundle.load(rated.save(tmp_path / "bundle"))):
        again = recommend_frame(served, pd.DataFrame({"user_id": [user]}), 3)["item_id"].tolist()
        assert offered[0] not in again and again[:2] == offered[1:], "the rest of the list moves up"
        assert served.precompute_known()
        assert recommend_frame(served, pd.DataFrame({"user_id": [user]}), 3)["item_id"].tolist() == again
    # nobody else's list changes, and a bundle saved before the list loads with none
    pd.testing.assert_frame_equal(
        recommend_frame(rated, pd.DataFrame({"user_id": ["u2"]}), 3),
        recommend_frame(base, pd.DataFrame({"user_id": ["u2"]}), 3),
    )
    (tmp_path / "bundle" / "disliked.parquet").unlink()
    assert ModelBundle.load(tmp_path / "bundle").disliked_items() == {}


def _histories(served: ModelBundle) -> pd.DataFrame:
    rows = [(u, i) for u, items in served.histories.items() for i in items]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])
