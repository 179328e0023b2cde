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


def test_an_item_a_model_cannot_score_is_never_listed_nor_credited():
    # a champion that knows items 0-3 only (a catalogue that grew since): every other item scores -inf; the user saw
    # 0-2, and their test item 5 is one the champion cannot rank, so it must not earn a hit by filling a short list
    items = 6
    history = sp.csr_matrix(np.array([[1, 1, 1, 0, 0, 0]], dtype=np.float32))
    relevant = sp.csr_matrix(np.array([[0, 0, 0, 0, 0, 1]], dtype=np.float32))

    def champion(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        scores = np.full((len(rows), items), -np.inf)
        scores[:, :4] = np.arange(4)
        return scores

    ranked = evaluate.ranked_rows(champion, history, np.array([0]), 3, history)
    assert ranked.tolist() == [[3, -1, -1]]
    assert evaluate.rows_metrics(champion, history, history, relevant, 3)["hit"].tolist() == [0.0]


def test_a_metric_nobody_could_be_measured_on_logs_no_interval():
    intervals = {"ndcg": (0.21, 0.29), "retention": (None, None)}
    assert evaluate.interval_metrics(intervals, 10) == {
        "ndcg_at_10.candidate.ci_low": 0.21,
        "ndcg_at_10.candidate.ci_high": 0.29,
    }


def _platform(tmp_path, users: int = 30, items: int = 12, seed: int = 3):
    """A target platform's feature files: each user's items split train / valid / test by time."""
    import pandas as pd

    from transfer_rec.stages.features import PlatformData

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        taken = rng.choice(items, size=6, replace=False)
        for position, item in enumerate(taken):
            split = "train" if position < 4 else ("valid" if position == 4 else "test")
            rows.append((f"u{user:02d}", int(item), split, position))
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "split", "timestamp"])
    frame.to_parquet(tmp_path / "t.interactions.parquet")
    pd.DataFrame({"user_id": frame["user_id"].unique()}).to_parquet(tmp_path / "t.users.parquet")
    return PlatformData(tmp_path, "t", items)


def test_cold_start_curve_follows_a_seeded_sample_of_its_users_past_the_limit(tmp_path):
    from transfer_rec.metrics.ranking import judges

    data = _platform(tmp_path)
    weights = np.random.default_rng(0).normal(size=(12, 12))

    def score(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        return matrix @ weights + rows[:, None] % 7  # per-user: the right rows must be scored

    every = evaluate.cold_start_curve(data, {"s": score}, 3, 100, lengths=(0, 2))
    assert [r["users"] for r in every] == [30, 30]
    sampled = evaluate.cold_start_curve(data, {"s": score}, 3, 100, lengths=(0, 2), users_max=7, seed=5)
    assert [r["users"] for r in sampled] == [7, 7]
    assert sampled == evaluate.cold_start_curve(data, {"s": score}, 3, 100, lengths=(0, 2), users_max=7, seed=5)
    # the sample's mean is its users' own NDCG (at n = 0: no history, other train and valid items masked)
    test, exclude = data.matrix("test"), data.matrix("train", "valid")
    chosen = judges(test, 7, 5)
    empty = sp.csr_matrix(test.shape, dtype=np.float32)
    ranked = top_k(score(empty[chosen], chosen), 3, exclude[chosen])
    expected = evaluate.per_user_metrics(ranked, test[chosen], 3)["ndcg"].mean()
    assert sampled[0]["ndcg"] == expected
    assert evaluate.cold_start_curve(data, {"s": score}, 3, 100, lengths=(0,), users_max=30) == every[:1]


def test_cold_start_curve_counts_a_user_only_at_lengths_their_train_history_reaches(tmp_path):
    """A user with 2 train items is no user with a history of 4: with all of theirs, they would be a shorter history
    counted as a longer one (and a user new to the target, with none, would be counted everywhere)."""
    import pandas as pd

    from transfer_rec.stages.features import PlatformData

    rows = []
    for user in range(20):
        kept = 4 if user < 12 else (2 if user < 16 else 0)  # 12 users with 4 train items, 4 with 2, 4 new ones
        for position in range(kept):
            rows.append((f"u{user:02d}", position, "train", position))
        rows.append((f"u{user:02d}", 8 + user % 4, "test", 9))
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "split", "timestamp"])
    frame.to_parquet(tmp_path / "t.interactions.parquet")
    pd.DataFrame({"user_id": frame["user_id"].unique()}).to_parquet(tmp_path / "t.users.parquet")
    data = PlatformData(tmp_path, "t", 12)

    def score(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        return np.asarray(matrix.sum(axis=1)) + np.arange(12)[None, :]

    curve = evaluate.cold_start_curve(data, {"s": score}, 3, 50, lengths=(0, 1, 3, 5))
    assert [(r["history_length"], r["users"]) for r in curve] == [(0, 20), (1, 16), (3, 12)], "nobody reaches 5"
