import math

import numpy as np
import pytest
import scipy.sparse as sp

from transfer_rec.metrics.ranking import (
    candidate_ndcg,
    candidate_ndcg_rows,
    evaluate_scores,
    item_segment_hits,
    judges,
    mean_metrics,
    per_user_metrics,
    top_k,
)


def test_top_k_excludes_seen_and_non_candidates():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    exclude = sp.csr_matrix(np.array([[1, 0, 0, 0, 0]]))
    candidates = np.array([True, True, False, True, True])
    assert top_k(scores, 3, exclude, candidates).tolist() == [[1, 3, 4]]


def test_a_row_with_fewer_than_k_unseen_items_is_never_credited_a_seen_one():
    # 12 items, the user saw 0-4 in train; their test items are 0 (a repeat of a train item, which the benchmark's
    # file mode keeps) and 11: a list filled with seen items found 0 and scored recall 1
    scores = np.linspace(1.0, 0.0, 12)[None, :]
    seen = sp.csr_matrix((np.ones(5), ([0] * 5, range(5))), shape=(1, 12))
    test = sp.csr_matrix(([1, 1], ([0, 0], [0, 11])), shape=(1, 12))
    filled = top_k(scores, 10, seen)
    assert set(filled[0].tolist()) & {0, 1, 2, 3, 4}, "the default fills the list with seen items"
    listed = top_k(scores, 10, seen, fill=False)
    assert listed[0].tolist() == [5, 6, 7, 8, 9, 10, 11, -1, -1, -1]
    assert evaluate_scores(scores, seen, test, 10)["recall"].tolist() == [0.5]
    assert per_user_metrics(listed, test, 10)["hit"].tolist() == [1.0]
    # an empty place (-1) of row 1 is not the last item of row 0
    two = np.array([[5, -1], [-1, -1]])
    relevant = sp.csr_matrix(([1, 1], ([0, 1], [11, 3])), shape=(2, 12))
    assert per_user_metrics(two, relevant, 2)["hit"].tolist() == [0.0, 0.0]
    assert item_segment_hits(two, relevant, {"all": np.ones(12, dtype=bool)})["all"]["found"] == 0.0


def test_benchmark_recommendations_leave_empty_places_out():
    from transfer_rec.metrics.ranking import recommendation_rows

    rows = recommendation_rows(np.array(["u1", "u2"]), np.array(list("abcd")), np.array([[2, -1], [0, 1]]))
    assert rows.values.tolist() == [["u1", "c", 1], ["u2", "a", 1], ["u2", "b", 2]]


def test_metrics_match_hand_computed_values():
    ranked = np.array([[3, 1, 7, 8, 9]])
    relevant = sp.csr_matrix(([1, 1], ([0, 0], [1, 9])), shape=(1, 10))
    m = per_user_metrics(ranked, relevant, k=5)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg"][0] == pytest.approx(dcg / idcg)
    assert m["recall"][0] == 1.0
    assert m["hit"][0] == 1.0
    assert m["mrr"][0] == pytest.approx(0.5)
    assert m["precision"][0] == pytest.approx(0.4)


def test_users_without_test_items_are_not_counted():
    scores = np.tile(np.arange(6, dtype=float)[::-1], (3, 1))
    seen = sp.csr_matrix((3, 6))
    test = sp.csr_matrix(([1, 1], ([0, 2], [0, 5])), shape=(3, 6))
    result = mean_metrics(evaluate_scores(scores, seen, test, k=3))
    assert result["hit"] == pytest.approx(0.5)  # user 0 hits item 0; user 2's item 5 is ranked last
    assert len(evaluate_scores(scores, seen, test, k=3)["ndcg"]) == 2


def test_bootstrap_interval_covers_the_mean_and_paired_bound_sees_a_shift():
    from transfer_rec.metrics.uncertainty import bootstrap_ci, paired_lower_bound

    rng = np.random.default_rng(0)
    values = rng.random(500)
    low, high = bootstrap_ci(values, samples=500, seed=1)
    assert low < values.mean() < high and high - low < 0.1
    better = values + 0.05
    assert paired_lower_bound(better, values, samples=500) == pytest.approx(0.05)
    noisy = values + rng.normal(0.0, 0.3, size=500)
    assert paired_lower_bound(noisy, values, samples=500) < 0


def test_item_segment_hits_count_relevant_pairs_per_segment_and_the_share_found():
    ranked = np.array([[0, 1], [2, 3]])
    relevant = sp.csr_matrix(np.array([[1, 0, 1, 0, 1], [0, 0, 1, 0, 1]], dtype=np.float32))
    # relevant pairs: (0,0) found, (0,2) not, (0,4) not, (1,2) found, (1,4) not
    segments = {
        "low": np.array([1, 1, 1, 0, 0], bool),
        "item 4": np.array([0, 0, 0, 0, 1], bool),
        "none": np.zeros(5, bool),
    }
    out = item_segment_hits(ranked, relevant, segments)
    assert out["low"] == {"relevant": 3, "found": pytest.approx(2 / 3)}
    assert out["item 4"] == {"relevant": 2, "found": 0.0}
    assert out["none"] == {"relevant": 0, "found": 0.0}


def test_segment_bars_leave_out_segments_too_small_for_a_ci_and_name_them():
    from transfer_rec.metrics import plots

    def row(segment, users, mean):
        return {"segment": segment, "contender": "candidate", "metric": "ndcg", "users": users, "mean": mean}

    rows = [{**row("all", 50, 0.3), "ci_low": 0.25, "ci_high": 0.35}, {**row("history 1-5", 1, 1.0), "ci_low": 1.0}]
    rows[1]["ci_high"] = 1.0
    ax = plots.segment_bars(rows, ("ndcg",), "segments").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all\n(n=50)"]
    assert "history 1-5 (n=1)" in ax.get_title(loc="left")
    # every segment too small: an empty panel that says so, not an error
    ax = plots.segment_bars(rows[1:], ("ndcg",), "segments").axes[0]
    assert ax.get_xticklabels() == [] and "history 1-5" in ax.get_title(loc="left")


def test_segment_names_become_readable_metric_names():
    from transfer_rec.stages.evaluate import _metric_name, _segment_key

    assert _segment_key("new (<=20)") == "new_le_20"
    assert _segment_key("history >50") == "history_over_50"
    assert _segment_key("history 1-5") == "history_1-5"
    assert _segment_key("new to the target, on 2 sources") == "new_to_the_target_on_2_sources"
    assert _metric_name("candidate", "ndcg", 10) == "ndcg_at_10.candidate"
    assert _metric_name("ease", "retention", 10) == "retention.ease"


def test_candidate_ndcg_equals_the_full_evaluation_with_other_items_left_out():
    rng = np.random.default_rng(3)
    n_users, n_items = 60, 40
    candidates = np.sort(rng.choice(n_items, size=25, replace=False))
    train = sp.random(n_users, n_items, density=0.15, format="csr", random_state=4)
    test = sp.random(n_users, n_items, density=0.1, format="csr", random_state=5)  # also items past the candidates
    scores = rng.normal(size=(n_users, len(candidates)))
    full = np.full((n_users, n_items), -np.inf)
    full[:, candidates] = scores
    expected = float(np.mean(evaluate_scores(full, train, test, 5)["ndcg"]))
    assert candidate_ndcg(scores, train, test, 5, candidates) == pytest.approx(expected)
    shuffled = scores[:, rng.permutation(len(candidates))]
    assert candidate_ndcg(shuffled, train, test, 5, candidates) != pytest.approx(expected)


def test_candidate_ndcg_rows_judge_each_row_alone_and_leave_rows_without_a_test_item_out():
    """The short-history choice scores settled rows once and the others per grid point: a row's NDCG must not depend
    on which rows are ranked with it, and a row with no test item is NaN (not 0, which would count in the mean)."""
    rng = np.random.default_rng(6)
    n_users, n_items = 50, 30
    candidates = np.sort(rng.choice(n_items, size=20, replace=False))
    train = sp.random(n_users, n_items, density=0.2, format="csr", random_state=7)
    test = sp.lil_matrix(sp.random(n_users, n_items, density=0.15, format="csr", random_state=8))
    test[::5] = 0  # every fifth user has nothing to judge them by
    test = sp.csr_matrix(test)
    scores = rng.normal(size=(n_users, len(candidates)))
    values = candidate_ndcg_rows(scores, train, test, 5, candidates)
    judged = np.diff(test.indptr) > 0
    assert np.isnan(values[~judged]).all() and not np.isnan(values[judged]).any()
    assert candidate_ndcg(scores, train, test, 5, candidates) == float(np.mean(values[judged]))
    rows = np.flatnonzero(np.arange(n_users) % 3 == 1)  # a subset, ranked without the others
    alone = candidate_ndcg_rows(scores[rows], train[rows], test[rows], 5, candidates)
    np.testing.assert_array_equal(alone, values[rows])


def test_judges_are_the_users_with_a_valid_item_or_a_seeded_sample_of_them():
    valid = sp.csr_matrix(np.eye(10)[[0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9]] * (np.arange(12) % 3 != 0)[:, None])
    with_items = np.flatnonzero(np.diff(valid.indptr) > 0)
    assert judges(valid, 100, 0).tolist() == with_items.tolist()
    sample = judges(valid, 4, 0)
    assert len(sample) == 4 and set(sample) <= set(with_items) and list(sample) == sorted(sample)
    assert judges(valid, 4, 0).tolist() == sample.tolist()
    assert any(judges(valid, 4, seed).tolist() != sample.tolist() for seed in range(1, 5))


def test_top_k_ranks_block_by_block_as_it_would_all_rows_at_once(monkeypatch):
    import transfer_rec.metrics.ranking as ranking

    rng = np.random.default_rng(5)
    scores = rng.normal(size=(23, 40))
    exclude = sp.random(23, 40, density=0.2, random_state=1, format="csr")
    candidates = rng.random(40) > 0.3
    whole = ranking.top_k(scores, 7, exclude, candidates)
    monkeypatch.setattr(ranking, "TOP_K_ROWS", 5)  # 23 rows: four full blocks and a short one
    np.testing.assert_array_equal(ranking.top_k(scores, 7, exclude, candidates), whole)
    assert candidates[whole].all()
    assert not exclude[np.arange(23)[:, None], whole].toarray().any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_top_k_is_a_full_sort_cut_at_k_and_ranks_nan_last(dtype):
    rng = np.random.default_rng(3)
    scores = rng.permutation(60 * 300).reshape(60, 300).astype(dtype)  # distinct values: no ties to break
    if dtype != np.int64:
        scores[rng.random(scores.shape) < 0.05] = np.nan
    exclude = sp.random(60, 300, density=0.1, random_state=2, format="csr")
    candidates = rng.random(300) > 0.2
    reference = np.where(np.isnan(scores.astype(np.float64)), -np.inf, scores.astype(np.float64))
    reference[:, ~candidates] = -np.inf
    reference[exclude.nonzero()] = -np.inf
    expected = np.argsort(-reference, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top_k(scores, 10, exclude, candidates), expected)


def test_top_k_takes_views_of_any_layout():
    scores = np.arange(40, dtype=np.float64).reshape(4, 10)
    np.testing.assert_array_equal(top_k(scores[:, ::-1], 3), np.tile([0, 1, 2], (4, 1)))
    np.testing.assert_array_equal(top_k(scores.T[:, :2], 2), [[1, 0]] * 10)
