"""The transfer recommender's mechanics on tiny random data: candidates, persistence, strategies."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from tests.support import training

from transfer_rec.recommender.item_item import item_item_solve
from transfer_rec.recommender.transfer import TransferRecommender, item_settings

CONFIG = {"hidden": 8, "epochs_pretrain": 2, "epochs_finetune": 3, "patience": 2, "batch_size": 16, "seed": 3}


def random_rows(n_users: int, n_items: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))


def fitted(strategy: str = "full") -> tuple[TransferRecommender, sp.csr_matrix, np.ndarray, dict]:
    config = training(**CONFIG, strategy=strategy)
    model = TransferRecommender(30, config)
    model.pretrain(random_rows(60, 30, 1))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    model.finetune(train, random_rows(25, 30, 3).multiply(candidates).tocsr(), candidates)
    return model, train, candidates, before


def test_only_candidates_are_scored():
    model, train, candidates, _ = fitted()
    scores = model.score(train)
    assert np.isneginf(scores[:, ~candidates]).all()
    assert np.isfinite(scores[:, candidates]).all()


def test_state_round_trip_scores_identically_with_or_without_source():
    model, train, _, _ = fitted()
    for with_source in (True, False):
        copy = TransferRecommender.from_state(model.state(with_source=with_source))
        np.testing.assert_array_equal(copy.score(train), model.score(train))
    assert TransferRecommender.from_state(model.state(with_source=False)).source is None


def test_before_a_fine_tune_the_item_item_part_is_empty_and_holds_no_items_by_items_array():
    model = TransferRecommender(30, training(**CONFIG))
    model.pretrain(random_rows(60, 30, 1))
    history = random_rows(5, 30, 4)
    for copy in (model, TransferRecommender.from_state(model.state())):
        # a dense items x items array of zeros here was 7.2 GiB per copy at 43,000 items
        assert sp.issparse(copy.weights) and copy.weights.nnz == 0 and copy.weights.shape == (30, 30)
        assert not (copy._item_item(history) != 0).any()
    assert isinstance(model.state()["weights"], dict)


def test_freeze_encoder_keeps_the_pretrained_encoder():
    model, _, _, before = fitted("freeze_encoder")
    assert torch.equal(model.encoder.enc.weight, before["enc.weight"])
    assert not torch.equal(model.encoder.dec.weight, before["dec.weight"])
    full, _, _, before_full = fitted("full")
    assert not torch.equal(full.encoder.enc.weight, before_full["enc.weight"])


def test_item_item_solve_has_zero_diagonal_and_reconstructs():
    x = random_rows(200, 12, 4).toarray().astype(np.float64)
    weights = item_item_solve(x.T @ x, lam=1.0)
    assert np.allclose(np.diag(weights), 0)
    assert np.linalg.norm(x - x @ weights) < np.linalg.norm(x)


def test_item_item_solve_matches_a_general_inverse():
    x = random_rows(200, 12, 5).toarray().astype(np.float64)
    gram = x.T @ x
    expected = np.linalg.inv(gram + np.diag(3.0 + 0.5 * np.diag(gram)))
    expected = -expected / np.diag(expected)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(item_item_solve(gram, lam=3.0, drop_p=1 / 3), expected, atol=1e-10)


def test_finetune_keeps_the_item_item_setting_best_on_valid():
    grid = ((0.1, 1.0, 0.0), (2.0, 50.0, 0.5))
    config = training(**CONFIG, item_grid=grid)
    model = TransferRecommender(30, config)
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    valid = random_rows(25, 30, 3).multiply(candidates).tocsr()
    # a source that knows valid's co-occurrences: kept, so every alpha of the grid is tried
    model.pretrain(sp.vstack([valid] * 3))
    history = model.finetune(train, valid, candidates)
    assert model.source_weights == {"source": 1.0}
    tried = [e for e in history if e["stage"] == "item_item"]
    assert [(e["alpha"], e["lam"], e["drop_p"]) for e in tried] == item_settings(config)
    best = max(tried, key=lambda e: e["valid_ndcg"])
    assert model.item_params == (best["alpha"], best["lam"], best["drop_p"])
    copy = TransferRecommender.from_state(model.state())
    assert copy.item_params == model.item_params


def test_finetune_can_keep_the_mean_of_the_item_item_settings():
    grid = ((0.1, 1.0, 0.0), (2.0, 50.0, 0.5))
    config = training(**CONFIG, item_grid=grid, item_combine="mean")
    model = TransferRecommender(30, config)
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    valid = random_rows(25, 30, 3).multiply(candidates).tocsr()
    model.pretrain(sp.vstack([valid] * 3))
    history = model.finetune(train, valid, candidates)
    gram = (train.T @ train).toarray().astype(np.float64)
    solved = [
        item_item_solve(gram + alpha**2 * model.source_gram, lam, drop_p)[:, candidates]
        for alpha, lam, drop_p in item_settings(config)
    ]
    np.testing.assert_allclose(model.weights, np.mean(solved, axis=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(model.weights, solved[0], atol=1e-4)
    tried = [e for e in history if e["stage"] == "item_item"]
    best = max(tried, key=lambda e: e["valid_ndcg"])
    assert model.item_params == (best["alpha"], best["lam"], best["drop_p"])  # still names valid's favourite
    assert [e["settings"] for e in history if e["stage"] == "item_mean"] == [len(solved)]


def test_unknown_item_combine_is_refused():
    with pytest.raises(ValueError, match="item_combine"):
        training(item_combine="median")


def test_rating_weights_reach_the_item_item_part_only():
    model, train, _, _ = fitted()
    weighted = train.copy()
    weighted.data = np.random.default_rng(7).choice([0.75, 1.0, 1.25], size=len(weighted.data)).astype(np.float32)
    np.testing.assert_array_equal(model._encoded(weighted), model._encoded(train))
    np.testing.assert_allclose(model._item_item(weighted), weighted @ model.weights, rtol=1e-5)
    assert not np.allclose(model.score(weighted), model.score(train))


def test_a_source_that_does_not_help_gets_no_weight():
    config = training(**CONFIG)
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    valid = random_rows(25, 30, 3).multiply(candidates).tocsr()
    # "echo" knows valid's co-occurrences; "noise" is the same rows with the items permuted (wrong neighbours)
    useful = sp.vstack([valid] * 3).tocsr()
    noise = useful[:, np.random.default_rng(9).permutation(30)].tocsr()
    model = TransferRecommender(30, config)
    history = model.pretrain({"echo": useful, "noise": noise})
    assert len(history) == CONFIG["epochs_pretrain"] and model.source.shape[0] == 2 * useful.shape[0]
    history = model.finetune(train, valid, candidates)
    assert model.source_weights == {"echo": 1.0, "noise": 0.0}
    np.testing.assert_array_equal(model.source_gram, (useful.T @ useful).toarray())
    assert [(e["source"], e["weight"]) for e in history if e["stage"] == "source"] == [("echo", 1.0), ("noise", 0.0)]
    # the choice is part of the model: a copy scores the same and keeps the weights
    copy = TransferRecommender.from_state(model.state())
    assert copy.source_weights == model.source_weights
    np.testing.assert_array_equal(copy.score(train), model.score(train))


def test_past_item_dense_max_the_item_item_part_is_sparse_and_with_every_neighbour_the_same():
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    valid = random_rows(25, 30, 3).multiply(candidates).tocsr()
    source = random_rows(60, 30, 1)
    models = {}
    for name, dense_max in (("exact", 10_000), ("neighbours", 0)):
        model = TransferRecommender(30, training(**CONFIG, item_dense_max=dense_max, item_neighbours=29))
        model.pretrain({"a": source, "b": source[:, np.random.default_rng(5).permutation(30)].tocsr()})
        model.finetune(train, valid, candidates)
        models[name] = model
    exact, sparse = models["exact"], models["neighbours"]
    assert isinstance(exact.weights, np.ndarray) and sp.issparse(sparse.weights)
    assert sparse.source_weights == exact.source_weights
    np.testing.assert_allclose(sparse.weights.toarray(), exact.weights, rtol=1e-3, atol=1e-5)
    # saved and loaded, with or without the source rows, it scores the same
    for with_source in (True, False):
        copy = TransferRecommender.from_state(sparse.state(with_source=with_source))
        assert sp.issparse(copy.weights)
        np.testing.assert_array_equal(copy.score(train), sparse.score(train))


def test_few_neighbours_keep_the_weights_sparse():
    candidates = np.arange(30) < 20
    model = TransferRecommender(30, training(**CONFIG, item_dense_max=0, item_neighbours=4))
    model.pretrain(random_rows(60, 30, 1))
    model.finetune(random_rows(25, 30, 2).multiply(candidates).tocsr(), random_rows(25, 30, 3), candidates)
    assert model.weights.shape == (30, 20)
    # the mean of the item_grid's settings: at most the union of their neighbour lists per item
    assert (np.diff(model.weights.tocsc().indptr) <= 4 * len(item_settings(model.config))).all()
    assert np.isfinite(model.score(random_rows(5, 30, 4))[:, candidates]).all()


def test_a_model_saved_with_dense_source_grams_still_fine_tunes():
    model = TransferRecommender(30, training(**CONFIG))
    source = random_rows(60, 30, 1)
    model.pretrain({"a": source})
    state = model.state()
    state["source_grams"] = {"a": torch.from_numpy((source.T @ source).toarray())}  # how older models saved it
    del state["source_rows"]
    old = TransferRecommender.from_state(state)
    assert isinstance(old.source_items["a"], np.ndarray)
    candidates = np.arange(30) < 20
    train, valid = random_rows(25, 30, 2).multiply(candidates).tocsr(), random_rows(25, 30, 3)
    new = TransferRecommender.from_state(model.state())
    old.finetune(train, valid, candidates)
    new.finetune(train, valid, candidates)
    np.testing.assert_allclose(old.weights, new.weights, rtol=1e-5, atol=1e-7)


def test_past_item_dense_max_a_solve_of_few_items_stays_exact_and_a_large_one_solves_one_setting():
    candidates = np.arange(30) < 20
    train = random_rows(25, 30, 2).multiply(candidates).tocsr()
    valid = random_rows(25, 30, 3).multiply(candidates).tocsr()
    echo = sp.vstack([valid] * 3).tocsr()
    wide = (echo + random_rows(75, 30, 4).multiply(~candidates)).tocsr()  # the source also has items 20-29
    config = training(
        **CONFIG, item_dense_max=25, item_combine="mean"
    )  # the target alone: 20 items, with the source 30
    helped = TransferRecommender(30, config)
    helped.pretrain({"wide": wide})
    history = helped.finetune(train, valid, candidates)
    assert helped.source_weights == {"wide": 1.0}
    assert sp.issparse(helped.weights)  # by neighbourhoods: one setting, the source check's own solve
    assert [(e["alpha"], e["lam"], e["drop_p"]) for e in history if e["stage"] == "item_item"] == item_settings(config)[
        :1
    ]
    noise = wide[:, np.random.default_rng(9).permutation(30)].tocsr()
    alone = TransferRecommender(30, config)
    alone.pretrain({"noise": noise})
    history = alone.finetune(train, valid, candidates)
    assert alone.source_weights == {"noise": 0.0}
    settings = list(dict.fromkeys((lam, drop_p) for _, lam, drop_p in item_settings(config)))
    assert len([e for e in history if e["stage"] == "item_item"]) == len(settings) > 1
    gram = (train.T @ train).toarray().astype(np.float64)
    exact = [item_item_solve(gram, lam, drop_p)[:, candidates] for lam, drop_p in settings]
    np.testing.assert_allclose(alone.weights, np.mean(exact, axis=0), rtol=1e-4, atol=1e-6)
