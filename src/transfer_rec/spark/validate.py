"""Great Expectations on Spark DataFrames: a landed batch's raw suites and the unified interactions' suite, run
through GX's Spark data source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_rec.config import PlatformConfig
from transfer_rec.io.formats import FormatError, check_text
from transfer_rec.schema import rules
from transfer_rec.schema.suites import REFERENCE_COLUMNS, native_column
from transfer_rec.spark.session import read_table
from transfer_rec.stages.validate import (
    NUMERIC_COLUMNS,
    Batch,
    Landed,
    by_reading,
    checkpoint,
    expectation_key,
    reads_any,
    regroup,
    store_results,
    withhold_identities,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The unified interactions' column types (schema.unified.TYPES) as Spark names them.
SPARK_TYPES = {"rating": "DoubleType", "timestamp": "LongType", "label": "ByteType"}

# Counts and observed values without example rows. On Spark a rule's examples are a filter-and-limit job of their own,
# a scan of the whole table when nothing is unexpected (and SUMMARY adds a count per value, a shuffle): the first
# pass asks for none, and only the rules that found unexpected values run again for their examples.
COUNTS_ONLY = {"result_format": "BASIC", "partial_unexpected_count": 0}


def run_checks(
    scratch: Any,
    source: Any,
    expectations: list[Any],
    name: str,
    frame: DataFrame,
    secret: frozenset[str] = frozenset(),
) -> list[Any]:
    """stages.validate.checkpoint's run on a Spark DataFrame: the (identifier, suite result) pairs, the same
    verdicts, counts and examples as one SUMMARY run, with one pass of example jobs only for rules that need them;
    never for a rule on a `secret` column (GX stores every checkpoint's results, so its examples would be kept)."""
    run = checkpoint(scratch, source, expectations, name, COUNTS_ONLY).run(batch_parameters={"dataframe": frame})
    pairs = list(run.run_results.items())
    unexpected = {
        expectation_key(r.expectation_config)
        for _, suite in pairs
        for r in suite.results
        if (r.result or {}).get("unexpected_count")
    }
    if not unexpected:
        return pairs
    again = [
        e
        for e in expectations
        if expectation_key(e.configuration) in unexpected and not reads_any(e.configuration.kwargs, secret)
    ]
    if not again:
        return pairs
    rerun = checkpoint(scratch, source, again, f"{name}.examples").run(batch_parameters={"dataframe": frame})
    detailed = {expectation_key(r.expectation_config): r for suite in rerun.run_results.values() for r in suite.results}
    for _, suite in pairs:
        suite.results = [detailed.get(expectation_key(r.expectation_config), r) for r in suite.results]
    return pairs


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
        source = scratch.data_sources.add_spark(f"{name}.spark", persist=False)
        # Every expectation is a Spark job of its own over the joined rows, read from Parquet each time: caching
        # them first (GX's default) cost more than it saved on 20 M rows
        # (docs/results/2026-12-06-spark-direct-write.md).
        frame = with_references(self.interactions, self.folder, [str(v) for v in sets["profiled"]])
        return run_checks(scratch, source, expectations, name, frame)


class SparkRaw:
    """stages.validate.RawEngine on Spark: each landed file is read by Spark (a text file's bytes checked first, as
    pandas' reader checks them) and each suite runs as Spark jobs over it, with the same expectations and messages
    as on pandas."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def read(self, path: Path, platform: PlatformConfig, table: str) -> Landed:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
        from pyspark.sql import functions as F

        fmt = platform.format
        check_text(path, fmt)
        user = native_column(platform, table, "user_id")
        try:
            frame = read_table(self.spark, path, fmt, platform.delimiter)
            if platform.e_mail_user_ids == "refuse" and user in frame.columns:
                # the rows and whether a user id holds an address or a phone number, in the one pass that counts them
                pattern = F.col(user).cast("string").rlike(rules.IDENTITY_ID_PATTERN).cast("int")
                counted = frame.agg(F.count(F.lit(1)), F.max(pattern)).first()
                rows, may_hold = int(counted[0]), bool(counted[1])
            else:
                rows, may_hold = frame.count(), False
        except (PySparkException, Py4JJavaError) as exc:
            what = "not a readable Parquet file" if fmt == "parquet" else f"malformed {fmt} file"
            raise FormatError(f"{path}: {what}: {str(exc).strip().splitlines()[0]}") from exc
        numeric = tuple(
            c for c in (native_column(platform, table, u) for u in NUMERIC_COLUMNS) if c and c in frame.columns
        )
        fractional = {name for name, kind in frame.dtypes if kind in ("float", "double")}
        # A fractional number is matched by the numeric pattern as fixed-point text (Spark writes 1e9 as "1.0E9");
        # NaN becomes null, as pandas reads it.
        raw = frame.select(
            *(
                F.when(~F.isnan(c), F.col(c).cast("decimal(38,9)")).cast("string").alias(c)
                if c in numeric and c in fractional
                else F.col(c)
                for c in frame.columns
            )
        )
        numbers = frame.select(*(F.col(c).cast("double").alias(c) if c in numeric else F.col(c) for c in frame.columns))
        return Landed(raw, numbers, numeric, rows, may_hold)

    def stats(self, frame: Landed, platform: PlatformConfig, table: str) -> dict[str, float]:
        """stages.validate.batch_stats on Spark: the interactions' rating mean."""
        from pyspark.sql import functions as F

        rating = native_column(platform, table, "rating")
        if table != "interactions" or rating not in frame.numeric:
            return {}
        mean = frame.numbers.agg(F.avg(rating)).first()[0]
        return {} if mean is None else {"rating_mean": float(mean)}

    def identity_ids(self, frame: Landed, column: str) -> int:
        """stages.validate.PandasRaw.identity_ids on Spark: counted only when `read` saw one."""
        from pyspark.sql import functions as F

        if not frame.may_hold_identities:
            return 0
        found = frame.raw.where(F.col(column).cast("string").rlike(rules.IDENTITY_ID_PATTERN)).select(column)
        return found.distinct().count()

    def validate(self, scratch: Any, name: str, batches: list[Batch]) -> list[list[Any]]:
        # no cache of the batch (GX's default): a suite's few jobs read the landed file faster than a cache is built
        source = scratch.data_sources.add_spark(name, persist=False)
        split, owners = by_reading(batches)
        # one checkpoint per batch in turn: Spark runs each expectation's jobs on all its cores
        results = [
            store_results(
                scratch,
                [
                    withhold_identities(
                        run_checks(scratch, source, batch.expectations, batch.name, batch.frame, batch.secret),
                        batch.secret,
                    )
                ],
            )
            for batch in split
        ]
        return regroup(results, owners, len(batches))
