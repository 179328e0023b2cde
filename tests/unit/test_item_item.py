import numpy as np
import pytest
import scipy.sparse as sp

from transfer_rec.recommender.item_item import dense_gram, item_item_solve, neighbourhood_solve


def _rows(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(users, items, density=density, random_state=rng, format="csr", dtype=np.float32)
    matrix.data[:] = rng.choice([0.75, 1.0, 1.25], size=matrix.nnz)  # rating-weighted rows
    return matrix


def test_with_every_other_item_as_a_neighbour_it_is_the_exact_solve():
    target, source = _rows(80, 30, 0.2, 1), _rows(200, 30, 0.15, 2)
    # an item only the target has (7), and one nobody has (11)
    source = (source @ sp.diags(((np.arange(30) != 7) & (np.arange(30) != 11)).astype(np.float32))).tocsr()
    target = (target @ sp.diags((np.arange(30) != 11).astype(np.float32))).tocsr()
    terms = [(1.0, target), (0.49, source)]
    exact = item_item_solve(dense_gram(terms, 30), lam=5.0, drop_p=0.25)
    approx = neighbourhood_solve(terms, 30, lam=5.0, drop_p=0.25, neighbours=29, block=7, union=40)
    np.testing.assert_allclose(approx.toarray(), exact, rtol=1e-4, atol=1e-6)
    assert not approx[:, 11].nnz and not approx[11].nnz


def test_below_every_neighbour_the_systems_read_a_cooccurrence_kept_by_either_item():
    # continuous weights: no ties, so each item's lists are the same whoever sorts them
    rng = np.random.default_rng(8)
    rows = sp.random(150, 24, density=0.3, random_state=rng, format="csr")
    rows.data[:] = rng.uniform(0.5, 1.5, size=rows.nnz)
    lam, drop_p, n, m = 2.0, 0.25, 4, 7
    gram = (rows.T @ rows).toarray()
    ranked = np.argsort(-np.where(np.eye(24, dtype=bool), -np.inf, gram), axis=0)  # column j: j's neighbours
    kept = np.zeros((24, 24), dtype=bool)
    for j in range(24):
        kept[ranked[:m, j], j] = kept[j, ranked[:m, j]] = True
    expected = np.zeros((24, 24))
    for j in range(24):
        near = ranked[:n, j]
        system = np.where(kept, gram, 0.0)[np.ix_(near, near)]
        system[np.diag_indices(n)] = gram[near, near] * (1 + drop_p / (1 - drop_p)) + lam
        expected[near, j] = np.linalg.solve(system, gram[near, j])
    found = neighbourhood_solve([(1.0, rows)], 24, lam, drop_p, neighbours=n, kept=m, block=5, union=9)
    np.testing.assert_allclose(found.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_a_dense_gram_term_gives_what_its_rows_give():
    rows = _rows(100, 25, 0.2, 3)
    by_rows = neighbourhood_solve([(1.0, rows)], 25, lam=3.0, drop_p=0.0, neighbours=6)
    by_gram = neighbourhood_solve([(1.0, (rows.T @ rows).toarray().astype(np.float64))], 25, 3.0, 0.0, 6)
    np.testing.assert_allclose(by_rows.toarray(), by_gram.toarray(), rtol=1e-5, atol=1e-7)


def test_each_item_reads_only_its_most_cooccurring_neighbours():
    rows = _rows(300, 40, 0.15, 4)
    weights = neighbourhood_solve([(1.0, rows)], 40, lam=2.0, drop_p=0.25, neighbours=5)
    gram = (rows.T @ rows).toarray()
    np.fill_diagonal(gram, -np.inf)
    for item in range(40):
        used = weights[:, item].nonzero()[0]
        assert item not in used and len(used) <= 5
        assert gram[used, item].min() >= np.sort(gram[:, item])[-5]


def test_columns_cut_to_the_candidates():
    rows = _rows(100, 20, 0.25, 5)
    whole = neighbourhood_solve([(1.0, rows)], 20, 3.0, 0.25, 8)
    cut = neighbourhood_solve([(1.0, rows)], 20, 3.0, 0.25, 8, columns=np.array([3, 0, 17]))
    np.testing.assert_allclose(cut.toarray(), whole[:, [3, 0, 17]].toarray(), rtol=1e-6)


@pytest.mark.parametrize("neighbours", [1, 3])
def test_few_items_or_neighbours_still_solve(neighbours):
    rows = _rows(30, 4, 0.5, 6)
    weights = neighbourhood_solve([(1.0, rows)], 4, 1.0, 0.0, neighbours)
    assert weights.shape == (4, 4) and np.isfinite(weights.toarray()).all()
    assert (np.diff(weights.indptr) <= neighbours).all()


def test_a_singular_pruned_system_is_solved_not_fatal():
    # three active items, each with the other two as neighbours; every pruned co-occurrence equals the ridge diagonal
    # (diagonal 2 + lam 1), so each 2 x 2 system [[3, 3], [3, 3]] of this pruned (not positive semi-definite) Gram is
    # singular, where np.linalg.solve alone raises
    from transfer_rec.recommender.item_item import Neighbourhoods

    found = Neighbourhoods(
        n_items=4,
        diagonal=np.array([2.0, 2.0, 2.0, 0.0]),
        active=np.array([0, 1, 2]),
        neighbour=np.array([[1, 2], [0, 2], [0, 1]]),
        cooccurrence=np.full((3, 2), 3.0),
        pruned=sp.csr_matrix(3.0 * (1 - np.eye(3))),
    )
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(np.full((1, 2, 2), 3.0), np.ones((1, 2, 1)))
    weights = found.solve(lam=1.0, drop_p=0.0).toarray()
    # the least-squares (minimum-norm) answer splits each item's weight over its two neighbours
    expected = np.zeros((4, 4))
    expected[:3, :3] = 0.5 * (1 - np.eye(3))
    np.testing.assert_allclose(weights, expected, atol=1e-6)


def test_a_stack_of_positive_definite_indefinite_and_singular_systems_each_gets_its_solution():
    # the pruned Gram can make any of the three; each must come out as the exact solve (or, singular, the
    # minimum-norm least-squares one), whatever the others in its stack are
    from transfer_rec.recommender.item_item import _solve_systems

    rng = np.random.default_rng(3)
    spread = rng.normal(size=(5, 5))
    definite = spread @ spread.T + np.eye(5)
    indefinite = np.diag([4.0, -1.0, 2.0, 3.0, -2.0]) + 0.1 * (spread + spread.T)
    singular = np.outer(np.arange(1.0, 6.0), np.arange(1.0, 6.0))
    systems = np.stack([definite, indefinite, singular])
    rhs = rng.normal(size=(3, 5))
    solved = _solve_systems(systems.copy(), rhs.copy())
    np.testing.assert_allclose(solved[0], np.linalg.solve(definite, rhs[0]), rtol=1e-10)
    np.testing.assert_allclose(solved[1], np.linalg.solve(indefinite, rhs[1]), rtol=1e-10)
    np.testing.assert_allclose(solved[2], np.linalg.lstsq(singular, rhs[2], rcond=None)[0], rtol=1e-10)
