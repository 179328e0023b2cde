"""Incremental pulls by data interval: disjoint slices, idempotent re-runs, nothing doubled after unification."""

import json
import shutil
from datetime import UTC, datetime

import pandas as pd
import pytest
import yaml

from bench.synthetic import partition_by_day, write_config
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.schema.rules import BatchRefused
from transfer_rec.stages.pipeline import inputs_fingerprint
from transfer_rec.stages.pull import interval_batch_id, interval_days, landed_partitions, pull_platform
from transfer_rec.stages.unify import interaction_files, unify
from transfer_rec.stages.validate import DataValidationError, validate_batch


def utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def test_interval_days_cover_start_inclusive_end_exclusive():
    assert [d.isoformat() for d in interval_days((utc("2026-11-16"), utc("2026-11-18")))] == [
        "2026-11-16",
        "2026-11-17",
    ]
    assert [d.isoformat() for d in interval_days((utc("2026-11-16T12:00"), utc("2026-11-17T01:00")))] == [
        "2026-11-16",
        "2026-11-17",
    ]
    with pytest.raises(ValueError, match="ends .* before it starts"):
        interval_days((utc("2026-11-18"), utc("2026-11-16")))


@pytest.fixture
def incremental(pipeline_env):
    env = pipeline_env()
    export = env["exports"] / "village" / "interactions.txt"
    frame = pd.read_csv(export)
    frame["ts"] = 1_700_006_400 + frame["ts"] % (8 * 86_400)  # eight days of activity from 2023-11-15
    frame.to_csv(export, index=False)
    days = partition_by_day(env["exports"] / "village", "interactions.txt", "ts", delimiter=",")
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["pull"] = {"mode": "incremental"}
    write_config(env["config"], raw)
    total = sum(len(pd.read_csv(env["exports"] / "village" / d / "interactions.txt")) for d in days)
    return env, [d.removeprefix("dt=") for d in days], total


def _pull(day_from: str, day_to: str) -> dict:
    config = load_config()
    layout = StateLayout.from_env()
    manifest = pull_platform(config.platform("village"), layout, "ignored", (utc(day_from), utc(day_to)))
    return validate_batch(manifest, config.platform("village"), layout)


def test_two_intervals_pull_disjoint_slices_and_rerunning_one_changes_nothing(incremental):
    env, days, total = incremental
    middle = days[len(days) // 2]
    first, second = _pull(days[0], middle), _pull(middle, "2100-01-01")
    parts = [{f.file for f in m.files if f.table == "interactions"} for m in (first, second)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert len(parts[0]) + len(parts[1]) == len(days) == 8
    assert all(f"dt={middle}/" not in name for name in parts[0]), "the interval's end day belongs to the next one"
    assert first.batch_id == interval_batch_id((utc(days[0]), utc(middle)))
    # profiles and catalogue are pulled whole with every slice
    assert {"users.txt", "items.txt"} <= {f.file for f in first.files}
    pulled_rows = sum(f.rows for m in (first, second) for f in m.files if f.table == "interactions")
    assert pulled_rows == total

    config, layout = load_config(), StateLayout.from_env()
    files = interaction_files(second, config.platform("village"), layout)
    assert len(files) == len(days)
    landed_before = [(p.parent.name, p.read_bytes()) for p in files]
    again = _pull(days[0], middle)  # a retry / backfill of the first slice
    assert again.batch_id.startswith(f"{first.batch_id}.")
    assert len(list((layout.landing / "village").iterdir())) == 3, "the first copy stays until a unify reads again"
    assert [(p.parent.name, p.read_bytes()) for p in interaction_files(again, config.platform("village"), layout)] == (
        landed_before
    )

    source = pull_platform(config.platform("campus"), layout, "snap")
    validated = [validate_batch(source, config.platform("campus"), layout), again]
    manifest = unify(validated, config, layout)
    assert sorted(p.name for p in (layout.landing / "village").iterdir()) == sorted(
        [again.batch_id, second.batch_id]
    ), "once a unify has read the re-pull, it replaces the interval's first batch"
    counts = manifest.platforms["village"]
    assert counts["rows_in"] == total
    inter = pd.read_parquet(layout.unified / "current" / "interactions.parquet")
    assert (inter["platform"] == "village").sum() == counts["rows_out"]
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_a_re_export_of_an_interval_that_fails_validation_keeps_the_validated_copy(incremental):
    env, days, _ = incremental
    layout = StateLayout.from_env()
    middle = days[len(days) // 2]
    first = _pull(days[0], middle)
    landed = landed_partitions("village", layout)
    day = env["exports"] / "village" / f"dt={days[0]}" / "interactions.txt"
    pd.read_csv(day).drop(columns=["ts"]).to_csv(day, index=False)  # the day exported again, without a column
    with pytest.raises(DataValidationError, match="village"):
        _pull(days[0], middle)
    assert (layout.landing / "village" / first.batch_id / "validation.json").exists(), "the good copy stays"
    assert landed_partitions("village", layout) == landed
    assert [p.name.startswith(f"{first.batch_id}.") for p in (layout.quarantine / "village").iterdir()] == [True]


def test_a_re_export_that_only_unification_refuses_keeps_the_good_copy_too(incremental):
    # validation passes it: only unification's max_id_length refuses a long id
    first, again = _re_export_refused_at_unify(incremental, "u" * 300, "max_id_length")
    layout = StateLayout.from_env()
    assert [p.name for p in (layout.quarantine / "village").iterdir()] == [again.batch_id]
    assert (layout.landing / "village" / first.batch_id / "validation.json").exists()


def _re_export_refused_at_unify(incremental, learner: str, refusal: str):
    """The first day pulled, then exported again with its first row's learner replaced, pulled again and refused at
    unify (`refusal`: what the message matches); the good copy's days are the ones read again. (first, again)."""
    env, days, _ = incremental
    config, layout = load_config(), StateLayout.from_env()
    campus = config.platform("campus")
    first = _pull(days[0], days[1])
    landed = landed_partitions("village", layout)
    day = env["exports"] / "village" / f"dt={days[0]}" / "interactions.txt"
    pd.read_csv(day).assign(learner=lambda f: f["learner"].where(f.index > 0, learner)).to_csv(day, index=False)
    again = _pull(days[0], days[1])
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    with pytest.raises(BatchRefused, match=refusal):
        unify([source, again], config, layout)
    assert landed_partitions("village", layout) == landed, "the interval's days are read from the good copy again"
    return first, again


def test_a_re_export_naming_a_user_the_users_file_lacks_is_quarantined_and_the_good_copy_read_again(incremental):
    # the rule ran on snapshots only: the unified check refused every later run (the newest copy of the day wins)
    # and quarantined nothing, in a message naming neither the partition's file nor the rule
    first, again = _re_export_refused_at_unify(
        incremental, "ghost", r"interactions.txt, column 'learner \(user_id\)': rule missing_users"
    )
    config, layout = load_config(), StateLayout.from_env()
    assert [p.name for p in (layout.quarantine / "village").iterdir()] == [again.batch_id]
    campus = config.platform("campus")
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    assert unify([source, first], config, layout).platforms["village"]["rows_out"] > 0


def test_a_run_without_an_interval_trains_on_the_partitions_landed_so_far(incremental):
    # asset-triggered runs (a platform's ingest DAG announced new data) and manual runs without a logical date have
    # no data interval: they pull no partition and unify every validated one, as landed by the ingest DAG
    env, days, total = incremental
    config, layout = load_config(), StateLayout.from_env()
    village, campus = config.platform("village"), config.platform("campus")
    with pytest.raises(ValueError, match="village: .*no data interval and no partition of it has landed"):
        pull_platform(village, layout, "asset-run")
    assert not (layout.landing / "village" / "asset-run").exists()
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    middle = days[len(days) // 2]

    def asset_run(key: str):
        landed = pull_platform(village, layout, key)
        assert landed.batch_id == key and landed.interval is None
        assert {f.table for f in landed.files} == {"users", "items"}, "profiles and catalogue whole, no partition"
        return unify([source, validate_batch(landed, village, layout)], config, layout)

    _pull(days[0], middle)
    first = asset_run("asset-run")
    _pull(middle, "2100-01-01")  # the ingest DAG lands the later days
    second = asset_run("asset-run-2")
    assert second.platforms["village"]["rows_in"] == total > first.platforms["village"]["rows_in"]
    # what the run trained on is every partition it read: the next days change the inputs fingerprint
    assert sum(name.endswith("interactions.txt") for name in second.hashes["village"]) == len(days)
    assert inputs_fingerprint(first.hashes, config) != inputs_fingerprint(second.hashes, config)


def test_a_refusal_of_partitions_landed_before_quarantines_no_run_batch(incremental):
    env, days, _ = incremental
    config, layout = load_config(), StateLayout.from_env()
    village, campus = config.platform("village"), config.platform("campus")
    # the first day's rows again on the second day: each partition is valid, together they break duplicate_share
    first, second = (env["exports"] / "village" / f"dt={day}" / "interactions.txt" for day in days[:2])
    again = pd.read_csv(first).assign(ts=lambda f: f["ts"] + 86_400)
    pd.concat([pd.read_csv(second), again]).to_csv(second, index=False)
    config = load_config(overrides={"rules": {"max_duplicate_share": 0.01}})
    _pull(days[0], "2100-01-01")
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    landed = validate_batch(pull_platform(village, layout, "asset-run"), village, layout)
    with pytest.raises(BatchRefused, match="duplicate"):
        unify([source, landed], config, layout)
    assert (layout.landing / "village" / "asset-run").is_dir(), "its profiles and catalogue are not what is wrong"
    assert not (layout.quarantine / "village").exists()


def test_a_bad_day_landed_before_never_sends_a_later_runs_good_day_to_quarantine(incremental):
    env, days, _ = incremental
    config, layout = load_config(), StateLayout.from_env()
    campus = config.platform("campus")
    day = env["exports"] / "village" / f"dt={days[0]}" / "interactions.txt"
    pd.read_csv(day).assign(learner=lambda f: f["learner"].where(f.index > 0, "u" * 300)).to_csv(day, index=False)
    bad = _pull(days[0], days[1])  # validation passes it: only unification's max_id_length refuses a long id
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    good = _pull(days[1], days[2])
    with pytest.raises(BatchRefused, match="max_id_length"):
        unify([source, good], config, layout)
    assert (layout.landing / "village" / good.batch_id / "validation.json").exists(), "the good day stays landed"
    assert not (layout.quarantine / "village").exists()
    # the run of the bad day itself sends its batch to quarantine
    with pytest.raises(BatchRefused, match="max_id_length"):
        unify([source, bad], config, layout)
    assert [p.name for p in (layout.quarantine / "village").iterdir()] == [bad.batch_id]
    assert (layout.landing / "village" / good.batch_id).is_dir()


def test_an_ingest_run_without_an_interval_is_refused(incremental):
    from transfer_rec.stages import pipeline

    with pytest.raises(ValueError, match="village: an ingest run of an incremental platform .* has none"):
        pipeline.ingest_pull("village", "manual__2026-12-06T00:00:00+00:00", (None, None))
    assert not (StateLayout.from_env().landing / "village").exists()


def test_an_ingest_rerun_of_an_interval_announces_nothing_and_keeps_its_partitions(incremental):
    from transfer_rec.stages import pipeline

    env, days, _ = incremental
    interval = (utc(days[0]), utc(days[2]))
    first = pipeline.ingest_validate(pipeline.ingest_pull("village", "scheduled__2023-11-17", interval))
    assert first["new"]
    pulled = pipeline.ingest_pull("village", "manual__rerun", interval)  # a cleared task
    again = pipeline.ingest_validate(pulled)
    assert not again["new"] and again["batch_id"].startswith(f"{first['batch_id']}.")
    # and its validate cleared in turn: still a repeat, not a retry of an announcement that never went out
    assert not pipeline.ingest_validate(pulled)["new"]
    config, layout = load_config(), StateLayout.from_env()
    landed = interaction_files(
        pull_platform(config.platform("village"), layout, "asset-run"), config.platform("village"), layout
    )
    assert [p.parent.name for p in landed] == [f"dt={d}" for d in days[:2]], "the interval's days are still landed"


def test_a_retried_ingest_validate_announces_its_batch_again(pipeline_env):
    """The record is written inside the task, the announcement goes out only when the task succeeds: a retry (or a
    cleared task) of an attempt that failed after writing it must not take its own batch for a repeat."""
    from transfer_rec.stages import pipeline

    pipeline_env()
    pulled = pipeline.ingest_pull("campus", "manual__first")
    first = pipeline.ingest_validate(pulled)
    again = pipeline.ingest_validate(pulled)  # the same task again, on the same pulled batch
    assert first["new"] and again["new"], again
    assert (StateLayout.from_env().landing / "campus" / first["batch_id"]).is_dir(), "the batch stays landed"
    # a later pull of the same data is a repeat, as before
    assert not pipeline.ingest_validate(pipeline.ingest_pull("campus", "manual__second"))["new"]


def test_an_ingest_validate_that_cannot_read_the_registry_announces_its_batch(pipeline_env, monkeypatch, caplog):
    """validate is not retried: an unreadable registry must not fail it (the data would wait for the next cron)."""
    import socket

    from transfer_rec.stages import pipeline

    pipeline_env()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert pipeline.ingest_validate(pipeline.ingest_pull("campus", "manual__down"))["new"]
    assert pipeline.ingest_validate(pipeline.ingest_pull("campus", "manual__down-again"))["new"] is False, (
        "a repeat of the announced batch needs no registry"
    )
    assert "registry unreadable" in caplog.text


def test_the_fingerprint_names_exactly_the_partitions_unify_read(incremental, monkeypatch):
    """A day the ingest DAG validates while unify runs is neither read nor hashed: a fingerprint naming it would
    make the next run find 'no change' and never train on that day."""
    from transfer_rec.stages import unify as unify_stage

    env, days, total = incremental
    config, layout = load_config(), StateLayout.from_env()
    village, campus = config.platform("village"), config.platform("campus")
    middle = days[len(days) // 2]
    _pull(days[0], middle)
    source = validate_batch(pull_platform(campus, layout, "snap"), campus, layout)
    landed = validate_batch(pull_platform(village, layout, "asset-run"), village, layout)
    read = unify_stage.unify_platform

    def meanwhile(folder, platform, config_, files):
        if platform.name == "village":
            _pull(middle, "2100-01-01")  # the later days land and validate while unify works
        return read(folder, platform, config_, files)

    monkeypatch.setattr(unify_stage, "unify_platform", meanwhile)
    manifest = unify([source, landed], config, layout)
    partitions = sorted(name for name in manifest.hashes["village"] if name.endswith("interactions.txt"))
    assert partitions == [f"dt={day}/interactions.txt" for day in days if day < middle]
    assert manifest.platforms["village"]["rows_in"] < total


def test_an_unreadable_announcement_record_is_no_batch_announced_not_a_failure(incremental):
    """A record cut short (a task killed mid-write, before writes were atomic; a full disk) must not fail every later
    ingest run: it is taken as nothing announced, and the batch is announced."""
    from transfer_rec.stages import pipeline

    env, days, _ = incremental
    record = StateLayout.from_env().landing / "village" / pipeline.ANNOUNCED_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"batch_id": "ingest_x", "fing')
    result = pipeline.ingest_validate(
        pipeline.ingest_pull("village", "scheduled__2023-11-17", (utc(days[0]), utc(days[1])))
    )
    assert result["new"] and json.loads(record.read_text())["batch_id"] == result["batch_id"]


def test_a_pull_stopped_while_writing_its_manifest_leaves_nothing_behind(pipeline_env, monkeypatch):
    from transfer_rec.manifests import PulledBatch

    pipeline_env()
    config, layout = load_config(), StateLayout.from_env()
    campus = config.platform("campus")
    pull_platform(campus, layout, "snap")
    before = sorted(p.name for p in (layout.landing / "campus").iterdir())

    def stopped(self, *args, **kwargs):
        raise SystemExit("terminated")  # SIGTERM or the time limit, after the files were copied

    monkeypatch.setattr(PulledBatch, "to_xcom", stopped)
    with pytest.raises(SystemExit):
        pull_platform(campus, layout, "snap")  # the same batch again: a retry of the task
    monkeypatch.undo()
    assert sorted(p.name for p in (layout.landing / "campus").iterdir()) == before, "no staging copy left"
    assert (layout.landing / "campus" / "snap" / "manifest.json").exists(), "the earlier copy stays"
    # a stop between moving the earlier copy aside and renaming the new one in leaves the aside copy: the next pull
    # of the platform removes it
    aside = layout.landing / "campus" / ".snap.replaced-0123456789ab"
    shutil.copytree(layout.landing / "campus" / "snap", aside)
    pull_platform(campus, layout, "snap-2")
    assert not aside.exists()
