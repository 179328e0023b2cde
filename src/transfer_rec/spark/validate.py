"""Great Expectations on Spark DataFrames: the unified interactions' suite run through GX's Spark data source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_rec.schema.suites import REFERENCE_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# The unified interactions' column types (schema.unified.TYPES) as Spark names them.
SPARK_TYPES = {"rating": "DoubleType", "timestamp": "LongType", "label": "ByteType"}


def with_references(interactions: DataFrame, folder: Path, profiled: list[str]) -> DataFrame:
    """schema.suites.referential_columns on Spark: per key, the key where it has no row in its table (null
    otherwise), looked up by broadcast joins with the version's items and users files in `folder`; users are checked
    only on the `profiled` platforms (those that export profiles)."""
    from pyspark.sql import functions as F

    spark = interactions.sparkSession
    items = spark.read.parquet(str(folder / "items.parquet")).select(F.col("item_id").alias("_item")).distinct()
    users = spark.read.parquet(str(folder / "users.parquet")).select(F.col("user_id").alias("_user")).distinct()
    joined = interactions.join(F.broadcast(items), F.col("item_id") == F.col("_item"), "left").join(
        F.broadcast(users), F.col("user_id") == F.col("_user"), "left"
    )
    item_missing, user_missing = REFERENCE_COLUMNS
    return joined.select(
        *interactions.columns,
        F.when(F.col("_item").isNull(), F.col("item_id")).alias(item_missing),
        F.when(F.col("platform").isin(profiled) & F.col("_user").isNull(), F.col("user_id")).alias(user_missing),
    )


class SparkInteractions:
    """stages.validate.InteractionsCheck for unified interactions held as a Spark DataFrame, next to the version's
    other tables (already written to `folder`)."""

    types = SPARK_TYPES

    def __init__(self, interactions: DataFrame, folder: Path) -> None:
        self.interactions = interactions
        self.folder = folder

    def run(self, scratch: Any, sets: dict[str, Any], expectations: list[Any], name: str) -> list[tuple[Any, Any]]:
        from transfer_rec.stages.validate import checkpoint

        source = scratch.data_sources.add_spark(f"{name}.spark")
        # Every expectation is a Spark job of its own over the joined rows. Caching them first cost more than it
        # saved on 20 M rows (docs/results/2026-12-04-spark-ingest.md): they are read from Parquet each time.
        frame = with_references(self.interactions, self.folder, [str(v) for v in sets["profiled"]])
        run = checkpoint(scratch, source, expectations, name).run(batch_parameters={"dataframe": frame})
        return list(run.run_results.items())
