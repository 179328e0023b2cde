"""Large tables are validated in partitions by user, in forked worker processes: every row still meets every
expectation, and the verdicts, counts and messages are those of one validation of the whole table."""

import re

import numpy as np
import pandas as pd
import pytest
from great_expectations import expectations as gxe

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.stages import validate
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.validate import Batch, DataValidationError, partitions, validate_batch, validate_frames


def failures(message: str) -> set[tuple[str, int]]:
    """(expectation with its arguments, unexpected count) of each failure line."""
    return {(m[0], int(m[1])) for m in re.findall(r"(expect_\w+\(.*?\)) failed: (\d+) unexpected", message)}


@pytest.fixture
def partitioned(monkeypatch):
    """Partitions of 100 rows, validated by 2 forked workers even for a small batch."""
    monkeypatch.setattr(validate, "PARTITION_ROWS", 100)
    monkeypatch.setattr(validate, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setenv("TRANSFER_REC_WORKERS", "2")


def refusal(batch_id: str) -> str:
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    with pytest.raises(DataValidationError) as caught:
        validate_batch(pull_platform(village, layout, batch_id), village, layout)
    return str(caught.value)


@pytest.mark.parametrize("fault", ["nulls", "out_of_range", "duplicates"])
def test_partitioned_validation_refuses_what_whole_validation_refuses(pipeline_env, monkeypatch, fault):
    pipeline_env(faults=[fault])
    whole = refusal("whole")
    with monkeypatch.context() as patch:
        patch.setattr(validate, "PARTITION_ROWS", 100)
        patch.setattr(validate, "PARALLEL_MIN_ROWS", 0)
        patch.setenv("TRANSFER_REC_WORKERS", "2")
        split = refusal("split")
    assert failures(whole) and failures(split) == failures(whole)
    layout = StateLayout.from_env()
    pages = [p.name for p in (layout.data_docs / "village" / "split" / "validations").rglob("*.html")]
    assert any("part01of" in p for p in pages) and any(".table" in p for p in pages), pages


def test_good_batches_pass_partitioned(pipeline_env, partitioned):
    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    for platform in config.platforms:
        result = validate_batch(pull_platform(platform, layout, "good"), platform, layout)
        assert result.validation.success, result.validation.critical
        assert result.validation.tables[platform.files["interactions"]].failed == 0


def test_whole_table_expectations_run_once_on_all_rows(partitioned, tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(60)], 10)
    frame = pd.DataFrame(
        {"user": users, "item": np.tile([f"i{i}" for i in range(10)], 60), "rating": rng.integers(1, 6, size=600)}
    )
    frame.loc[[5, 305], "item"] = frame.loc[[4, 304], "item"].to_numpy()  # two duplicates, far apart
    frame.loc[[17, 420, 599], "rating"] = 9  # out of range in three partitions
    suite = [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user", "item"]),
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=1, max_value=5),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=500),
        gxe.ExpectColumnMeanToBeBetween(column="rating", min_value=0, max_value=3),
    ]
    scratch = validate._scratch_context(tmp_path / "docs")
    source = scratch.data_sources.add_pandas("test")
    results = validate_frames(scratch, source, [Batch("t", frame, suite, "user")])[0]
    assert len(results) == 7, "six partitions of the rows and one run on the whole table"
    failed = {r.expectation_config.type: r.result for r in validate._failed(results)}
    assert failed["expect_compound_columns_to_be_unique"]["unexpected_count"] == 4
    assert failed["expect_column_values_to_be_between"]["unexpected_count"] == 3
    assert failed["expect_table_row_count_to_be_between"]["observed_value"] == 600
    assert failed["expect_column_mean_to_be_between"]["observed_value"] == pytest.approx(frame["rating"].mean())


def test_partitions_keep_each_user_together():
    rng = np.random.default_rng(1)
    grouped = pd.DataFrame({"user": np.repeat(np.arange(500).astype(str), rng.integers(1, 9, size=500))})
    shuffled = grouped.sample(frac=1.0, random_state=2).reset_index(drop=True)
    shuffled.loc[[3, 70, 400], "user"] = None
    for frame in (grouped, shuffled, grouped.astype("category"), shuffled.astype("category")):
        parts = partitions(frame, "user", 300)
        assert parts is not None and len(parts) >= 2
        rows = [np.arange(len(frame))[p] for p in parts]
        assert sorted(np.concatenate(rows).tolist()) == list(range(len(frame))), "every row once"
        owner = {}
        for k, r in enumerate(rows):
            assert len(r) and (np.diff(r) > 0).all(), "non-empty, in file order"
            for user in frame["user"].iloc[r].astype(object).where(frame["user"].iloc[r].notna(), "<missing>"):
                assert owner.setdefault(user, k) == k, f"user {user} split across partitions"
    assert all(isinstance(p, slice) for p in partitions(grouped, "user", 300)), "adjacent rows: slices, no copy"
    assert partitions(grouped, "user", 10_000) is None


def test_unified_suite_in_partitions_finds_dangling_ids_and_duplicates(partitioned, pipeline_env):
    from transfer_rec.stages.validate import validate_unified

    pipeline_env()
    users = [f"a:{u}" for u in range(50)]
    interactions = pd.DataFrame(
        {
            "platform": "a",
            "user_id": np.repeat(users, 8),
            "item_id": np.tile([f"i{i}" for i in range(8)], 50),
            "rating": 4.0,
            "label": pd.Series(1, index=range(400), dtype="int8"),
            "timestamp": 1,
        }
    )
    interactions.loc[[10, 390], "item_id"] = "ghost"  # no such item, in two partitions
    interactions.loc[[200, 201], "item_id"] = "i3"  # three rows of one (user, item) pair
    tables = {
        "interactions": interactions,
        "users": pd.DataFrame(
            {
                "platform": "a",
                "user_id": users[:-1],
                "age": None,
                "gender": "F",
                "occupation": None,
                "region": "12",
                "link_id": "0" * 64,
                "consent": True,
            }
        ),
        "items": pd.DataFrame({"item_id": [f"i{i}" for i in range(8)], "title": "x", "year": 2000, "genres": ""}),
    }
    with pytest.raises(DataValidationError) as caught:
        validate_unified(tables, load_config(), StateLayout.from_env(), "parts")
    found = failures(str(caught.value))
    assert ("expect_column_values_to_be_null({'column': 'item_id_not_in_items'})", 2) in found
    assert ("expect_column_values_to_be_null({'column': 'user_id_not_in_users'})", 8) in found, "the last user"
    assert ("expect_compound_columns_to_be_unique({'column_list': ['user_id', 'item_id']})", 3) in found
    assert "ghost" in str(caught.value) and "a:49" in str(caught.value)
