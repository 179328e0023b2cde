"""The whole pipeline with `engine: spark` (Spark in local mode): the stages the DAG's tasks call validate, unify
and build features on Spark, and the run goes on to a promoted, published model as the pandas engine's does."""

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tests.integration.inline import run_inline

from transfer_rec.io.state import StateLayout

pytestmark = pytest.mark.skipif(
    not (os.environ.get("JAVA_HOME") or shutil.which("java")),
    reason="Spark needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)",
)


def test_a_run_on_spark_unifies_with_spark_and_publishes(pipeline_env):
    pipeline_env(engine="spark", spark={"master": "local[2]", "conf": {"spark.driver.memory": "1g"}})
    result = run_inline("spark-run")
    # validated on Spark: a numeric column is checked as read and, for range rules, as numbers (two validations of
    # the file in its Data Docs; pandas splits only a column that also holds text)
    docs = StateLayout.from_env().data_docs / "village"
    pages = "".join(page.read_text(errors="ignore") for page in docs.rglob("*.html"))
    assert "interactions.txt.numbers" in pages
    features = Path(result["features"]["dir"])
    unified = Path(result["features"]["unified"])
    # Spark's output: folders of part files where the pandas engine writes one file (readers take either)
    assert (unified / "interactions.parquet").is_dir() and list((unified / "interactions.parquet").glob("*.parquet"))
    assert (features / "campus.interactions.parquet").is_dir()
    assert (features / "village.interactions.parquet").is_file(), "a target's split is written by pandas"
    village = pd.read_parquet(features / "village.interactions.parquet")
    assert set(village["split"]) == {"train", "valid", "test"}
    assert result["decision"]["promoted"], result["decision"]
    assert Path(result["published"]["path"]).exists()
