"""The Spark engine (`engine: spark`, Spark in local mode) against the pandas engine on the same landed batches: the
same unified tables and the same features and splits, row for row; the same refusal of a bad batch, quarantined,
with the current unified version left as it was."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.synthetic import partition_by_day
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.schema.rules import BatchRefused
from transfer_rec.schema.unified import item_key
from transfer_rec.stages import features as pandas_features
from transfer_rec.stages import unify as pandas_unify
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.validate import validate_batch

pytest.importorskip("pyspark")
pytestmark = pytest.mark.skipif(
    not (os.environ.get("JAVA_HOME") or shutil.which("java")),
    reason="Spark needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)",
)
spark_features = pytest.importorskip("transfer_rec.spark.features")
spark_unify = pytest.importorskip("transfer_rec.spark.unify")

SPARK = {"master": "local[2]", "conf": {"spark.driver.memory": "1g"}}


def _linked_world(pipeline_env, monkeypatch) -> dict:
    """The synthetic two-platform world with what unification has to get right: people linked by e-mail on both
    platforms, some of them opted out, repeated (user, item) rows (a later one, and one at the same second: the
    first in file order wins), and two native ids of one item that fold to one key."""
    env = pipeline_env(spark=SPARK)
    monkeypatch.setenv("TRANSFER_REC_PII_SALT", "a-test-salt-of-at-least-16-chars")
    raw = yaml.safe_load(env["config"].read_text())
    for platform in raw["platforms"]:
        folder = env["exports"] / platform["name"]
        sep = platform["delimiter"]
        users = pd.read_csv(folder / "users.txt", sep=sep, dtype=str)
        users["email"] = [f" Person{n}@Example.org " for n in range(len(users))]
        users["consent"] = ["no" if n % 17 == 5 else "yes" for n in range(len(users))]
        users.to_csv(folder / "users.txt", sep=sep, index=False)
        platform["columns"]["users"].update({"email": "email", "consent": "consent"})
        platform["duplicate_interactions"] = "warning"  # the tied rows: validation warns, unification keeps one
        inter = pd.read_csv(folder / "interactions.txt", sep=sep, dtype=str)
        user, item, rating, stamp = inter.columns
        later = inter.iloc[:40].assign(**{rating: "1", stamp: (inter[stamp].iloc[:40].astype(int) + 60).astype(str)})
        tied = inter.iloc[40:60].assign(**{rating: "2"})  # same second: the original row (earlier in the file) wins
        folded = inter.iloc[:1].assign(**{item: inter[item].iloc[0].upper(), user: inter[user].iloc[1]})
        pd.concat([inter, later, tied, folded], ignore_index=True).to_csv(
            folder / "interactions.txt", sep=sep, index=False
        )
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    return env


def _tables(folder) -> dict[str, pd.DataFrame]:
    names = ("interactions", "users", "items", "links", "item_ids")
    keys = {
        "interactions": ["platform", "user_id", "item_id"],
        "users": ["platform", "user_id"],
        "items": ["item_id"],
        "links": ["link_id", "platform"],
        "item_ids": ["platform", "item_id"],
    }
    return {
        n: pd.read_parquet(folder / f"{n}.parquet").sort_values(keys[n], ignore_index=True).convert_dtypes()
        for n in names
    }


@pytest.fixture(scope="module")
def both(tmp_path_factory, world_maker):
    """Each engine's unified version and feature set of the same landed batches."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("spark-world")

    def pipeline_env(**sections):
        return world_maker(root, monkeypatch, **sections)

    try:
        _linked_world(pipeline_env, monkeypatch)
        config, layout = load_config(), StateLayout.from_env()
        assert config.engine == "pandas"
        validated = [validate_batch(pull_platform(p, layout, "b1"), p, layout) for p in config.platforms]
        out = {}
        unified = pandas_unify.unify(validated, config, layout)
        out["pandas"] = (unified, _tables(Path(unified.dir)))
        spark_config = config.model_copy(update={"engine": "spark"})
        unified_s = spark_unify.unify(validated, spark_config, layout)
        out["spark"] = (unified_s, _tables(Path(unified_s.dir)))
        out["features"] = (
            pandas_features.build_features(out["pandas"][0], config, layout, "pandas"),
            spark_features.build_features(unified_s, spark_config, layout, "spark"),
        )
        out["layout"], out["config"], out["validated"] = layout, spark_config, validated
        yield out
    finally:
        monkeypatch.undo()


def test_spark_unifies_as_pandas_does_row_for_row(both):
    (version_p, pandas_tables), (version_s, spark_tables) = both["pandas"], both["spark"]
    assert version_s.dir != version_p.dir
    for name, frame in pandas_tables.items():
        pd.testing.assert_frame_equal(spark_tables[name], frame, obj=f"unified {name}")
    assert version_s.platforms == version_p.platforms, "the same counts: rows, drops, users, items, links"
    village = version_p.platforms["village"]
    # the planted cases were met, so the equality above covers them
    assert village["dropped"]["duplicate_user_item"] in (60, 61)
    assert village["dropped"]["opted_out"] > 0 and village["linked_users"] > 0
    inter = pandas_tables["interactions"]
    assert (inter.groupby(["user_id", "item_id"]).size() == 1).all()
    assert version_s.validation["success"] and "unified" in version_s.validation["data_docs"]


def test_spark_features_and_splits_are_the_same_row_for_row(both):
    features_p, features_s = both["features"]
    assert features_s.n_items == features_p.n_items
    assert features_s.platforms == features_p.platforms
    keys = ["user_id", "item_id"]
    for platform in ("campus", "village"):
        for table in ("interactions", "users"):
            a = pd.read_parquet(f"{features_p.dir}/{platform}.{table}.parquet")
            b = pd.read_parquet(f"{features_s.dir}/{platform}.{table}.parquet")
            on = keys if table == "interactions" else ["user_id"]
            a, b = (f.sort_values(on, ignore_index=True).convert_dtypes() for f in (a, b))
            pd.testing.assert_frame_equal(b, a, obj=f"{platform}.{table}")
    items_p = pd.read_parquet(f"{features_p.dir}/items.parquet").convert_dtypes()
    items_s = pd.read_parquet(f"{features_s.dir}/items.parquet").convert_dtypes()
    pd.testing.assert_frame_equal(items_s, items_p)
    village = pd.read_parquet(f"{features_s.dir}/village.interactions.parquet")
    assert set(village["split"]) == {"train", "valid", "test"}


def test_spark_refuses_a_bad_batch_as_pandas_does_and_keeps_the_current_version(both):
    layout, config = both["layout"], both["config"]
    current = json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"]
    village = config.platform("village")
    folder = Path(village.location)
    inter = pd.read_csv(folder / "interactions.txt", sep=village.delimiter, dtype=str)
    pd.concat([inter, inter.iloc[: len(inter) // 5]], ignore_index=True).to_csv(
        folder / "interactions.txt", sep=village.delimiter, index=False
    )
    validated = [validate_batch(pull_platform(p, layout, "b2"), p, layout) for p in config.platforms]
    with pytest.raises(BatchRefused) as caught:
        spark_unify.unify(validated, config, layout)
    assert caught.value.rule == "max_duplicate_share" and caught.value.platform == "village"
    message = str(caught.value)
    assert message.startswith("platform village, interactions.txt, column 'user_id, item_id': rule max_duplicate_share")
    reason = json.loads((layout.quarantine / "village" / "b2" / "validation.json").read_text())
    assert reason["stage"] == "unify" and reason["rule"] == "max_duplicate_share"
    assert json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"] == current


def test_incremental_partitions_unify_alike_on_both_engines(pipeline_env, monkeypatch):
    """An incremental platform's day partitions are unified together on both engines, and an item named two ways
    that fold to one key is served by the same native id on both: the smallest, whichever partition came first."""
    env = pipeline_env(spark=SPARK)
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export, dtype=str)
    frame["ts"] = (1_700_006_400 + frame["ts"].astype(int) % (8 * 86_400)).astype(str)  # eight days
    item = frame["course"].iloc[0]
    late = frame["ts"].astype(int) >= 1_700_006_400 + 7 * 86_400
    frame.loc[late & (frame["course"] == item), "course"] = item.upper()  # the last day's export spells it so
    assert (frame["course"] == item.upper()).any()
    frame.to_csv(export, index=False)
    days = partition_by_day(env["exports"] / "village", "interactions.txt", "ts", delimiter=",")
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["pull"] = {"mode": "incremental"}
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    config, layout = load_config(), StateLayout.from_env()
    interval = (
        datetime.fromisoformat(days[0].removeprefix("dt=")).replace(tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
    )
    campus, village = config.platform("campus"), config.platform("village")
    validated = [
        validate_batch(pull_platform(campus, layout, "snap"), campus, layout),
        validate_batch(pull_platform(village, layout, "ignored", interval), village, layout),
    ]
    pandas_tables = _tables(Path(pandas_unify.unify(validated, config, layout).dir))
    spark_config = config.model_copy(update={"engine": "spark"})
    spark_tables = _tables(Path(spark_unify.unify(validated, spark_config, layout).dir))
    for name, frame in pandas_tables.items():
        pd.testing.assert_frame_equal(spark_tables[name], frame, obj=f"unified {name}")
    ids = pandas_tables["item_ids"]
    native = ids.loc[(ids["platform"] == "village") & (ids["item_id"] == item_key(item)), "native_id"]
    assert native.tolist() == [item.upper()]
