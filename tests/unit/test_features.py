import pandas as pd
import pytest

from transfer_rec.io.tables import k_core
from transfer_rec.stages.features import hold_out_users, split_sizes, split_users


def test_k_core_repeats_until_stable():
    inter = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3 + ["c"], "item_id": ["x", "y", "z", "x", "y", "z", "q"]})
    kept = k_core(inter, 2)
    assert set(kept["user_id"]) == {"a", "b"} and set(kept["item_id"]) == {"x", "y", "z"}


@pytest.mark.parametrize("n,expected", [(5, (3, 1, 1)), (10, (8, 1, 1)), (25, (21, 2, 2)), (2, (1, 0, 1))])
def test_split_sizes(n, expected):
    assert split_sizes(n, (0.8, 0.1, 0.1)) == expected
    assert sum(split_sizes(n, (0.8, 0.1, 0.1))) == n


def test_split_is_seeded_and_per_user():
    inter = pd.DataFrame(
        {"user_id": ["u"] * 10 + ["v"] * 20, "item_id": [f"i{i}" for i in range(30)], "timestamp": range(30)}
    )
    a, b, c = (
        split_users(inter, (0.8, 0.1, 0.1), 1),
        split_users(inter, (0.8, 0.1, 0.1), 1),
        split_users(inter, (0.8, 0.1, 0.1), 2),
    )
    assert a.equals(b) and not a.equals(c)
    counts = pd.crosstab(inter["user_id"], a)
    assert counts.loc["u"].to_dict() == {"test": 1, "train": 8, "valid": 1}
    assert counts.loc["v"].to_dict() == {"test": 2, "train": 16, "valid": 2}


def test_a_rating_weighted_matrix_counts_a_rating_of_4_as_1(tmp_path):
    from transfer_rec.stages.features import PlatformData

    pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "v"],
            "item_id": ["a", "b", "c", "a"],
            "item_idx": [0, 1, 2, 0],
            "rating": [3.0, 4.0, 5.0, 5.0],
            "split": ["train"] * 3 + ["valid"],
        }
    ).to_parquet(tmp_path / "p.interactions.parquet")
    pd.DataFrame({"user_id": ["u", "v"]}).to_parquet(tmp_path / "p.users.parquet")
    data = PlatformData(tmp_path, "p", 3)
    assert data.matrix("train").toarray().tolist() == [[1, 1, 1], [0, 0, 0]]
    assert data.matrix("train", rating_weight=0.25).toarray().tolist() == [[0.75, 1, 1.25], [0, 0, 0]]
    assert data.matrix(rating_weight=0.5).toarray()[1].tolist() == [1.5, 0, 0]


def test_users_new_to_the_target_are_held_out_whole_and_seeded():
    frame = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(20) for _ in range(6)],
            "item_id": [f"i{i}" for _ in range(20) for i in range(6)],
            "timestamp": 0,
        }
    )
    split = split_users(frame, (0.8, 0.1, 0.1), seed=1)
    held = hold_out_users(frame, split, 0.25, seed=1)
    per_user = held.groupby(frame["user_id"]).agg(set)
    newcomers = per_user[per_user == {"test"}].index
    assert len(newcomers) == 5
    # everyone else keeps the per-user split exactly
    others = ~frame["user_id"].isin(newcomers)
    assert held[others].equals(split[others])
    assert set(newcomers) == set(
        hold_out_users(frame, split, 0.25, seed=1).groupby(frame["user_id"]).agg(set).loc[lambda s: s == {"test"}].index
    )
    assert hold_out_users(frame, split, 0.0, seed=1).equals(split)


def test_splits_and_newcomers_stay_put_when_other_users_come_and_go():
    """A champion trained on one data version is compared with a candidate on the next: the users and rows it
    trained on must not become the next version's test rows or newcomers."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [
        (f"u{u:04d}", f"i{i}")
        for u in range(400)
        for i in rng.choice(300, size=int(rng.integers(5, 30)), replace=False)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(timestamp=0)
    grown = pd.concat(
        [
            frame,
            pd.DataFrame(
                {
                    "user_id": [f"z{u:02d}" for u in range(20) for _ in range(8)],
                    "item_id": [f"i{i}" for i in range(8)] * 20,
                    "timestamp": 0,
                }
            ),
        ],
        ignore_index=True,
    )
    before, after = split_users(frame, (0.8, 0.1, 0.1), seed=3), split_users(grown, (0.8, 0.1, 0.1), seed=3)
    assert after.iloc[: len(frame)].equals(before), "the rows of users already there keep their split"

    def newcomers(data, split):
        held = hold_out_users(data, split, 0.3, seed=3).groupby(data["user_id"]).agg(set)
        return set(held[held == {"test"}].index)

    old, new = newcomers(frame, before), newcomers(grown, after)
    assert len(old) == 120 and len(new) == 126
    assert len(old - new) <= 6, "20 users more move the cut by at most their own number's share"
