"""Reading platform locations (local paths, s3:// through boto3, pkg:// data packages) and writing atomically."""

from __future__ import annotations

import errno
import hashlib
import importlib.resources
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CHUNK = 8 * 1024 * 1024
# Seconds before an unresponsive S3 server counts as down (per attempt); the task's retries take it from there.
S3_TIMEOUT = lambda: float(os.environ.get("TRANSFER_REC_S3_TIMEOUT", "60"))
NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class LocationError(RuntimeError):
    """A platform location cannot be read: names the location and what to check."""


class StorageFullError(OSError):
    """The disk (or the folder's quota) filled up while writing; nothing that was visible has changed."""


@dataclass(frozen=True)
class Location:
    """A parsed location: scheme is 'file', 's3' or 'pkg'."""

    scheme: str
    bucket: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> Location:
        parsed = urlparse(uri)
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            # file://exports/x would read /x (the first part taken as a host): a relative path has no file:// form
            raise LocationError(
                f"location {uri!r}: file:// takes an absolute path (file:///...); give a relative path without file://"
            )
        if parsed.scheme in ("", "file"):
            return cls("file", "", str(Path(parsed.path if parsed.scheme else uri)))
        if parsed.scheme in ("s3", "pkg"):
            return cls(parsed.scheme, parsed.netloc, parsed.path.lstrip("/"))
        raise LocationError(f"unsupported location {uri!r}: use a local path, file://, s3:// or pkg://")

    def join(self, name: str) -> str:
        if self.scheme == "file":
            return str(Path(self.path) / name)
        prefix = self.path.strip("/")
        return f"{self.scheme}://{self.bucket}/{prefix + '/' if prefix else ''}{name}"


def s3_client():
    """A boto3 S3 client configured from the environment (AWS_* variables, AWS_ENDPOINT_URL for S3-compatible
    servers)."""
    import boto3
    from botocore.config import Config

    # A fresh session each time: boto3's default session caches the credentials it first saw, so rotated keys
    # (or a corrected environment) would otherwise be ignored until the process restarts.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=S3_TIMEOUT(),
            read_timeout=S3_TIMEOUT(),
        ),
    )


def copy_to_local(uri: str, dest: Path) -> None:
    """Copy one file from any supported location to `dest`, streaming (memory does not grow with file size)."""
    loc = Location.parse(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        if loc.scheme == "file":
            if not Path(loc.path).is_file():
                raise LocationError(f"{uri}: no such file")
            shutil.copyfile(loc.path, tmp)
        elif loc.scheme == "pkg":
            resource = importlib.resources.files(loc.bucket).joinpath(loc.path)
            if not resource.is_file():
                raise LocationError(f"{uri}: no such file in the installed package {loc.bucket!r}")
            with resource.open("rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        else:
            _download_s3(loc, uri, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        space = _no_space(exc)
        if space is None:
            raise
        raise StorageFullError(
            space.errno,
            f"{dest}: out of space while pulling {uri} ({space.strerror or space}); the partial copy was removed",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def exists(uri: str) -> bool:
    """Whether a file exists at a location (S3: a HEAD request; a missing bucket or bad keys still raise)."""
    loc = Location.parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).is_file()
    if loc.scheme == "pkg":
        return importlib.resources.files(loc.bucket).joinpath(loc.path).is_file()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.path)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(uri, exc) from exc
    except BotoCoreError as exc:
        raise LocationError(f"{uri}: cannot reach S3 at {os.environ.get('AWS_ENDPOINT_URL', 'AWS')}: {exc}") from exc


def _s3_error(uri: str, exc) -> LocationError:
    code = exc.response.get("Error", {}).get("Code", "?")
    hint = {
        "404": "the object does not exist",
        "NoSuchKey": "the object does not exist",
        "NoSuchBucket": "the bucket does not exist",
        "403": "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        "InvalidAccessKeyId": "unknown access key: check AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "wrong secret key: check AWS_SECRET_ACCESS_KEY",
    }.get(code, "see the error code")
    return LocationError(f"{uri}: S3 error {code} ({hint})")


def _download_s3(loc: Location, uri: str, tmp: Path) -> None:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client().download_file(loc.bucket, loc.path, str(tmp))
    except ClientError as exc:
        raise _s3_error(uri, exc) from exc
    except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: a transfer that stalled past its retries
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "AWS")
        raise LocationError(f"{uri}: cannot reach S3 at {endpoint}: {exc}") from exc


def _no_space(exc: BaseException) -> OSError | None:
    """The out-of-space error behind an exception (pyarrow and pandas wrap the OS error), if any."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and (
            seen.errno in NO_SPACE or "No space left" in str(seen) or "File too large" in str(seen)
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` through a staging file beside it and a rename: a reader sees the old file or the whole
    new one, never a part (a stage stopped or a disk filled mid-write). `mode`: the file's permissions, set before
    anything is written to it."""
    write_atomic(path, lambda staging: staging.write_text(text, encoding="utf-8"), mode)


def write_atomic(path: Path, write: Callable[[Path], object], mode: int | None = None) -> None:
    """`write` a file at a staging path beside `path`, then rename it onto `path` (as write_text_atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}")
    try:
        if mode is not None:
            staging.touch(mode=mode)
        write(staging)
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the rename: a power loss must not leave an empty file in its place
        finally:
            os.close(fd)
        os.replace(staging, path)
    except BaseException as exc:  # a stop (SIGTERM, a time limit) too: no staging file is left behind
        staging.unlink(missing_ok=True)
        space = _no_space(exc) if isinstance(exc, OSError) else None
        if space is None:
            raise
        raise StorageFullError(
            space.errno, f"{path}: out of space while writing it ({space.strerror or space}); the previous file stays"
        ) from exc


def write_files_atomic(folder: Path, files: dict[str, str]) -> None:
    """Write a set of files that belong together (a benchmark's recommendations and its metrics): each whole or not
    at all, and the earlier set's files removed first, so that a stop midway never leaves a new file beside an old
    one it does not belong with."""
    for name in files:
        (folder / name).unlink(missing_ok=True)
    for name, text in files.items():
        write_text_atomic(folder / name, text)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh version folder; on success `final` (a symlink) is switched to it in one atomic rename.

    Readers that open `final` see either the previous complete version or the new complete one, never a partial
    one; on failure the half-written version is removed and `final` is untouched.
    Versions older than the previous one are pruned.
    """
    versions = final.parent / ".versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = versions / f"{final.name}-{uuid.uuid4().hex[:12]}"
    version.mkdir()
    try:
        yield version
    except BaseException as exc:
        shutil.rmtree(version, ignore_errors=True)
        space = _no_space(exc)
        if space is not None:
            raise StorageFullError(
                space.errno,
                f"{final}: out of space while writing a new version "
                f"({space.strerror or space}); the previous version stays current",
            ) from exc
        raise
    if final.exists() and not final.is_symlink():
        raise LocationError(f"{final} is a real folder, expected a link to a version: move it away")
    previous = final.resolve() if final.is_symlink() else None
    link = final.with_name(f".{final.name}.{uuid.uuid4().hex}.link")
    os.symlink(os.path.relpath(version, final.parent), link)
    os.replace(link, final)
    # Keep the previous version for readers that opened it before the switch; prune older ones.
    # only this name's versions: a glob on `<name>-*` would also take `<name>-eu`'s (another target, run key)
    own = re.compile(rf"{re.escape(final.name)}-[0-9a-f]{{12}}")
    # all resolved, as `previous` is: under a symlinked state folder the unresolved names never matched it
    keep = (version.resolve(), previous)
    for old in versions.resolve().glob(f"{final.name}-*"):
        if own.fullmatch(old.name) and old not in keep:
            shutil.rmtree(old, ignore_errors=True)
