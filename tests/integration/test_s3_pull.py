"""Pulling a platform from a real S3-compatible server on loopback, including the errors operators will meet."""

from datetime import UTC

import pytest

from bench.synthetic import write_config
from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import LocationError
from transfer_rec.stages.pull import pull_platform


def upload_platform(client, folder, bucket, prefix):
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def s3_config(env, location):
    import yaml

    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["location"] = location
    write_config(env["config"], raw)


def test_pull_from_s3_lands_identical_files_with_hashes(pipeline_env, s3_env):
    env = pipeline_env()
    upload_platform(s3_env, env["exports"] / "village", "raw", "exports/village")
    s3_config(env, "s3://raw/exports/village")
    platform = load_config().platform("village")
    manifest = pull_platform(platform, StateLayout.from_env(), "s3batch")
    landed = {f.file: f for f in manifest.files}
    for name in ("interactions.txt", "users.txt", "items.txt"):
        original = (env["exports"] / "village" / name).read_bytes()
        assert (StateLayout.from_env().landing / "village" / "s3batch" / name).read_bytes() == original
        assert landed[name].source_uri == f"s3://raw/exports/village/{name}"
        assert landed[name].size == len(original)
    assert (
        landed["interactions.txt"].rows
        == len((env["exports"] / "village" / "interactions.txt").read_text().splitlines()) - 1
    )
    # a re-pull of the same batch replaces it: no duplicated files or rows
    batch = StateLayout.from_env().landing / "village" / "s3batch"
    before = sorted(p.name for p in batch.iterdir())
    again = pull_platform(platform, StateLayout.from_env(), "s3batch")
    assert [f.sha256 for f in again.files] == [f.sha256 for f in manifest.files]
    assert sorted(p.name for p in batch.iterdir()) == before
    assert [f.rows for f in again.files] == [f.rows for f in manifest.files]


def test_wrong_credentials_are_named(pipeline_env, s3_env, monkeypatch):
    env = pipeline_env()
    upload_platform(s3_env, env["exports"] / "village", "raw", "exports/village")
    s3_config(env, "s3://raw/exports/village")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(LocationError, match=r"s3://raw/exports/village/interactions.txt: S3 error .*(secret|access)"):
        pull_platform(load_config().platform("village"), StateLayout.from_env(), "denied")
    assert not (StateLayout.from_env().landing / "village" / "denied").exists()


def test_missing_bucket_and_missing_object_are_named(pipeline_env, s3_env):
    env = pipeline_env()
    s3_config(env, "s3://no-such-bucket/exports")
    with pytest.raises(LocationError, match=r"s3://no-such-bucket/exports/interactions.txt: S3 error"):
        pull_platform(load_config().platform("village"), StateLayout.from_env(), "b")
    s3_config(env, "s3://raw/not-uploaded")
    with pytest.raises(LocationError, match="does not exist"):
        pull_platform(load_config().platform("village"), StateLayout.from_env(), "b")


def test_incremental_pull_from_s3_takes_only_the_interval_partitions(pipeline_env, s3_env):
    from datetime import datetime

    import yaml

    from bench.synthetic import partition_by_day

    env = pipeline_env()
    folder = env["exports"] / "village"
    days = partition_by_day(folder, "interactions.txt", "ts", delimiter=",")[:3]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3_env.upload_file(str(path), "raw", f"inc/{path.relative_to(folder).as_posix()}")
    raw = yaml.safe_load(env["config"].read_text())
    raw["platforms"][1]["location"] = "s3://raw/inc"
    raw["platforms"][1]["pull"] = {"mode": "incremental"}
    write_config(env["config"], raw)
    start = datetime.fromisoformat(days[0].removeprefix("dt=")).replace(tzinfo=UTC)
    end = datetime.fromisoformat(days[2].removeprefix("dt=")).replace(tzinfo=UTC)
    manifest = pull_platform(load_config().platform("village"), StateLayout.from_env(), "b", (start, end))
    partitions = sorted(f.file.split("/")[0] for f in manifest.files if f.table == "interactions")
    assert partitions == days[:2]
    assert all(f.source_uri.startswith("s3://raw/inc/") for f in manifest.files)
