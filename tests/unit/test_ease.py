"""EASE solves only the items its training rows have: the same weights as the full solve over the whole index."""

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


def test_items_absent_from_train_get_zero_weights_and_the_rest_match_the_full_solve():
    rng = np.random.default_rng(4)
    own = sp.random(300, 120, density=0.05, random_state=5, format="csr")
    # the platform's items sit among another platform's (empty here), as in the unified item index
    columns = np.sort(rng.choice(400, size=120, replace=False))
    train = sp.csr_matrix((own.data, columns[own.indices], own.indptr), shape=(300, 400))
    weights = EASE(50.0).fit(train).weights
    np.testing.assert_allclose(weights, full_solve(train, 50.0), atol=1e-6)
    empty = np.setdiff1d(np.arange(400), columns)
    assert not weights[empty].any() and not weights[:, empty].any()
    assert np.abs(weights[np.ix_(columns, columns)]).sum() > 0


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
