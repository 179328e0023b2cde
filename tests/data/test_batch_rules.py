"""Bad batches caught for what they are, at unification, on the data as it came: each is refused by a named rule
with a bounded message, quarantined with its reason (so it never becomes a baseline), and the current unified
version stays; or, where the rule's policy says so, handled with a logged count."""

from __future__ import annotations

import gzip
import json
import logging

import pandas as pd
import pytest
import yaml

from bench.synthetic import write_config
from transfer_rec.config import load_config
from transfer_rec.io.formats import FormatError
from transfer_rec.io.state import StateLayout
from transfer_rec.schema.rules import BatchRefused, check_shrink
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.unify import unify
from transfer_rec.stages.validate import BatchGone, validate_batch


def _unify(batch: str):
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, batch), p, layout) for p in config.platforms]
    return unify(validated, config, layout)


def _refused_at_unify(env, batch: str, rule: str) -> str:
    layout = StateLayout.from_env()
    before = json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"]
    with pytest.raises(BatchRefused) as caught:
        _unify(batch)
    assert caught.value.rule == rule and caught.value.platform == "village"
    message = str(caught.value)
    assert message.startswith("platform village, ") and f"rule {rule}" in message and len(message) < 1000
    quarantined = layout.quarantine / "village" / batch
    reason = json.loads((quarantined / "validation.json").read_text())
    assert reason["stage"] == "unify" and reason["rule"] == rule and not reason["success"]
    assert not (layout.landing / "village" / batch).exists(), "a refused batch is no baseline"
    assert json.loads((layout.unified / "current" / "manifest.json").read_text())["dir"] == before
    return message


# the village's native column names (tests/conftest.py two_platforms, bench/synthetic.py)
INTERACTION_ITEM, ITEM_ID = "course", "item_key"


def _frame(env, name: str) -> tuple:
    path = env["exports"] / "village" / name
    return path, pd.read_csv(path, dtype=str)


@pytest.fixture
def baseline(pipeline_env):
    env = pipeline_env()
    _unify("good")
    return env


def test_an_export_of_one_repeated_row(pipeline_env):
    # as on ml-100k, repeated rows are only a warning at validation: the share rule still refuses this
    env = pipeline_env()
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["duplicate_interactions"] = "warning"
    write_config(env["config"], raw)
    _unify("good")
    baseline = env
    path, frame = _frame(baseline, "interactions.txt")
    pd.concat([frame.head(1)] * len(frame), ignore_index=True).to_csv(path, index=False)
    message = _refused_at_unify(baseline, "one-row", "max_duplicate_share")
    assert f"{len(frame) - 1:,} of {len(frame):,} rows" in message


def test_a_user_listed_twice_with_different_ages(baseline):
    path, frame = _frame(baseline, "users.txt")
    twin = frame.head(1).assign(age="99")
    pd.concat([frame, twin], ignore_index=True).to_csv(path, index=False)
    message = _refused_at_unify(baseline, "two-ages", "one_row_per_user_id")
    assert repr(frame["uid"].iloc[0]) in message and "age" in message
    assert "column 'uid (user_id)'" in message, "the column as the users file names it"


def test_an_exact_repeat_of_a_user_row_is_dropped_and_counted(baseline, caplog):
    path, frame = _frame(baseline, "users.txt")
    pd.concat([frame, frame.head(2)], ignore_index=True).to_csv(path, index=False)
    with caplog.at_level(logging.INFO, logger="transfer_rec.stages.unify"):
        _unify("repeat")
    assert "2 repeated user row(s) dropped" in caplog.text


def test_interactions_whose_items_the_items_file_lacks(baseline):
    path, items = _frame(baseline, "items.txt")
    items.iloc[5:].to_csv(path, index=False)
    message = _refused_at_unify(baseline, "missing-items", "missing_items")
    _, inter = _frame(baseline, "interactions.txt")
    lacking = inter[inter[INTERACTION_ITEM].isin(items.iloc[:5][ITEM_ID])]
    assert f"{len(lacking):,} interaction(s) name 5 item(s) the items file lacks" in message, message
    assert len(lacking) > 5, "the planted data names some of those items more than once"
    assert any(repr(native) in message for native in items.iloc[:5][ITEM_ID]), "the file's own ids, not keys"


def test_missing_items_filled_when_the_policy_says_so(baseline, caplog):
    path, items = _frame(baseline, "items.txt")
    items.iloc[5:].to_csv(path, index=False)
    raw = yaml.safe_load(baseline["config"].read_text())
    raw["rules"] = {"missing_items": "fill"}
    write_config(baseline["config"], raw)
    with caplog.at_level(logging.WARNING):
        _unify("filled")
    _, inter = _frame(baseline, "interactions.txt")
    lacking = inter[inter[INTERACTION_ITEM].isin(items.iloc[:5][ITEM_ID])]
    assert f"rule missing_items=fill: 5 item(s) of {len(lacking):,} interaction(s)" in caplog.text


def test_a_user_id_of_a_hundred_thousand_characters(baseline):
    path, frame = _frame(baseline, "interactions.txt")
    frame.loc[0, "learner"] = "u" * 100_000
    frame.to_csv(path, index=False)
    message = _refused_at_unify(baseline, "long-id", "max_id_length")
    assert "100,000 chars" in message


def test_empty_titles_are_called_empty_titles(baseline):
    path, items = _frame(baseline, "items.txt")
    items.loc[: len(items) * 3 // 10, "title"] = ""
    items.to_csv(path, index=False)
    message = _refused_at_unify(baseline, "empty-titles", "item_has_title")
    assert "have an empty title" in message and "different items" not in message


def test_a_gzip_file_under_a_plain_name_is_called_compressed(baseline):
    path, _ = _frame(baseline, "interactions.txt")
    path.write_bytes(gzip.compress(path.read_bytes()))
    config, layout = load_config(), StateLayout.from_env()
    with pytest.raises(FormatError, match=r"platform village, interactions file .*interactions.txt: .*gzip-compressed"):
        pull_platform(config.platform("village"), layout, "gz")
    assert not (layout.landing / "village" / "gz").exists()
    assert not list((layout.landing / "village").glob(".*pulling")), "no half-pulled staging folder left"


def test_a_batch_that_would_shrink_a_platform_past_the_drift_bound():
    check_shrink(2_000, 9_000, 5.0, "village", "interactions.txt")  # within the bound
    with pytest.raises(BatchRefused, match="rule shrink: unification keeps 1,000 interactions where the current"):
        check_shrink(1_000, 9_000, 5.0, "village", "interactions.txt")
    check_shrink(1_000, 9_000, 0.0, "village", "interactions.txt")  # the check off


def test_a_task_retried_after_its_batch_was_quarantined_says_where_it_went(baseline):
    path, frame = _frame(baseline, "users.txt")
    pd.concat([frame, frame.head(1).assign(age="99")], ignore_index=True).to_csv(path, index=False)
    config, layout = load_config(), StateLayout.from_env()
    validated = [validate_batch(pull_platform(p, layout, "gone"), p, layout) for p in config.platforms]
    with pytest.raises(BatchRefused):
        unify(validated, config, layout)
    # the unify task cleared in the UI, and the validate task before it: each says where the batch went
    gone = r"platform village: batch gone is no longer in .*: it was quarantined to .*quarantine/village/gone"
    with pytest.raises(BatchGone, match=gone):
        unify(validated, config, layout)
    village = next(v for v in validated if v.platform == "village")
    with pytest.raises(BatchGone, match=gone):
        validate_batch(village, config.platform("village"), layout)


def test_a_profile_value_outside_the_shared_vocabulary(baseline):
    path, frame = _frame(baseline, "users.txt")
    gender = next(c for c in frame.columns if frame[c].isin(["M", "F"]).all())
    frame.loc[frame.index[:2], gender] = "unknown"  # read as "U": no gender of the shared vocabulary
    frame.to_csv(path, index=False)
    message = _refused_at_unify(baseline, "gender-u", "profile_vocabulary")
    named = "gender" if gender == "gender" else f"{gender} (gender)"
    assert f"column '{named}'" in message and "2 user(s) have a value outside" in message
    assert "'unknown'" in message, "the file's own value is shown"
