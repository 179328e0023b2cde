"""GX suites on good and bad batches: bad data is refused loudly, quarantined as it came, and nothing downstream
moves."""

import json

import pytest

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import DataValidationError, validate_batch


def land_and_validate(batch_id: str):
    config, layout = load_config(), StateLayout.from_env()
    return [validate_batch(pull_platform(p, layout, batch_id), p, layout) for p in config.platforms]


def test_good_batches_pass_and_unify(pipeline_env):
    pipeline_env()
    validated = land_and_validate("good")
    assert all(v.validation.success for v in validated)
    manifest = unify(validated, load_config(), StateLayout.from_env())
    assert manifest.platforms["village"]["items_shared_with_source"] > 0
    assert manifest.platforms["campus"]["rows_out"] == manifest.platforms["campus"]["rows_in"]


@pytest.mark.parametrize(
    "fault,expected",
    [
        ("nulls", "expect_column_values_to_not_be_null({'column': 'learner'})"),
        ("blank_timestamps", "expect_column_values_to_not_be_null({'column': 'ts'})"),
        ("out_of_range", "expect_column_values_to_be_between({'column': 'score'"),
        ("missing_column", "expect_table_columns_to_match_set"),
        ("pii_column", "forbidden PII column(s) ['password']"),
        ("empty_file", "the file is empty"),
        ("non_utf8", "not valid UTF-8"),
        ("duplicates", "expect_compound_columns_to_be_unique"),
    ],
)
def test_each_fault_is_refused_quarantined_and_changes_nothing_downstream(pipeline_env, fault, expected):
    env = pipeline_env()
    layout = StateLayout.from_env()
    first = land_and_validate("good")
    before = unify(first, load_config(), layout)
    before_files = sorted(p.name for p in (layout.unified / "current").iterdir())

    pipeline_env(faults=[fault])
    config = load_config()
    target = config.platform("village")
    landed = pull_platform(target, layout, "bad")
    with pytest.raises(DataValidationError) as caught:
        validate_batch(landed, target, layout)
    message = str(caught.value)
    assert "platform village" in message and "interactions.txt" in message
    assert expected in message
    quarantined = layout.quarantine / "village" / "bad"
    assert (quarantined / "interactions.txt").read_bytes() == (
        env["exports"] / "village" / "interactions.txt"
    ).read_bytes()
    result = json.loads((quarantined / "validation.json").read_text())
    assert result["success"] is False and result["critical"]
    assert not (layout.landing / "village" / "bad").exists()
    # the unified tables stay exactly as they were
    now = json.loads((layout.unified / "current" / "manifest.json").read_text())
    assert now["dir"] == before.dir
    assert sorted(p.name for p in (layout.unified / "current").iterdir()) == before_files

    # the same batch id refused again (a run key used again): the new batch is quarantined, the earlier one kept
    if fault == "nulls":
        (env["exports"] / "village" / "interactions.txt").write_bytes(b"learner,course,score,ts\n1,,3,4\n")
        with pytest.raises(DataValidationError):
            validate_batch(pull_platform(target, layout, "bad"), target, layout)
        (earlier,) = [p for p in (layout.quarantine / "village").iterdir() if p.name.startswith("bad~")]
        assert json.loads((earlier / "validation.json").read_text()) == result
        assert (quarantined / "interactions.txt").read_bytes().endswith(b"1,,3,4\n")


def test_a_failed_validation_is_recorded_on_the_pipeline_run(pipeline_env):
    import mlflow

    from transfer_rec.stages import pipeline

    pipeline_env(faults=["out_of_range"])
    run = pipeline.plan({"run_key": "bad-run"}, airflow_run_id="bad-run")
    landed = pipeline.pull(run, "village")
    with pytest.raises(DataValidationError):
        pipeline.validate(run, landed)
    parent = mlflow.MlflowClient().get_run(run["parent_run_id"]).data
    assert parent.tags["validation.village"] == "failed"
    assert parent.metrics["validation_village_critical"] >= 1


def test_data_docs_are_built_under_the_state_folder_for_passed_and_failed_batches(pipeline_env):
    pipeline_env(faults=["out_of_range"])
    config, layout = load_config(), StateLayout.from_env()
    campus = validate_batch(pull_platform(config.platform("campus"), layout, "docs"), config.platform("campus"), layout)
    index = layout.data_docs / "campus" / "docs" / "index.html"
    assert campus.validation.data_docs == str(index) and index.is_file()
    assert "campus.docs" in index.read_text(), "the index lists this batch's validations"
    with pytest.raises(DataValidationError):
        validate_batch(pull_platform(config.platform("village"), layout, "docs"), config.platform("village"), layout)
    pages = [p.read_text() for p in (layout.data_docs / "village" / "docs" / "validations").rglob("*.html")]
    assert any("expect_column_values_to_be_between" in page or "values must be" in page for page in pages)
    result = json.loads((layout.quarantine / "village" / "docs" / "validation.json").read_text())
    assert result["data_docs"].endswith("village/docs/index.html")


def test_unified_suite_refuses_broken_tables_and_keeps_the_current_version(pipeline_env, monkeypatch):
    import pandas as pd

    from transfer_rec.schema import rules

    # the rule profile_vocabulary refuses this batch first (tests/data/test_batch_rules.py); without it, the
    # unified tables' own check is the guard behind it
    monkeypatch.setattr(rules, "check_vocabulary", lambda *args, **kwargs: None)
    env = pipeline_env()
    layout = StateLayout.from_env()
    before = unify(land_and_validate("good"), load_config(), layout)
    assert before.validation["success"]
    users = env["exports"] / "village" / "users.txt"
    frame = pd.read_csv(users)
    frame.loc[0, "gender"] = "unknown"  # not in the unified gender vocabulary once mapped ("U")
    frame.to_csv(users, index=False)
    with pytest.raises(DataValidationError) as caught:
        unify(land_and_validate("odd"), load_config(), layout)
    assert "users.parquet" in str(caught.value) and "'column': 'gender'" in str(caught.value)
    assert "'U'" in str(caught.value)
    assert json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"] == before.dir
    assert len(list((layout.unified / ".versions").iterdir())) == 1, "the refused version was discarded"


def test_unified_suite_checks_referential_integrity():
    import pandas as pd

    from transfer_rec.stages.validate import validate_unified

    config = load_config()
    tables = {
        "interactions": pd.DataFrame(
            {
                "platform": ["a", "a"],
                "user_id": ["a:1", "a:2"],
                "item_id": ["x", "ghost"],
                "rating": [4.0, 5.0],
                "label": pd.Series([1, 1], dtype="int8"),
                "timestamp": [1, 2],
            }
        ),
        "users": pd.DataFrame(
            {
                "platform": ["a"],
                "user_id": ["a:1"],
                "age": [None],
                "gender": ["F"],
                "occupation": [None],
                "region": ["12"],
            }
        ),
        "items": pd.DataFrame({"item_id": ["x"], "title": ["X"], "year": [2000], "genres": [""]}),
    }
    with pytest.raises(DataValidationError) as caught:
        validate_unified(tables, config, StateLayout.from_env(), "ri")
    message = str(caught.value)
    assert "expect_column_values_to_be_null({'column': 'item_id_not_in_items'})" in message and "ghost" in message
    assert "expect_column_values_to_be_null({'column': 'user_id_not_in_users'})" in message and "a:2" in message


def test_unified_suite_refuses_a_raw_identity_in_the_link_table():
    import pandas as pd

    from transfer_rec.stages.validate import validate_unified

    users = {"platform": ["a"], "user_id": ["a:1"], "age": [None], "gender": ["F"], "occupation": [None]}
    tables = {
        "interactions": pd.DataFrame(
            {
                "platform": ["a"],
                "user_id": ["a:1"],
                "item_id": ["x"],
                "rating": [4.0],
                "label": pd.Series([1], dtype="int8"),
                "timestamp": [1],
            }
        ),
        "users": pd.DataFrame({**users, "region": ["12"], "link_id": ["f" * 64], "consent": [True]}),
        "items": pd.DataFrame({"item_id": ["x"], "title": ["X"], "year": [2000], "genres": [""]}),
        "links": pd.DataFrame({"link_id": ["ann@example.com"], "platform": ["a"], "user_id": ["a:1"]}),
    }
    with pytest.raises(DataValidationError) as caught:
        validate_unified(tables, load_config(), StateLayout.from_env(), "links")
    message = str(caught.value)
    assert "links.parquet" in message and "expect_column_values_to_match_regex({'column': 'link_id'" in message
    assert "ann@" not in message, "a value that fails the hash rule may be a raw identity: never shown"
    # nor on the version's Data Docs pages, which render GX's stored results
    pages = list((StateLayout.from_env().data_docs / "unified" / "links").rglob("*.html"))
    assert len(pages) > 1 and not any("ann@example.com" in p.read_text() for p in pages)
    tables["links"]["link_id"] = ["f" * 64]
    validate_unified(tables, load_config(), StateLayout.from_env(), "links-ok")
