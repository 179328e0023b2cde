"""Stage 4, features, on Spark: implicit feedback and the k-core of every platform by Spark, the sources written by
Spark; each target's seeded split by the pandas engine's functions (stages/features.py) on the target's rows, so the
splits are the same row for row. A target is the small side of a family (a young platform); its rows are collected
to the driver for the split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import transfer_rec.stages.features as pandas_features
from transfer_rec.config import PipelineConfig
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import atomic_dir
from transfer_rec.manifests import FeatureSet, UnifiedVersion
from transfer_rec.spark.session import spark_session

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


def k_core(inter: DataFrame, k: int) -> DataFrame:
    """io.tables.k_core on Spark: drop users and items with fewer than k interactions until none is left (the
    k-core is unique, so removing all of them at once per round reaches the pandas engine's rows).

    Each round finds the users and items below k (two aggregations of the cached rows, small results) and, only if
    there are some, removes their rows by anti-joins with those keys (the items' broadcast; the users' left to
    adaptive execution, which broadcasts a small side); the round that finds none ends the loop without copying the
    rows again. The keys are checkpointed, so a round's
    plan holds the previous round's rows once, not three times: derived from the rows, each round's plan tripled and
    a chain of seven rounds ran a 1 GiB driver out of memory printing it (tests/data/test_spark_engine.py)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    current = inter.persist(StorageLevel.MEMORY_AND_DISK)
    while True:
        users = current.groupBy("user_id").count().where(F.col("count") < k).select("user_id").localCheckpoint()
        items = current.groupBy("item_id").count().where(F.col("count") < k).select("item_id").localCheckpoint()
        if users.isEmpty() and items.isEmpty():
            return current.select(*inter.columns)
        nxt = current.join(users, "user_id", "left_anti").join(F.broadcast(items), "item_id", "left_anti")
        nxt = nxt.persist(StorageLevel.MEMORY_AND_DISK)
        nxt.count()  # materialised before the rows it was made from leave the cache
        current.unpersist()
        current = nxt


def build_features(
    unified: UnifiedVersion, config: PipelineConfig, layout: StateLayout, run_key: str, seed: int | None = None
) -> FeatureSet:
    """stages.features.build_features on Spark: the same folder, files (Spark writes the sources' interactions as
    Parquet part files) and manifest."""
    from pyspark.sql import functions as F

    spark = spark_session(config.spark)
    udir = Path(unified.dir)
    inter = spark.read.parquet(str(udir / "interactions.parquet"))
    users = pd.read_parquet(udir / "users.parquet")
    items = pd.read_parquet(udir / "items.parquet")
    seed = config.features.seed if seed is None else seed
    rows_in = unified.interaction_rows()
    positive = inter.where(F.col("label") == 1)
    kept = {
        p.name: k_core(positive.where(F.col("platform") == p.name), config.features.min_interactions)
        for p in config.platforms
    }
    sizes = {name: frame.count() for name, frame in kept.items()}
    for p in config.platforms:
        if not sizes[p.name]:
            raw = rows_in.get(p.name, 0)
            pandas_features.refuse_empty(p.name, raw, positive.where(F.col("platform") == p.name).count(), config)
    distinct = None
    for frame in kept.values():
        frame_items = frame.select("item_id").distinct()
        distinct = frame_items if distinct is None else distinct.union(frame_items)
    item_ids = sorted(r["item_id"] for r in distinct.distinct().collect())
    item_index = pd.DataFrame({"item_id": item_ids, "item_idx": range(len(item_ids))})
    index = spark.createDataFrame(item_index, "item_id string, item_idx long")
    counts: dict[str, Any] = {}
    final = layout.features / run_key
    with atomic_dir(final) as out:
        item_index.merge(items, on="item_id", how="left").to_parquet(out / "items.parquet", index=False)
        for platform in config.platforms:
            frame = (
                kept[platform.name].join(F.broadcast(index), "item_id").select(*kept[platform.name].columns, "item_idx")
            )
            path = out / f"{platform.name}.interactions.parquet"
            if platform.role == "target":
                rows = frame.toPandas().sort_values(["user_id", "item_id"], ignore_index=True)
                rows = pandas_features.split_target(rows, platform.name, config, seed)
                rows.to_parquet(path, index=False)
                present = rows["user_id"].unique()
                splits = rows["split"].value_counts().to_dict()
                n_items = rows["item_id"].nunique()
            else:
                written = frame.withColumn("split", F.lit("train"))
                written.write.parquet(str(path))
                (path / "_SUCCESS").unlink(missing_ok=True)
                # counted on the cached rows, not on the join again
                present = kept[platform.name].select("user_id").distinct().toPandas()["user_id"]
                splits = {"train": sizes[platform.name]}
                n_items = kept[platform.name].select("item_id").distinct().count()
            pandas_features.write_platform_users(users, platform.name, present, out)
            counts[platform.name] = pandas_features.platform_counts(
                platform.role, rows_in.get(platform.name, 0), len(present), n_items, splits
            )
            log.info("features %s (Spark): %s", platform.name, counts[platform.name])
        manifest = pandas_features.write_manifest(out, run_key, seed, len(item_ids), counts, unified)
    for frame in kept.values():
        frame.unpersist()
    return manifest
