"""The Spark session the ingest stages run on when the config says `engine: spark`, and the export readers for it."""

from __future__ import annotations

import atexit
import logging
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from transfer_rec.config import SparkConfig
from transfer_rec.io.formats import FormatError, header_names, refuse_repeated
from transfer_rec.runtime.signals import on_terminate

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Settings the engine relies on, under the config's own `spark.conf`:
# - non-ANSI casts: text that is not a number becomes null (then counted and dropped as unparseable, as pandas'
#   coercion does) instead of failing the whole job;
# - UTC, so no timestamp depends on the machine's zone;
# - few shuffle partitions: a platform's tables are read whole, and adaptive execution splits what is large.
DEFAULTS = {
    "spark.sql.ansi.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "16",
    "spark.ui.showConsoleProgress": "false",
}


_STOP_AT_EXIT: list[SparkSession] = []


def spark_session(config: SparkConfig) -> SparkSession:
    """The process's Spark session for `config` (started on first use; a JVM, so Java 17+ must be installed)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pyspark is a dependency of the package; say what to do if it was left out
        raise RuntimeError("engine: spark needs pyspark (pip install the pinned pyspark of requirements.lock)") from exc
    builder = SparkSession.builder.master(config.master_url()).appName("transfer-rec")
    for key, value in {**DEFAULTS, **config.conf}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    # py4j logs each connection it closes, also from finalizers at interpreter exit, into closed streams
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if not _STOP_AT_EXIT:
        # stop the JVM before the interpreter tears down (py4j otherwise logs into closed streams at exit)
        atexit.register(_stop, session)
        # SIGTERM or the time limit while the main thread waits on a Spark job: the raised exception leaves py4j's
        # connection waiting for that job's answer, and pyspark's clean-up then waits on it for as long as the job
        # runs. Ending the driver JVM ends the job and every wait on it (its outputs are unpublished: the stages
        # publish atomically).
        on_terminate(_end_driver)
        _STOP_AT_EXIT.append(session)
    log.info("Spark %s session on %s", session.version, config.master_url())
    return session


def _driver_process() -> subprocess.Popen | None:
    """The driver JVM pyspark launched for this process (None where it attached to one it did not launch)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    return getattr(gateway, "proc", None) if gateway is not None else None


def _end_driver() -> None:
    proc = _driver_process()
    if proc is not None and proc.poll() is None:
        log.warning("stopping the stage: ending the Spark driver (pid %d) and its jobs", proc.pid)
        proc.terminate()  # the JVM's shutdown hooks stop the context, cancelling its jobs
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _stop(session: SparkSession) -> None:
    proc = _driver_process()
    if proc is not None and proc.poll() is not None:
        return  # already ended (SIGTERM): nothing to stop, and py4j would only fail to connect
    session.stop()


def read_table(spark: SparkSession, path: Path, fmt: str, delimiter: str | None = None) -> DataFrame:
    """One export table with its native column names, read by Spark as pandas' reader (io/formats.py) reads it:
    text formats as text (empty cells null), Parquet's numbers as numbers and everything else as text."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    if fmt == "parquet":
        frame = spark.read.parquet(str(path))
        refuse_repeated(Path(path), [f.name for f in frame.schema.fields])  # as pandas' reader refuses it
        return frame.select(
            *(
                F.col(f.name) if isinstance(f.dataType, NumericType) else F.col(f.name).cast("string").alias(f.name)
                for f in frame.schema.fields
            )
        )
    if fmt == "jsonl":
        return spark.read.json(str(path), primitivesAsString=True, mode="FAILFAST")
    sep = {"recbole": "\t", "tsv": "\t", "csv": ","}.get(fmt)
    if sep is None:
        raise FormatError(f"{path}: unsupported format {fmt!r}")
    if Path(path).is_file():  # as pandas' reader refuses it: Spark would rename the repeat
        refuse_repeated(Path(path), header_names(Path(path), fmt, delimiter))
    frame = (
        spark.read.option("header", True)
        .option("sep", delimiter or sep)
        .option("inferSchema", False)
        .option("mode", "FAILFAST")
        .option("encoding", "UTF-8")
        # RecBole's atomic files have no quoting; CSV quotes as pandas does (a quote inside is doubled)
        .option("quote", "\u0000" if fmt == "recbole" else '"')
        .option("escape", '"')
        .csv(str(path))
    )
    if fmt == "recbole":
        frame = frame.toDF(*(c.split(":", 1)[0] for c in frame.columns))
    return frame
