"""Stage 3, unify, on Spark: the interactions (the table that grows past one machine) are mapped, cleaned and written
by Spark; users and items (a row per person or item) by the same code as the pandas engine (stages/unify.py).

The result is the pandas engine's, row for row (tests/data/test_spark_engine.py): the same keys, the same earliest
row of a repeated (user, item) pair (ties: the first in file order), the same counts, rules and messages.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import transfer_rec.stages.unify as pandas_unify
from transfer_rec.config import PipelineConfig, PlatformConfig
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import UnifiedVersion, ValidatedBatch
from transfer_rec.schema import rules
from transfer_rec.schema.unified import INTERACTION_COLUMNS, item_key, rating_mapping, user_key
from transfer_rec.spark.session import read_table, spark_session
from transfer_rec.spark.validate import SparkInteractions
from transfer_rec.stages.validate import validate_unified

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _interactions(spark: SparkSession, paths: list[Path], platform: PlatformConfig) -> DataFrame:
    """The interaction files with the unified column names, and `_row`, each row's position in file order."""
    from pyspark.sql import functions as F

    mapping = platform.columns["interactions"]
    frames = []
    for path in paths:
        native = read_table(spark, path, platform.format, platform.delimiter)
        frames.append(native.select(*(F.col(n).alias(u) for n, u in mapping.items() if n in native.columns)))
    if not frames:  # an incremental platform none of whose days has landed yet: no rows, as pandas reads it
        frames = [spark.createDataFrame([], ", ".join(f"`{u}` string" for u in mapping.values()))]
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame, allowMissingColumns=True)
    # increasing with the partition and the row in it: a file's splits and the files are partitions in order
    return raw.withColumn("_row", F.monotonically_increasing_id())


def _check_id_lengths(raw: DataFrame, columns: tuple[str, ...], limit: int, platform: str, file: str) -> None:
    from pyspark.sql import functions as F

    for column in columns:
        long = raw.where(F.length(column) > limit).select(column).distinct()
        if long.limit(1).count():
            rules.check_id_length({column: long.toPandas()[column]}, limit, platform, file)


def unify_platform(
    spark: SparkSession,
    batch_dir: Path,
    platform: PlatformConfig,
    config: PipelineConfig,
    staged: Path,
    interactions: list[Path] | None = None,
) -> dict[str, Any]:
    """stages.unify.unify_platform with the interactions unified by Spark and written as Parquet part files to
    `staged` (the frame returned reads them back); the counts are read from those files."""
    from pyspark.sql import functions as F

    files = platform.files
    paths = interactions if interactions is not None else [batch_dir / files["interactions"]]
    raw = _interactions(spark, paths, platform)
    # without ratings every interaction is a positive (the top of the scale), as in stages/unify.py
    rated = "rating" in raw.columns
    rating = F.col("rating").cast("double") if rated else F.lit(float(platform.rating_scale[1]))
    shift, factor = rating_mapping(platform.rating_scale)
    if (shift, factor) != (0.0, 1.0):  # onto the unified scale, as in stages/unify.py
        rating = F.lit(shift) + F.lit(factor) * rating
    timestamp = F.col("timestamp") if "timestamp" in raw.columns else F.lit(0)
    # whole numbers exactly (a double holds 53 bits), the others truncated as pandas' astype(int64) does
    stamp = F.coalesce(timestamp.cast("long"), timestamp.cast("double").cast("long"))
    # One pass over the rows, per native item id: the catalogue (item keys are folded in Python, once per distinct
    # native id: a catalogue is small next to its interactions), the counts and the id lengths (the offending ids
    # are gathered only when there are some).
    per_item = (
        raw.groupBy(F.col("item_id").cast("string").alias("native"))
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum((rating.isNull() | stamp.isNull()).cast("long")).alias("unusable"),
            F.max(F.length(F.col("user_id").cast("string"))).alias("user_length"),
        )
        .toPandas()
    )
    natives = per_item["native"].dropna()
    rows_in, unusable = int(per_item["rows"].sum()), int(per_item["unusable"].sum())
    longest = pd.concat([per_item["user_length"].astype("float64"), natives.str.len().astype("float64")]).max()
    limit = config.rules.max_id_length
    if pd.notna(longest) and longest > limit:
        _check_id_lengths(raw, ("user_id", "item_id"), limit, platform.name, files["interactions"])
    if platform.e_mail_user_ids == "refuse" and "users" not in files:
        # rules.check_opaque_user_ids on every landed partition's rows, where pandas checks them (with a users file,
        # platform_users checks its ids, and each interaction's user must be one of them): a regex over the rows
        # of such a platform only
        user = F.col("user_id").cast("string")
        named = raw.where(user.rlike(rules.IDENTITY_ID_PATTERN)).select(user).distinct().count()
        if named:
            raise rules.opaque_user_id_refusal(named, platform.name, files["interactions"], "user_id")
    # The native id an item is served by is the smallest that folds to its key.
    keys = pd.DataFrame({"native": natives.to_numpy(dtype=object), "key": natives.map(item_key)})
    item_keys = spark.createDataFrame(keys.astype({"key": object}), "native string, key string")
    rows = raw.join(F.broadcast(item_keys), raw["item_id"].cast("string") == item_keys["native"], "left").select(
        F.concat(F.lit(user_key(platform.name, "")), F.col("user_id").cast("string")).alias("user_id"),
        F.col("key").alias("item_id"),
        rating.alias("rating"),
        stamp.alias("timestamp"),
        F.col("_row"),
    )
    usable = rows.where(
        F.col("user_id").isNotNull()
        & F.col("item_id").isNotNull()
        & F.col("rating").isNotNull()
        & F.col("timestamp").isNotNull()
    )
    # the earliest row of each (user, item) pair, of rows at the same time the first in file order: the least
    # (timestamp, row) of the pair, by aggregation (no sort of the whole table)
    first = F.min(F.struct("timestamp", "_row", "rating")).alias("first")
    kept = usable.groupBy("user_id", "item_id").agg(first)
    kept = kept.select("user_id", "item_id", "first.rating", "first.timestamp")
    users = pandas_unify.platform_users(batch_dir, platform, config)
    leaving = users.loc[~users["consent"].astype(bool), ["user_id"]] if len(users) else users
    opted_out = 0
    if len(leaving):
        # Opted-out users' interactions never enter training or evaluation (they keep a users row, as with
        # pandas): their pairs are counted by a pass over their rows alone and left out of what is written.
        out = F.broadcast(spark.createDataFrame(leaving.astype({"user_id": object}), "user_id string"))
        opted_out = usable.join(out, "user_id", "left_semi").select("user_id", "item_id").distinct().count()
        kept = kept.join(out, "user_id", "left_anti")
    inter = kept.select(
        F.lit(platform.name).alias("platform"),
        "user_id",
        "item_id",
        "rating",
        (
            (F.col("rating") >= F.lit(float(config.features.min_rating)))
            if rated
            else F.lit(True)  # implicit feedback: every interaction a positive
        )
        .cast("byte")
        .alias("label"),
        "timestamp",
    ).select(*INTERACTION_COLUMNS)
    # Written once, straight from the aggregation: caching 18 M pairs to count them and writing them from the cache
    # cost more than this write and the few columnar reads below (docs/results/2026-12-06-spark-direct-write.md).
    inter.write.parquet(str(staged))
    written = spark.read.parquet(str(staged))
    present = (
        written.groupBy("item_id")
        .agg(F.count(F.lit(1)).alias("rows"))
        .join(item_keys.groupBy("key").agg(F.min("native").alias("native_id")), F.col("item_id") == F.col("key"))
        .select("item_id", "native_id", "rows")
        .toPandas()
        .sort_values("item_id", kind="stable", ignore_index=True)
    )
    rows_out = int(present["rows"].sum())
    duplicated = rows_in - unusable - rows_out - opted_out
    rules.check_duplicate_share(
        duplicated, rows_in, config.rules.max_duplicate_share, platform.name, files["interactions"]
    )
    if len(users):  # after the share rule, in pandas' order
        # on the pairs as written (a scan of one column), not on the aggregation, which would run again
        known = F.broadcast(spark.createDataFrame(users[["user_id"]].astype(object), "user_id string"))
        unknown = written.join(known, "user_id", "left_anti").groupBy("user_id").count().toPandas()
        names = unknown["user_id"].str.slice(len(user_key(platform.name, ""))).to_numpy()
        rules.check_users_known(names, int(unknown["count"].sum()), platform.name, files["interactions"])
    n_users = written.select("user_id").distinct().count()
    counts = (rows_in, rows_out, unusable, duplicated, opted_out, n_users)
    keys = present["item_id"].to_numpy(dtype=object)
    natives = present["native_id"].to_numpy(dtype=object)
    rows = present["rows"].to_numpy()
    return pandas_unify.platform_part(batch_dir, platform, config, written, users, keys, natives, rows, counts)


def unify(
    validated: list[ValidatedBatch],
    config: PipelineConfig,
    layout: StateLayout,
    data_docs: Callable[[str], None] | None = None,
) -> UnifiedVersion:
    """stages.unify.unify on Spark: the same tables, rules, quarantine and atomic switch of lake/unified/current."""
    tables = SparkTables(spark_session(config.spark), layout)
    try:
        return pandas_unify.unify(validated, config, layout, engine=tables, data_docs=data_docs)
    finally:
        tables.discard()


class SparkTables:
    """The Spark engine of stages.unify: every batch's interactions unified by Spark and written by Spark as Parquet
    part files to a staging folder, moved into the new version's folder and validated by Great Expectations on the
    Spark DataFrame read from there; users, items and links are pandas frames, as in the pandas engine."""

    def __init__(self, spark: SparkSession, layout: StateLayout) -> None:
        self.spark = spark
        # beside the versions (one file system: the part files are renamed into a version, not copied), named so
        # that atomic_dir's pruning of old versions never takes it
        self.staging = layout.unified / ".versions" / f"staging-{uuid.uuid4().hex[:12]}"
        self.staged: list[Path] = []

    def platforms(
        self, validated: list[ValidatedBatch], config: PipelineConfig, inputs: dict[str, pandas_unify.Inputs]
    ) -> dict[str, dict[str, Any]]:
        parts = {}
        for m in validated:
            platform = config.platform(m.platform)
            files = inputs[m.platform].interactions
            staged = self.staging / f"{m.platform}.parquet"
            self.staged.append(staged)
            parts[m.platform] = unify_platform(self.spark, Path(m.batch_dir), platform, config, staged, files)
        return parts

    def concat(self, frames: list[DataFrame]) -> DataFrame:
        # row order is no part of the tables' contract (every reader groups or indexes by key): no global sort
        stacked = frames[0]
        for frame in frames[1:]:
            stacked = stacked.unionByName(frame)
        return stacked

    def write_and_validate(
        self, tables: dict[str, Any], out: Path, config: PipelineConfig, layout: StateLayout
    ) -> dict[str, Any]:
        # a folder of part files in the same place as the pandas engine's file: readers take either. Spark names
        # every job's part files uniquely, so the platforms' files move into one folder without a clash.
        folder = out / "interactions.parquet"
        folder.mkdir()
        for staged in self.staged:
            for part in staged.iterdir():
                if not part.name.lstrip(".").startswith("_SUCCESS"):
                    part.rename(folder / part.name)
        pandas_unify.write_tables({k: v for k, v in tables.items() if k != "interactions"}, out)
        # the stacked frame read the staging folder, empty now: from here on the interactions are the version's
        written = self.spark.read.parquet(str(folder))
        tables = {**tables, "interactions": written}
        return validate_unified(tables, config, layout, out.name, SparkInteractions(written, out))

    def discard(self) -> None:
        """Remove the staging folder (what was not moved into a version: all of it when unify failed)."""
        shutil.rmtree(self.staging, ignore_errors=True)
