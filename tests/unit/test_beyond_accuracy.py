"""Beyond-accuracy metrics, the next-period hold-out, segments with CIs, and the MLflow record's pure parts, on
constructed cases with hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from transfer_rec.metrics.beyond import catalogue_coverage, genre_matrix, intra_list_diversity, item_popularity, novelty
from transfer_rec.metrics.segments import history_bucket, linked_segments, segment_table, time_holdout, user_segments


def test_coverage_counts_distinct_candidate_items_in_any_top_k():
    ranked = np.array([[0, 1], [1, 2], [0, 2]])
    candidates = np.array([True, True, True, True, True, False])
    assert catalogue_coverage(ranked, candidates) == pytest.approx(3 / 5)
    assert catalogue_coverage(np.array([[0, 0]]), candidates) == pytest.approx(1 / 5)


def test_diversity_is_mean_pairwise_jaccard_distance_of_genres():
    genres = genre_matrix(["a|b", "a", "c", "", ""])
    # pairs of [0, 1, 2]: (a|b, a) 1 - 1/2; (a|b, c) 1; (a, c) 1 -> mean 5/6
    # [1, 1]-like list of identical genres -> 0; two items without genre -> 0 (nothing shows they differ)
    values = intra_list_diversity(np.array([[0, 1, 2], [1, 1, 1], [3, 4, 0]]), genres)
    assert values[0] == pytest.approx(5 / 6)
    assert values[1] == pytest.approx(0.0)
    assert values[2] == pytest.approx((0 + 1 + 1) / 3)


def test_novelty_is_mean_self_information_of_recommended_items():
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]]))
    popularity = item_popularity(train)  # add-one smoothed share of users: (3+1)/4, (1+1)/4, (0+1)/4
    assert popularity.tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert novelty(np.array([[0, 1], [1, 2]]), popularity).tolist() == pytest.approx([0.5, 1.5])


def test_an_empty_place_of_a_short_list_counts_as_no_item():
    # -1 ends a list with fewer than K items the model could rank (ranking.top_k without fill)
    genres = genre_matrix(["a|b", "a", "c", "", ""])
    assert catalogue_coverage(np.array([[0, -1], [-1, -1]]), np.ones(5, dtype=bool)) == pytest.approx(1 / 5)
    # only the pairs of listed items: [0, 1, -1] is the pair (a|b, a) alone; one item or none is 0
    values = intra_list_diversity(np.array([[0, 1, -1], [2, -1, -1], [-1, -1, -1]]), genres)
    assert values.tolist() == pytest.approx([0.5, 0.0, 0.0])
    popularity = np.array([1.0, 0.5, 0.25])
    assert novelty(np.array([[1, -1], [2, 1], [-1, -1]]), popularity).tolist() == pytest.approx([1.0, 1.5, 0.0])


def test_time_holdout_takes_each_users_latest_interactions():
    frame = pd.DataFrame(
        {
            "user_id": ["a"] * 10 + ["b"] * 3 + ["c"],
            "item_id": [f"i{j}" for j in range(10)] + ["x", "y", "z"] + ["w"],
            # a's timestamps are shuffled: the hold-out follows time, not row order
            "timestamp": [5, 1, 9, 3, 7, 2, 8, 4, 6, 10] + [3, 1, 2] + [1],
        },
        index=np.arange(100, 114),
    )
    late = time_holdout(frame, share=0.1)
    assert late.index.equals(frame.index)
    assert frame["item_id"][late].tolist() == ["i9", "x"]  # a: last 1 of 10; b: ceil(0.3) = 1; c: single -> none
    late = time_holdout(frame, share=0.25)
    assert sorted(frame["item_id"][late & (frame["user_id"] == "a")]) == ["i2", "i6", "i9"]  # ceil(2.5) = 3


def test_history_buckets_and_new_versus_warm_segments():
    assert [history_bucket(n) for n in (0, 1, 5, 6, 20, 21, 50, 51, 400)] == [
        "0",
        "1-5",
        "1-5",
        "6-20",
        "6-20",
        "21-50",
        "21-50",
        ">50",
        ">50",
    ]
    segments = user_segments(np.array([3, 10, 30, 80]), new_user_max=20)
    assert segments["history 1-5"].tolist() == [True, False, False, False]
    assert segments["history >50"].tolist() == [False, False, False, True]
    assert segments["new (<=20)"].tolist() == [True, True, False, False]
    assert segments["warm (>20)"].tolist() == [False, False, True, True]
    assert segments["all"].all()


def test_linked_segments_split_all_and_new_users_by_the_sources_they_are_linked_on():
    new = np.array([True, True, False, False, True])
    segments = linked_segments(np.array([0, 2, 1, 2, 1]), new, "new (<=20)")
    assert list(segments) == [
        "linked on 0 sources",
        "new (<=20), on 0 sources",
        "linked on 1 source",
        "new (<=20), on 1 source",
        "linked on 2 sources",
        "new (<=20), on 2 sources",
    ]
    assert segments["linked on 2 sources"].tolist() == [False, True, False, True, False]
    assert segments["new (<=20), on 2 sources"].tolist() == [False, True, False, False, False]
    assert segments["new (<=20), on 1 source"].tolist() == [False, False, False, False, True]


def test_segment_table_gives_means_and_cis_on_the_same_users_for_every_contender():
    rng = np.random.default_rng(0)
    strong, weak = rng.random(400) * 0.2 + 0.7, rng.random(400) * 0.2 + 0.1
    lengths = np.r_[np.full(200, 3), np.full(200, 60)]
    per_user = {"candidate": {"ndcg": np.r_[strong[:200], weak[200:]]}, "popularity": {"ndcg": weak}}
    rows = segment_table(per_user, user_segments(lengths, 20), ("ndcg",), samples=300)
    by = {(r["segment"], r["contender"]): r for r in rows}
    short = by[("history 1-5", "candidate")]
    assert short["users"] == 200 and by[("history 1-5", "popularity")]["users"] == 200
    assert short["mean"] == pytest.approx(strong[:200].mean())
    assert short["ci_low"] < short["mean"] < short["ci_high"] and short["ci_high"] - short["ci_low"] < 0.03
    # the candidate wins on short histories only: the CIs separate there and overlap on long ones
    assert short["ci_low"] > by[("history 1-5", "popularity")]["ci_high"]
    assert by[("history >50", "candidate")]["mean"] == pytest.approx(weak[200:].mean())
    empty = by[("history 6-20", "candidate")]
    assert empty["users"] == 0 and empty["mean"] is None and empty["ci_low"] is None


def _one_user(folder, ratings: list[float] | None = None) -> pd.DataFrame:
    """Platform "t" in `folder`: one user's 10 interactions in time order, items 0-9, the first 8 in train, then
    one in valid and one in test (with `ratings`, rated so); returns the interactions frame written."""
    frame = pd.DataFrame(
        {
            "user_id": ["u"] * 10,
            "item_id": [f"i{j}" for j in range(10)],
            "item_idx": range(10),
            "timestamp": range(1, 11),
            "split": ["train"] * 8 + ["valid", "test"],
        }
    )
    if ratings is not None:
        frame["rating"] = ratings
    frame.to_parquet(folder / "t.interactions.parquet")
    pd.DataFrame({"user_id": ["u"]}).to_parquet(folder / "t.users.parquet")
    return frame


def test_next_period_split_uses_later_unfitted_interactions_and_masks_the_rest(tmp_path):
    from transfer_rec.stages.evaluate import time_holdout_split
    from transfer_rec.stages.features import PlatformData

    # one user, 10 interactions in time order; the last (t=10, item 9) is in test, the one before in train
    frame = _one_user(tmp_path)
    data = PlatformData(tmp_path, "t", 12)
    history, exclude, relevant = time_holdout_split(data, share=0.2)  # later period: items 8 (valid), 9 (test)
    assert history.indices.tolist() == list(range(8))
    assert sorted(relevant.indices.tolist()) == [8, 9]
    assert sorted(exclude.indices.tolist()) == list(range(8))
    frame.loc[8, "split"] = "train"  # a later interaction the models were fitted on: masked, never credited
    frame.to_parquet(tmp_path / "t.interactions.parquet")
    history, exclude, relevant = time_holdout_split(PlatformData(tmp_path, "t", 12), share=0.2)
    assert relevant.indices.tolist() == [9] and 8 in exclude.indices and 8 not in history.indices
    # the transfer models read the history rating-weighted (1 + w * (rating - 4)), as on the test split
    frame["rating"] = [5.0, 3.0] + [4.0] * 8
    frame.to_parquet(tmp_path / "t.interactions.parquet")
    weighted, _, _ = time_holdout_split(PlatformData(tmp_path, "t", 12), share=0.2, rating_weight=0.25)
    assert weighted.toarray()[0, :3].tolist() == [1.25, 0.75, 1.0] and weighted.nnz == 8


def test_retention_gives_each_contender_the_history_weighted_as_it_was_trained(tmp_path):
    from transfer_rec.stages.evaluate import retention_metrics
    from transfer_rec.stages.features import PlatformData

    _one_user(tmp_path, ratings=[5.0, 3.0] + [4.0] * 8)
    seen: dict[str, list[float]] = {}

    def scorer(name):
        def score(matrix, rows):
            seen[name] = sorted(set(matrix.data.tolist()))
            return np.zeros((matrix.shape[0], matrix.shape[1]))

        return score

    scorers = {name: scorer(name) for name in ("candidate", "champion", "ease")}
    retention_metrics(PlatformData(tmp_path, "t", 12), scorers, 3, 0.2, {"candidate": 0.25, "champion": 0.5})
    # ratings 5 and 3 count 1 +- w; the contender without a weight reads the binary history
    assert seen == {"candidate": [0.75, 1.0, 1.25], "champion": [0.5, 1.0, 1.5], "ease": [1.0]}


def test_airflow_tags_link_back_to_the_run(monkeypatch):
    from transfer_rec.registry.tracking import airflow_tags

    monkeypatch.setenv("AIRFLOW_BASE_URL", "https://airflow.example/")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-11-23T10:00:00+00:00")
    monkeypatch.setenv("AIRFLOW_CTX_LOGICAL_DATE", "2026-11-23T10:00:00+00:00")
    tags = airflow_tags(
        "transfer_rec",
        "manual__2026-11-23T10:00:00+00:00",
        None,
        ["2026-11-16T00:00:00+00:00", "2026-11-23T00:00:00+00:00"],
    )
    assert tags["airflow.url"] == (
        "https://airflow.example/dags/transfer_rec/runs/manual__2026-11-23T10%3A00%3A00%2B00%3A00"
    )
    assert tags["airflow.logical_date"] == "2026-11-23T10:00:00+00:00"
    assert tags["airflow.data_interval_end"] == "2026-11-23T00:00:00+00:00"
    # the environment of another run never leaks into this one's tags
    assert "airflow.logical_date" not in airflow_tags("transfer_rec", "other_run")


def test_lineage_inputs_carry_hashes_counts_and_validation(tmp_path):
    import json

    from transfer_rec.registry.tracking import lineage_inputs

    (tmp_path / "shop" / "b1").mkdir(parents=True)
    (tmp_path / "shop" / "b1" / "validation.json").write_text(
        json.dumps({"success": True, "critical": [], "warnings": ["w"]})
    )
    unified = {
        "hashes": {"shop": {"inter.csv": "ab" * 32}},
        "batches": {"shop": "b1"},
        "platforms": {"shop": {"rows_in": 12, "rows_out": 10}},
    }
    features = {"platforms": {"shop": {"role": "target", "interactions": 9, "train": 7}}}
    [entry] = lineage_inputs(tmp_path, unified, features)
    tags = {t.key: t.value for t in entry.tags}
    assert entry.dataset.name == "shop"
    assert tags["sha256.inter.csv"] == "ab" * 32 and tags["rows.rows_in"] == "12"
    assert tags["features.train"] == "7" and tags["validation"] == "passed" and tags["validation.warnings"] == "1"
    assert tags["mlflow.data.context"] == "target"
    other = lineage_inputs(tmp_path, {**unified, "hashes": {"shop": {"inter.csv": "cd" * 32}}}, features)[0]
    assert other.dataset.digest != entry.dataset.digest, "the digest follows the data"


def test_model_card_and_version_tags_name_metrics_cis_and_data():
    from transfer_rec.stages.promote import GateDecision, data_tags, model_card

    metrics = {
        "ndcg": 0.3,
        "recall": 0.2,
        "hit": 0.7,
        "mrr": 0.4,
        "precision": 0.1,
        "diversity": 0.6,
        "novelty": 3.2,
        "coverage": 0.4,
        "retention": 0.8,
        "retention_new": None,
    }
    evaluation = {
        "target": "shop",
        "k": 10,
        "test_users": 90,
        "retention_users": 80,
        "time_holdout": 0.1,
        "new_user_max_history": 20,
        "metrics": {"candidate": metrics, "champion": {**metrics, "ndcg": 0.25}},
        "ci": {"candidate": {"ndcg": [0.28, 0.32]}},
        "paired_vs_champion": {"ndcg": 0.02},
        "segments": [
            {
                "segment": "history 1-5",
                "contender": c,
                "metric": "ndcg",
                "users": 4,
                "mean": m,
                "ci_low": 0,
                "ci_high": 1,
            }
            for c, m in (("candidate", 0.5), ("champion", 0.1))
        ],
        "data": {"hashes": {"shop": {"inter.csv": "ab" * 32}}, "unified": "/lake/u1"},
    }
    card = model_card(evaluation, GateDecision(True, ["pass: x"]), "r1")
    # cells end in an em space: MLflow pads no table cell, and adjacent numbers would run together
    assert "| candidate&emsp; |" in card
    card = card.replace("&emsp; |", " |")
    assert "| candidate | 0.300 (0.280-0.320) | 0.200 |" in card and "| champion | 0.250 | 0.200 |" in card
    assert "| candidate | 0.400 | 0.600 | 3.20 |" in card
    # segments: a table per metric; a segment of too few users to compare on is marked
    assert "ndcg +0.0200" in card and "| history 1-5* | 4 | 0.500 | 0.100 |" in card
    assert "retention (next period)" not in card  # no retention rows in this report
    assert "- shop: inter.csv `abababababab`" in card and "ab" * 32 not in card
    # one tag per platform, its digest following every file's sha256
    tags = data_tags(evaluation)
    assert list(tags) == ["data.shop.sha256"] and len(tags["data.shop.sha256"]) == 64
    evaluation["data"]["hashes"]["shop"]["inter.csv"] = "cd" * 32
    assert data_tags(evaluation) != tags
    # an incremental platform's partitions, one a day for a year: counted, not listed
    evaluation["data"]["hashes"]["shop"] = {f"dt=2026-01-{d:03d}/inter.csv": "ef" * 32 for d in range(365)}
    card = model_card(evaluation, GateDecision(True, ["pass: x"]), "r1")
    assert "- shop: 365 files (an incremental platform's partitions), digest `" in card and "dt=2026" not in card
