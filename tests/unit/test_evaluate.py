import numpy as np
import scipy.sparse as sp

from transfer_rec.metrics.ranking import evaluate_scores, top_k
from transfer_rec.stages import evaluate


def _world(seed: int = 0, users: int = 37, items: int = 15):
    rng = np.random.default_rng(seed)
    history = sp.csr_matrix((rng.random((users, items)) < 0.2).astype(np.float32))
    exclude = sp.csr_matrix((rng.random((users, items)) < 0.1).astype(np.float32))
    relevant = sp.csr_matrix((rng.random((users, items)) < 0.15).astype(np.float32))
    weights = rng.normal(size=(items, items))
    # a per-user term, as a profile prior or a linked person adds: a scorer must be given the right rows
    per_user = rng.normal(size=(users, items))

    def score(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        return matrix @ weights + per_user[rows]

    return history, exclude, relevant, score, history @ weights + per_user


def test_scoring_a_block_of_users_at_a_time_ranks_as_scoring_them_all_at_once(monkeypatch):
    history, exclude, _, score, full = _world()
    candidates = np.ones(history.shape[1], dtype=bool)
    candidates[[2, 7]] = False
    monkeypatch.setattr(evaluate, "SCORE_ROWS", 8)
    rows = np.array([3, 0, 36, 17, 5, 9, 10, 11, 12, 20, 21, 30])
    ranked = evaluate.ranked_rows(score, history, rows, 5, exclude, candidates)
    np.testing.assert_array_equal(ranked, top_k(full[rows], 5, exclude[rows], candidates))
    # the same users in another order get the same lists, in that order
    backwards = evaluate.ranked_rows(score, history, rows[::-1], 5, exclude, candidates)
    np.testing.assert_array_equal(backwards, ranked[::-1])


def test_blocked_metrics_are_the_metrics_of_the_full_scores(monkeypatch):
    history, exclude, relevant, score, full = _world(seed=1)
    monkeypatch.setattr(evaluate, "SCORE_ROWS", 5)
    blocked = evaluate.rows_metrics(score, history, exclude, relevant, 4)
    expected = evaluate_scores(full, exclude, relevant, 4)
    assert set(blocked) == set(expected)
    for name in expected:
        np.testing.assert_allclose(blocked[name], expected[name])
