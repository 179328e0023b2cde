"""The cold-start protocol's harness (bench/coldstart.py): new users held out and given their earliest items, and the
profile ceiling, a reference computed with the answers in hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench import coldstart
from transfer_rec.config import load_config
from transfer_rec.manifests import FeatureSet
from transfer_rec.selection.short_history import ShortHistoryData


def test_new_users_are_held_out_and_given_their_earliest_items(tmp_path):
    config = load_config()
    target, source = config.targets[0].name, config.sources[0].name
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        for j, item in enumerate(rng.choice(10, size=6, replace=False)):
            rows.append((f"t{u}", int(item), 1000 - j, ["train", "train", "train", "train", "valid", "test"][j]))
    frame = pd.DataFrame(rows, columns=["user_id", "item_idx", "timestamp", "split"])
    frame.to_parquet(tmp_path / f"{target}.interactions.parquet")
    pd.DataFrame(
        {"user_id": frame["user_id"].unique(), "age": "18-24", "gender": "F", "occupation": "student"}
    ).to_parquet(tmp_path / f"{target}.users.parquet")
    pd.DataFrame({"user_id": ["s0"], "item_idx": [11], "timestamp": [1], "split": ["train"]}).to_parquet(
        tmp_path / f"{source}.interactions.parquet"
    )
    pd.DataFrame({"user_id": ["s0"], "age": "56+", "gender": "M", "occupation": "other"}).to_parquet(
        tmp_path / f"{source}.users.parquet"
    )
    pd.DataFrame({"item_idx": range(12), "item_id": list("abcdefghijkl")}).to_parquet(tmp_path / "items.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"n_items": 12}))
    features = FeatureSet(dir=str(tmp_path), run_key="t", seed=3, n_items=12, platforms={})
    split = coldstart.cold_split(features, config, seed=3)
    assert len(split.new_ordered) == 4 and len(split.data.ordered) == 16
    assert split.data.train.sum() + split.data.valid.sum() + split.test.sum() == 16 * 6
    new_id = split.new_users["user_id"].iloc[0]
    expected = frame[frame["user_id"] == new_id].sort_values("timestamp")["item_idx"].to_numpy()
    np.testing.assert_array_equal(split.new_ordered[0], expected)
    history, relevant = coldstart.new_user_tasks(split)[3]
    assert set(history[0].indices) == set(expected[:3]) and set(relevant[0].indices) == set(expected[3:])
    assert split.data.catalogue.sum() == 10
    # a smaller target: half the other users train, the new users are the same ones
    smaller = coldstart.cold_split(features, config, seed=3, warm_share=0.5)
    pd.testing.assert_frame_equal(smaller.new_users, split.new_users)
    assert len(smaller.data.ordered) == 8 and set(smaller.data.users["user_id"]) < set(split.data.users["user_id"])
    assert smaller.data.train.shape[0] == 8
    with pytest.raises(ValueError, match="warm_share"):
        coldstart.cold_split(features, config, seed=3, warm_share=0.0)


def _split_for_ceiling(
    warm_items, warm_genders, new_items, new_genders, source_items=(), source_genders=(), n_items=12
):
    """A ColdSplit with the given users' item sets (all warm items in train) and genders; one age for all."""

    def matrix(item_sets):
        rows = np.zeros((len(item_sets), n_items), dtype=np.float32)
        for row, items in enumerate(item_sets):
            rows[row, list(items)] = 1
        return sp.csr_matrix(rows)

    def users(prefix, genders):
        return pd.DataFrame(
            {
                "user_id": [f"{prefix}{i}" for i in range(len(genders))],
                "gender": genders,
                "age": "25-34",
                "occupation": "other",
            }
        )

    empty = sp.csr_matrix((len(warm_items), n_items), dtype=np.float32)
    data = ShortHistoryData(
        n_items=n_items,
        catalogue=np.ones(n_items, dtype=bool),
        train=matrix(warm_items),
        valid=empty,
        users=users("w", warm_genders),
        ordered=[np.array(sorted(s)) for s in warm_items],
        source=matrix(source_items),
        source_users=users("s", list(source_genders)),
        items=pd.DataFrame({"item_idx": range(n_items)}),
    )
    return coldstart.ColdSplit(
        data=data, test=empty, new_users=users("n", new_genders), new_ordered=[np.array(sorted(s)) for s in new_items]
    )


def test_profile_ceiling_finds_the_cell_that_tells_users_apart():
    # every warm woman takes items 0-2, every warm man 3-5; items 6-9, taken by three of four of each, lead overall
    popular = {6, 7, 8, 9}
    warm = [{0, 1, 2} | popular] * 3 + [{0, 1, 2}] + [{3, 4, 5} | popular] * 3 + [{3, 4, 5}]
    split = _split_for_ceiling(warm, ["F"] * 4 + ["M"] * 4, [{0, 1, 2}, {3, 4, 5}], ["F", "M"])
    ceiling = coldstart.profile_ceiling(split)
    assert "gender" in ceiling["best"]["cells"]
    assert ceiling["best"]["ndcg"] == pytest.approx(1.0)  # each new user's three items lead their cell's shares
    by_age = [g for g in ceiling["grid"] if g["cells"] == ["age"]]  # one age for all: the whole population
    assert max(g["ndcg"] for g in by_age) < 0.8


def test_profile_ceiling_leaves_each_new_user_out_of_their_own_counts():
    # ten warm men take one of items 0-9 each; the one new user, a woman, takes only item 11. Counted with her, item
    # 11 would lead her cell; counted without her it has no share anywhere and ranks below items 0-9
    split = _split_for_ceiling([{i} for i in range(10)], ["M"] * 10, [{11}], ["F"])
    assert coldstart.profile_ceiling(split)["best"]["ndcg"] == 0.0


def test_profile_ceiling_mixes_in_the_source_users_cells_where_they_tell_more():
    # the target's warm users all take the same items; on the source, women take items 0-2 and men 3-5
    split = _split_for_ceiling(
        [{6, 7, 8, 9}] * 8,
        ["F", "M"] * 4,
        [{0, 1, 2}, {3, 4, 5}],
        ["F", "M"],
        [{0, 1, 2}] * 5 + [{3, 4, 5}] * 5,
        ["F"] * 5 + ["M"] * 5,
    )
    ceiling = coldstart.profile_ceiling(split)
    assert ceiling["best"]["source_share"] > 0 and ceiling["best"]["ndcg"] == pytest.approx(1.0)
    assert ceiling["best_target"]["source_share"] == 0.0 and ceiling["best_target"]["ndcg"] < 0.8
