"""EASE and the exact item-item solve: only the items that occur are solved, one Gram serves a grid of strengths, the
solve works in place, and the weights match the textbook full solve."""

import numpy as np
import scipy.sparse as sp

from transfer_rec.recommender.ease import EASE


def full_solve(train: sp.csr_matrix, l2: float) -> np.ndarray:
    x = (train > 0).astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def over_the_index(model: EASE, n_items: int) -> np.ndarray:
    weights = np.zeros((n_items, n_items))
    weights[np.ix_(model.items, model.items)] = model.weights
    return weights


def test_items_absent_from_train_get_zero_weights_and_the_rest_match_the_full_solve():
    rng = np.random.default_rng(4)
    own = sp.random(300, 120, density=0.05, random_state=5, format="csr")
    # the platform's items sit among another platform's (empty here), as in the unified item index
    columns = np.sort(rng.choice(400, size=120, replace=False))
    train = sp.csr_matrix((own.data, columns[own.indices], own.indptr), shape=(300, 400))
    model = EASE(50.0).fit(train)
    np.testing.assert_array_equal(model.items, columns)  # only the platform's own items are solved and kept
    weights = over_the_index(model, 400)
    np.testing.assert_allclose(weights, full_solve(train, 50.0), atol=1e-6)
    assert np.abs(weights[np.ix_(columns, columns)]).sum() > 0
    history = train[:40]
    np.testing.assert_allclose(model.score(history), (history > 0).astype(np.float64) @ weights, atol=1e-5)


def test_the_transfer_models_item_item_solve_skips_items_nobody_has_with_the_same_weights():
    from transfer_rec.recommender.item_item import item_item_solve

    rng = np.random.default_rng(7)
    rows = (rng.random((200, 60)) < 0.1).astype(np.float64)
    wide = np.zeros((200, 90))
    wide[:, rng.choice(90, size=60, replace=False)] = rows
    gram = wide.T @ wide
    solved = item_item_solve(gram, 30.0, 0.25)
    # the full solve, written out: the Gram's diagonal regularised, inverted, normalised, zero diagonal
    regularised = gram + np.diag(30.0 + 0.25 / 0.75 * np.diag(gram))
    precision = np.linalg.inv(regularised)
    expected = -precision / np.diag(precision)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(solved, expected, atol=1e-9)
    absent = np.flatnonzero(np.diag(gram) == 0)
    assert len(absent) == 30 and not solved[absent].any() and not solved[:, absent].any()


def test_the_grid_shares_one_gram_and_gives_each_strengths_own_weights():
    train = sp.random(250, 80, density=0.08, random_state=9, format="csr")
    models = list(EASE.grid(train, (20.0, 400.0)))
    assert [m.l2 for m in models] == [20.0, 400.0]
    for model in models:
        np.testing.assert_allclose(over_the_index(model, 80), full_solve(train, model.l2), atol=1e-6)
    assert not np.allclose(models[0].weights, models[1].weights)


def test_the_in_place_solve_returns_its_input_turned_into_the_weights():
    from transfer_rec.recommender.item_item import dense_gram, item_item_solve

    rows = (sp.random(300, 50, density=0.1, random_state=2, format="csr") > 0).astype(np.float64)
    gram = dense_gram([(1.0, rows)], 50, block=16)
    np.testing.assert_allclose(gram, (rows.T @ rows).toarray(), atol=1e-12)
    expected = full_solve(rows, 10.0)
    solved = item_item_solve(gram, 10.0, overwrite=True)
    assert solved is gram  # no items^2 copy was made
    np.testing.assert_allclose(solved, expected, atol=1e-9)


def test_a_gram_that_is_not_positive_definite_is_refused_with_the_remedy():
    import pytest

    from transfer_rec.recommender.item_item import item_item_solve

    gram = np.ones((3, 3))  # rank one: singular without regularisation
    with pytest.raises(np.linalg.LinAlgError, match="positive L2 strength"):
        item_item_solve(gram, 0.0)
