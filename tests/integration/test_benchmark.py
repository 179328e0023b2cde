"""The benchmark's file mode, fed the way another library's split would be: files in, recommendations and metrics
out."""

import json

import pandas as pd
import pytest

from bench.protocol import export_split
from transfer_rec.benchmark import run_files
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.stages.features import build_features
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import validate_batch


def test_file_mode_writes_top10_without_seen_items_and_all_contenders(pipeline_env, tmp_path):
    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "b"), p, layout) for p in config.platforms]
    features = build_features(unify(validated, config, layout), config, layout, "bench")
    args = export_split(features, config, tmp_path / "out")
    assert args.source_users and args.target_users and args.target_items  # optional inputs are exercised too
    # a user whose only test item repeats one of their train items (repeat consumption) is still a test user
    train = pd.read_csv(args.target_train, sep="\t", dtype=str)
    test = pd.read_csv(args.target_test, sep="\t", dtype=str)
    repeater = test["user_id"].iloc[0]
    again = train[train["user_id"] == repeater].head(1)
    pd.concat([test[test["user_id"] != repeater], again]).to_csv(args.target_test, sep="\t", index=False)
    # a user new to the target: their train and valid rows left out, only their test rows stay
    newcomer = next(u for u in test["user_id"].unique() if u != repeater)
    train[train["user_id"] != newcomer].to_csv(args.target_train, sep="\t", index=False)
    valid = pd.read_csv(args.target_valid, sep="\t", dtype=str)
    valid[valid["user_id"] != newcomer].to_csv(args.target_valid, sep="\t", index=False)
    report = run_files(args, config)
    # warm and new users apart, each group's mean a part of the overall one
    for name, groups in report["users"].items():
        assert groups["new"]["users"] == 1 and groups["warm"]["users"] == report["test_users"] - 1
        whole = (groups["warm"]["ndcg"] * groups["warm"]["users"] + groups["new"]["ndcg"]) / report["test_users"]
        assert whole == pytest.approx(report["metrics"][name]["ndcg"])

    assert set(report["metrics"]) == {"transfer", "target_only", "ease", "popularity"}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test_users"] == report["test_users"]
    recs = pd.read_csv(tmp_path / "out" / "recommendations.tsv", sep="\t", dtype=str)
    assert recs.groupby("user_id").size().eq(10).all() and recs["user_id"].nunique() == report["test_users"]
    assert set(recs["user_id"]) == set(pd.read_csv(args.target_test, sep="\t", dtype=str)["user_id"])
    assert repeater in set(recs["user_id"])
    seen = pd.concat(
        [pd.read_csv(args.target_train, sep="\t", dtype=str), pd.read_csv(args.target_valid, sep="\t", dtype=str)]
    )
    assert not set(zip(recs["user_id"], recs["item_id"])) & set(zip(seen["user_id"], seen["item_id"]))
    target_items = set(
        pd.concat([pd.read_csv(getattr(args, f"target_{s}"), sep="\t", dtype=str) for s in ("train", "valid", "test")])[
            "item_id"
        ]
    )
    assert set(recs["item_id"]) <= target_items, "only target items are recommended"

    # item segments: the train-count buckets split the test interactions, and their hits add up to precision's
    test_rows = len(pd.read_csv(args.target_test, sep="\t", dtype=str).drop_duplicates(["user_id", "item_id"]))
    assert set(report["item_segments"]) == set(report["metrics"])
    for name, segments in report["item_segments"].items():
        buckets = [v for seg, v in segments.items() if seg.startswith("target train")]
        assert sum(v["relevant"] for v in buckets) == test_rows
        hits = sum(v["found"] * v["relevant"] for v in buckets)
        assert hits == pytest.approx(report["metrics"][name]["precision"] * 10 * report["test_users"])
        assert segments["not on the source"]["relevant"] <= test_rows


def test_a_file_without_the_key_columns_is_named(tmp_path):
    bad = tmp_path / "source.tsv"
    bad.write_text("user\titem\nu\ti\n")
    args = type(
        "Args",
        (),
        {
            "source": bad,
            "target_train": bad,
            "target_valid": bad,
            "target_test": bad,
            "source_users": None,
            "source_items": None,
            "target_users": None,
            "target_items": None,
            "out": tmp_path / "out",
        },
    )()
    with pytest.raises(SystemExit, match=r"source.tsv: missing column\(s\) \['item_id', 'user_id'\]"):
        run_files(args, load_config())
