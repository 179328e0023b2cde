"""The Spark engine (`engine: spark`, Spark in local mode) against the pandas engine on the same landed batches: the
same unified tables and the same features and splits, row for row; the same refusal of a bad batch, quarantined,
with the current unified version left as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.synthetic import partition_by_day
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.io.tables import k_core
from transfer_rec.schema.rules import BatchRefused
from transfer_rec.schema.unified import item_key
from transfer_rec.spark import features as spark_features
from transfer_rec.spark import unify as spark_unify
from transfer_rec.stages import features as pandas_features
from transfer_rec.stages import unify as pandas_unify
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.validate import DataValidationError, validate_batch

pytestmark = pytest.mark.skipif(
    not (os.environ.get("JAVA_HOME") or shutil.which("java")),
    reason="Spark needs Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)",
)

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
    staged = list((Path(version_s.dir).parent).glob("staging-*"))
    assert not staged, "every platform's part files moved into the version, the staging folder removed"
    parts = list((Path(version_s.dir) / "interactions.parquet").glob("part-*.parquet"))
    assert len({p.name.split("-")[2] for p in parts}) >= 2, "part files of more than one platform's write job"


def test_spark_features_and_splits_are_the_same_row_for_row(both):
    features_p, features_s = both["features"]
    assert features_s.n_items == features_p.n_items
    assert features_s.platforms == features_p.platforms
    unified = both["pandas"][1]["interactions"]
    for platform, counts in features_p.platforms.items():
        assert counts["interactions_in"] == (unified["platform"] == platform).sum(), "the version's rows, per platform"
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


def test_spark_k_core_is_the_pandas_k_core_when_it_takes_many_rounds(both):
    """A chain that unravels one link per round (an item seen once drops its user below k, who drops the next item,
    and so on) beside a block that survives whole: both engines keep the same rows."""
    from transfer_rec.spark.session import spark_session

    block = [(f"b{u}", f"x{i}") for u in range(4) for i in range(3)]
    chain = [("c0", "i0"), ("c0", "i1")] + [(f"c{n}", f"i{m}") for n in range(1, 3) for m in (n, n + 1)]
    chain += [("b0", "i3")]  # the chain's last item reaches a block user, who stays
    frame = pd.DataFrame(block + chain, columns=["user_id", "item_id"]).assign(rating=1.0)
    expected = k_core(frame, 2)
    assert set(expected["user_id"]) == {f"b{u}" for u in range(4)}, "the whole chain unravels, the block stays"
    spark = spark_session(both["config"].spark)
    kept = spark_features.k_core(spark.createDataFrame(frame), 2).toPandas()
    keys = ["user_id", "item_id"]
    pd.testing.assert_frame_equal(
        kept.sort_values(keys, ignore_index=True), expected.sort_values(keys, ignore_index=True), check_dtype=False
    )


def test_spark_refuses_a_bad_batch_as_pandas_does_and_keeps_the_current_version(both):
    layout, config = both["layout"], both["config"]
    current = json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"]
    village = config.platform("village")
    folder = Path(village.location)
    export = folder / "interactions.txt"
    original = export.read_bytes()
    inter = pd.read_csv(export, sep=village.delimiter, dtype=str)
    pd.concat([inter, inter.iloc[: len(inter) // 5]], ignore_index=True).to_csv(
        export, sep=village.delimiter, index=False
    )
    try:
        validated = [validate_batch(pull_platform(p, layout, "b2"), p, layout) for p in config.platforms]
    finally:
        export.write_bytes(original)  # the module's world stays good for the tests after this one
    with pytest.raises(BatchRefused) as caught:
        spark_unify.unify(validated, config, layout)
    assert caught.value.rule == "max_duplicate_share" and caught.value.platform == "village"
    message = str(caught.value)
    # named as the file names them
    assert message.startswith(
        "platform village, interactions.txt, column 'learner (user_id), course (item_id)': rule max_duplicate_share"
    )
    reason = json.loads((layout.quarantine / "village" / "b2" / "validation.json").read_text())
    assert reason["stage"] == "unify" and reason["rule"] == "max_duplicate_share"
    assert json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"] == current
    assert not list((layout.unified / ".versions").glob("staging-*")), "the refused batch's part files are removed"


@pytest.mark.parametrize("column", ["learner", "course"])
def test_spark_refuses_an_id_too_long_as_pandas_does(pipeline_env, column):
    """The id-length rule, counted in the pass that gathers the catalogue, names the file, column and length as
    pandas does, and nothing of the refused batch stays behind."""
    env = pipeline_env(spark=SPARK)
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export, dtype=str)
    frame.loc[5, column] = "x" * 5_000
    frame.to_csv(export, index=False)
    config, layout = load_config(), StateLayout.from_env()
    messages = {}
    for name, engine in (("pandas", pandas_unify), ("spark", spark_unify)):
        validated = [validate_batch(pull_platform(p, layout, name), p, layout) for p in config.platforms]
        with pytest.raises(BatchRefused) as caught:
            engine.unify(validated, config.model_copy(update={"engine": name}), layout)
        assert caught.value.rule == "max_id_length" and caught.value.platform == "village"
        messages[name] = str(caught.value)
    assert messages["spark"] == messages["pandas"]
    assert "5,000 chars" in messages["spark"] and not (layout.unified / "current").exists()
    assert not list((layout.unified / ".versions").glob("staging-*"))


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
    interval = (
        datetime.fromisoformat(days[0].removeprefix("dt=")).replace(tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
    )
    pandas_tables = _incremental_unified_alike(interval)
    ids = pandas_tables["item_ids"]
    native = ids.loc[(ids["platform"] == "village") & (ids["item_id"] == item_key(item)), "native_id"]
    assert native.tolist() == [item.upper()]


def test_an_incremental_platform_with_no_day_landed_unifies_alike_on_both_engines(pipeline_env):
    """A first run whose interval holds none of the export's days lands the users and items only: both engines
    unify the platform to no interactions (Spark stopped with an IndexError)."""
    env = pipeline_env(spark=SPARK)
    partition_by_day(env["exports"] / "village", "interactions.txt", "ts", delimiter=",")
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["pull"] = {"mode": "incremental"}
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    before = (datetime(1995, 1, 1, tzinfo=UTC), datetime(1995, 1, 2, tzinfo=UTC))
    interactions = _incremental_unified_alike(before)["interactions"]
    assert len(interactions) and not (interactions["platform"] == "village").any()


def _incremental_unified_alike(interval) -> dict[str, pd.DataFrame]:
    """campus's snapshot and village's pull of `interval` unified by each engine: the tables equal, pandas' given."""
    config, layout = load_config(), StateLayout.from_env()
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
    return pandas_tables


def _interactions_unified_alike() -> pd.DataFrame:
    """Every platform pulled, validated and unified by each engine on its own: the interactions equal, pandas'
    given."""
    config, layout = load_config(), StateLayout.from_env()
    tables = {}
    for name, engine, unify in (("pandas", None, pandas_unify.unify), ("spark", _spark_raw(config), spark_unify.unify)):
        validated = [validate_batch(pull_platform(p, layout, name), p, layout, engine=engine) for p in config.platforms]
        tables[name] = _tables(Path(unify(validated, config.model_copy(update={"engine": name}), layout).dir))
    pd.testing.assert_frame_equal(tables["pandas"]["interactions"], tables["spark"]["interactions"])
    return tables["pandas"]["interactions"]


def _spark_raw(config):
    from transfer_rec.spark.session import spark_session
    from transfer_rec.spark.validate import SparkRaw

    return SparkRaw(spark_session(config.spark))


def _verdicts(lines: list[str]) -> list[str]:
    """Validation lines without their example values (which examples an engine shows first is its own)."""
    return sorted(re.sub(r", e\.g\. .*$", "", line) for line in lines)


def test_spark_validates_good_batches_as_pandas_does(both):
    layout, config = both["layout"], both["config"]
    engine = _spark_raw(config)
    for platform in config.platforms:
        # each engine's batch is the second of the same data: both are checked for drift against the first
        p = validate_batch(pull_platform(platform, layout, "pandas-again"), platform, layout).validation
        s = validate_batch(pull_platform(platform, layout, "spark-again"), platform, layout, engine=engine).validation
        assert s.success and s.critical == []
        assert _verdicts(s.warnings) == _verdicts(p.warnings)
        assert {f: t.model_dump() for f, t in s.tables.items()} == {f: t.model_dump() for f, t in p.tables.items()}
        first = next(v.validation for v in both["validated"] if v.platform == platform.name)
        assert s.tables["interactions.txt"].expectations == first.tables["interactions.txt"].expectations + 2, (
            "the suite and two drift checks (volume, rating mean)"
        )
    village = s.tables["interactions.txt"]
    assert village.rows > 0 and village.rating_mean, "the rating mean the next batch's drift check compares with"


@pytest.mark.parametrize(
    "fault",
    [
        "nulls",
        "blank_timestamps",
        "out_of_range",
        "missing_column",
        "pii_column",
        "empty_file",
        "non_utf8",
        "duplicates",
        "text",
    ],
)
def test_spark_refuses_each_bad_batch_as_pandas_does(pipeline_env, fault):
    """The same refusal, line for line but for the example values, and the batch quarantined as it came."""
    env = pipeline_env(faults=[] if fault == "text" else [fault], spark=SPARK)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    export = env["exports"] / "village" / "interactions.txt"
    if fault == "text":  # ratings that are not numbers, and one out of range: the pattern and the range rules
        frame = pd.read_csv(export, dtype=str)
        # the last three are numbers to pandas' to_numeric, and text to the pattern (as Spark checks it)
        frame.loc[[3, 7, 5, 11, 13], "score"] = ["four", "4,5", "+4", "1e0", "\u0664"]
        frame.loc[9, "score"] = "11"
        frame.to_csv(export, index=False)
    messages = {}
    for name, engine in (("pandas", None), ("spark", _spark_raw(config))):
        with pytest.raises(DataValidationError) as caught:
            validate_batch(pull_platform(village, layout, name), village, layout, engine=engine)
        messages[name] = str(caught.value).replace(f"/village/{name}/", "/village/<batch>/")
        quarantined = layout.quarantine / "village" / name
        assert (quarantined / "interactions.txt").read_bytes() == export.read_bytes()
    spark_lines, pandas_lines = (messages[e].split("\n  - ")[1:] for e in ("spark", "pandas"))
    assert _verdicts(spark_lines) == _verdicts(pandas_lines), messages
    assert "platform village, file interactions.txt" in messages["spark"]
    if fault == "text":
        assert "match_regex({'column': 'score'" in messages["spark"] and "5 unexpected value(s)" in messages["spark"]
        assert "'max_value': 5.0}) failed: 1 unexpected value(s), e.g. [11.0]" in messages["spark"]


def test_spark_checks_drift_against_the_previous_batch_as_pandas_does(pipeline_env):
    env = pipeline_env(spark=SPARK)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    engine = _spark_raw(config)
    validate_batch(pull_platform(village, layout, "usual"), village, layout, engine=engine)
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export, dtype=str)
    frame["score"] = "1"
    # six times the rows (other learners, so no row repeats) and every rating 1
    pd.concat([frame.assign(learner=frame["learner"] + f"-{n}") for n in range(6)], ignore_index=True).to_csv(
        export, index=False
    )
    with pytest.raises(DataValidationError) as caught:
        validate_batch(pull_platform(village, layout, "shifted"), village, layout, engine=engine)
    message = str(caught.value)
    assert "expect_column_mean_to_be_between({'column': 'score'" in message and "observed 1.0" in message
    assert "expect_table_row_count_to_be_between" in message and f"observed {len(frame) * 6}" in message


def test_spark_names_a_file_that_is_not_in_its_configured_format(pipeline_env):
    env = pipeline_env(spark=SPARK)
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["format"] = "parquet"  # configured as Parquet, exported as CSV
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    with pytest.raises(DataValidationError) as caught:
        validate_batch(pull_platform(village, layout, "csv"), village, layout, engine=_spark_raw(config))
    message = str(caught.value)
    assert "platform village, file interactions.txt: cannot be read" in message
    assert "interactions.txt: not a readable Parquet file" in message
    assert (layout.quarantine / "village" / "csv" / "interactions.txt").exists()


def test_spark_checks_count_first_and_fetch_examples_only_for_rules_that_found_some(both):
    """run_checks gives each rule the verdict, counts and examples of one SUMMARY run; the rules that found nothing
    unexpected keep the first, counts-only pass's result (no example jobs were run for them)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from transfer_rec.spark.session import spark_session
    from transfer_rec.spark.validate import run_checks
    from transfer_rec.stages.validate import checkpoint, expectation_key

    spark = spark_session(both["config"].spark)
    frame = spark.createDataFrame(
        pd.DataFrame({"score": [1.0, 2.0, 11.0, 3.0, 12.0], "name": ["a", "b", "c", "d", "e"]})
    )
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=1, max_value=5),
        gxe.ExpectColumnValuesToNotBeNull(column="name"),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]

    def by_rule(pairs) -> dict:
        return {expectation_key(r.expectation_config): r for _, suite in pairs for r in suite.results}

    ours = gx.get_context(mode="ephemeral")
    checked = by_rule(run_checks(ours, ours.data_sources.add_spark("ours"), expectations, "checks", frame))
    full = gx.get_context(mode="ephemeral")
    one_run = checkpoint(full, full.data_sources.add_spark("full"), expectations, "checks")
    summary = by_rule(one_run.run(batch_parameters={"dataframe": frame}).run_results.items())
    assert checked.keys() == summary.keys() and len(checked) == 3
    for key, result in checked.items():
        expected = summary[key].result or {}
        assert result.success == summary[key].success, key
        for field in ("unexpected_count", "observed_value", "element_count"):
            assert (result.result or {}).get(field) == expected.get(field), (key, field)
        assert sorted((result.result or {}).get("partial_unexpected_list") or []) == sorted(
            expected.get("partial_unexpected_list") or []
        ), key
    between = checked[expectation_key(expectations[0].configuration)]
    assert not between.success and sorted(between.result["partial_unexpected_list"]) == [11.0, 12.0]
    assert "partial_unexpected_counts" in between.result  # its second, SUMMARY run
    assert "partial_unexpected_counts" not in checked[expectation_key(expectations[1].configuration)].result


def test_both_engines_refuse_a_header_that_names_a_column_twice(pipeline_env):
    env = pipeline_env(spark=SPARK)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    path = env["exports"] / "village" / "interactions.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0].replace("ts", "score") + "".join(lines[1:]))  # the timestamp column named as the rating
    for engine, batch in ((None, "pandas"), (_spark_raw(config), "spark")):
        with pytest.raises(DataValidationError, match=r"the header names column\(s\) \['score'\] more than once"):
            validate_batch(pull_platform(village, layout, batch), village, layout, engine=engine)


def test_both_engines_refuse_interactions_of_users_the_users_file_lacks(pipeline_env):
    env = pipeline_env(spark=SPARK)
    config, layout = load_config(), StateLayout.from_env()
    path = env["exports"] / "village" / "users.txt"
    users = pd.read_csv(path, dtype=str)
    users.iloc[2:].to_csv(path, index=False)  # the users export behind the interactions: two users missing
    gone = sorted(users["uid"].iloc[:2])
    for unify, batch in ((pandas_unify.unify, "pandas"), (spark_unify.unify, "spark")):
        validated = [validate_batch(pull_platform(p, layout, batch), p, layout) for p in config.platforms]
        with pytest.raises(BatchRefused) as caught:
            unify(validated, config, layout)
        message = str(caught.value)
        assert caught.value.rule == "missing_users", message
        assert message.startswith("platform village, interactions.txt, column 'learner (user_id)': rule missing_users")
        assert "name 2 user(s) the users file lacks" in message and f"{gone[0]!r}, {gone[1]!r}" in message, message
        assert (layout.quarantine / "village" / batch / "users.txt").exists()


def test_both_engines_refuse_a_header_whose_names_differ_only_in_case(pipeline_env):
    """`TS` beside the `ts` the config names: Great Expectations finds a column by its case-folded name (the first
    in file order) and would check `TS` while unification reads `ts`, so both engines refuse the file."""
    env = pipeline_env(spark=SPARK)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    path = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(path, sep=village.delimiter, dtype=str)
    frame.insert(0, "TS", "not a time")
    frame.to_csv(path, sep=village.delimiter, index=False)
    for engine, batch in ((None, "pandas"), (_spark_raw(config), "spark")):
        with pytest.raises(DataValidationError, match=r"columns \['TS', 'ts'\] that differ only in case"):
            validate_batch(pull_platform(village, layout, batch), village, layout, engine=engine)
        assert (layout.quarantine / "village" / batch / "interactions.txt").exists()


def test_a_platform_without_ratings_unifies_alike_on_both_engines(pipeline_env):
    """Implicit feedback (no rating column mapped): every interaction a positive, on either engine."""
    env = pipeline_env(spark=SPARK)
    raw = yaml.safe_load(env["config"].read_text())
    village = next(p for p in raw["platforms"] if p["name"] == "village")
    village["columns"]["interactions"] = {
        native: unified for native, unified in village["columns"]["interactions"].items() if unified != "rating"
    }
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    inter = _interactions_unified_alike()
    assert (inter.loc[inter["platform"] == "village", "label"] == 1).all()
    assert (inter.loc[inter["platform"] == "campus", "label"] == 0).any(), "the rated platform keeps its labels"


def test_ratings_of_another_scale_unify_alike_on_both_engines(pipeline_env):
    """A 0-10 platform's ratings land on the unified 1-5 scale, and its positives are judged there, on either
    engine (its 1-5 scores are the lower half of its scale: 5 becomes 3, the lowest positive)."""
    env = pipeline_env(spark=SPARK)
    raw = yaml.safe_load(env["config"].read_text())
    next(p for p in raw["platforms"] if p["name"] == "village")["rating_scale"] = [0, 10]
    env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
    village = _interactions_unified_alike().query("platform == 'village'")
    assert village["rating"].max() == 3.0 and village["rating"].min() >= 1.0
    assert (village["label"] == (village["rating"] >= 3)).all() and 0 < village["label"].mean() < 1


def test_an_expectation_on_an_e_mail_column_reports_no_address_on_spark(pipeline_env, monkeypatch):
    """test_bad_inputs' e-mail rule on the Spark engine: Spark fetches a failed rule's examples in a second
    checkpoint, whose results GX stores too; a rule on an identity column gets none."""
    from tests.support import refuse_an_e_mail_rule

    from transfer_rec.spark.session import spark_session
    from transfer_rec.spark.validate import SparkRaw

    env = pipeline_env(spark=SPARK)
    refuse_an_e_mail_rule(env, monkeypatch, SparkRaw(spark_session(load_config().spark)))


def test_e_mail_addresses_as_user_ids_are_refused_on_spark_as_on_pandas(pipeline_env):
    from tests.support import refuse_e_mail_user_ids

    from transfer_rec.spark.session import spark_session
    from transfer_rec.spark.validate import SparkRaw

    env = pipeline_env(spark=SPARK)
    refuse_e_mail_user_ids(env, SparkRaw(spark_session(load_config().spark)))


def test_user_ids_that_are_identities_in_files_landed_before_the_rule_are_refused_by_both_engines(both, tmp_path):
    """A platform without a users file whose landed interactions hold a phone number as a user id (landed before
    the rule knew phones): both engines' unification refuse it by rule opaque_user_id, quoting no id."""
    from transfer_rec.spark.session import spark_session

    config = both["config"]
    platform = config.sources[0].model_copy(
        update={
            "files": {"interactions": "ratings.tsv"},
            "format": "tsv",
            "columns": {"interactions": {"uid": "user_id", "iid": "item_id", "r": "rating", "ts": "timestamp"}},
        }
    )
    (tmp_path / "ratings.tsv").write_text("uid\tiid\tr\tts\nu1\ta\t5\t978300760\n+44 7700 900123\tb\t4\t978300761\n")
    for unify in (
        lambda: pandas_unify.unify_platform(tmp_path, platform, config),
        lambda: spark_unify.unify_platform(
            spark_session(config.spark), tmp_path, platform, config, tmp_path / "staged"
        ),
    ):
        with pytest.raises(BatchRefused, match=r"rule opaque_user_id: 1 user id\(s\) are e-mail addresses") as caught:
            unify()
        assert "7700" not in str(caught.value)
