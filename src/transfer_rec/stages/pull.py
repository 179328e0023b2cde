"""Stage 1, pull: copy a platform's export files as they came into the landing area, with a manifest."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from transfer_rec.config import PlatformConfig
from transfer_rec.io.embedded import refilled_hint
from transfer_rec.io.formats import FormatError, count_rows
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import Location, LocationError, copy_to_local, exists, sha256_file
from transfer_rec.manifests import PulledBatch, PulledFile

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Written into a landed batch by validation when it passes: whole or absent (stages/validate.py)
VALIDATION_FILE = "validation.json"


Interval = tuple[datetime, datetime]


def interval_days(interval: Interval) -> list[date]:
    """The calendar days (UTC) a data interval [start, end) touches; an empty interval touches its start day."""
    start, end = (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in interval)
    if end < start:
        raise ValueError(f"data interval ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    last = (end - timedelta(microseconds=1)).date() if end > start else start.date()
    return [start.date() + timedelta(days=n) for n in range((last - start.date()).days + 1)]


def interval_batch_id(interval: Interval) -> str:
    """One landing batch per data interval: re-pulling an interval replaces its batch, never adds a second one."""
    start, end = (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in interval)
    return f"interval_{start:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}"


def export_files(platform: PlatformConfig, interval: Interval | None) -> list[tuple[str, str]]:
    """(table, file name relative to the location) to pull: every file for a snapshot, the interval's partitions
    of the partitioned tables (those that exist) plus the other tables whole for an incremental pull. A run without
    a data interval pulls no partition: unification reads the ones landed so far (`landed_partitions`)."""
    if platform.pull.mode == "snapshot":
        return list(platform.files.items())
    location = Location.parse(platform.location)
    files = []
    for table, name in platform.files.items():
        if table not in platform.pull.partitioned:
            files.append((table, name))
            continue
        for day in interval_days(interval) if interval is not None else []:
            relative = f"{platform.pull.partition.format(date=day.isoformat())}/{name}"
            if exists(location.join(relative)):
                files.append((table, relative))
    return files


class Landed(NamedTuple):
    path: Path
    sha256: str


def landed_partitions(platform: str, layout: StateLayout, table: str = "interactions") -> dict[str, Landed]:
    """Every validated partition of `table` landed so far for `platform`, by its file name relative to the
    location; each partition once: the most recent pull of it wins, so re-pulling an interval replaces its rows."""
    latest: dict[str, tuple[str, Landed]] = {}
    for validation in sorted((layout.landing / platform).glob(f"*/{VALIDATION_FILE}")):
        batch = json.loads((validation.parent / MANIFEST).read_text())
        for entry in batch["files"]:
            if entry["table"] == table and latest.get(entry["file"], ("",))[0] <= batch["pulled_at"]:
                latest[entry["file"]] = (batch["pulled_at"], Landed(validation.parent / entry["file"], entry["sha256"]))
    return {name: latest[name][1] for name in sorted(latest)}


def shadowed(layout: StateLayout, platform: str) -> list[Path]:
    """An incremental platform's validated interval batches none of whose interaction partitions is read any more:
    a later pull of the same days replaced every one of them (`landed_partitions`: the most recent pull wins)."""
    read = {
        landed.path.parents[len(Path(name).parts) - 1] for name, landed in landed_partitions(platform, layout).items()
    }
    out = []
    for validation in sorted((layout.landing / platform).glob(f"*/{VALIDATION_FILE}")):
        batch = json.loads((validation.parent / MANIFEST).read_text())
        holds = [f for f in batch["files"] if f["table"] == "interactions"]
        if batch.get("interval") and holds and validation.parent not in read:
            out.append(validation.parent)
    return out


def pull_platform(
    platform: PlatformConfig, layout: StateLayout, batch_id: str, interval: Interval | None = None
) -> PulledBatch:
    """Land the export files of `platform` under landing/<platform>/<batch>/ and return the pull manifest.

    A snapshot lands every file under `batch_id`; an incremental pull lands the days of `interval` under a batch
    named by the interval. Re-running a batch replaces its landing folder, so a retry never duplicates rows; a
    re-pull of an interval that has a validated batch lands beside it, and replaces it once a unify has read it.
    """
    location = Location.parse(platform.location)
    if platform.embedded and location.scheme == "file" and not Path(location.path).exists():
        raise LocationError(
            f"platform {platform.name}: export folder {location.path} does not exist; "
            f"{refilled_hint(platform, layout.embedded_record)}"
        )
    if platform.pull.mode == "incremental" and interval is not None:
        batch_id = interval_batch_id(interval)
        if (layout.landing / platform.name / batch_id / VALIDATION_FILE).exists():
            # a validated copy of the interval stays until a unify has read the new one (it then removes it): a
            # re-export that fails validation or unification must not take the good copy with it
            batch_id = f"{batch_id}.{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    elif platform.pull.mode == "incremental":
        # asset-triggered runs and manual runs without a logical date: the ingest DAG lands the slices
        landed = landed_partitions(platform.name, layout)
        if not landed:
            raise ValueError(
                f"platform {platform.name}: pull mode is incremental, the run has no data interval and no partition "
                f"of it has landed yet (in {layout.landing / platform.name}): trigger the run with a logical date, "
                f"or let the platform's ingest DAG (transfer_rec_ingest_{platform.name}) land its days first"
            )
        log.info(
            "platform %s: the run has no data interval, so no partition is pulled; unification reads the %d "
            "validated partition(s) landed so far",
            platform.name,
            len(landed),
        )
    names = export_files(platform, interval)
    batch_dir = layout.landing / platform.name / batch_id
    staging = batch_dir.with_name(f".{batch_id}.pulling")
    if staging.exists():
        shutil.rmtree(staging)
    for orphan in batch_dir.parent.glob(".*.replaced-*"):  # an earlier copy a stopped pull had moved aside
        shutil.rmtree(orphan, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    try:
        for table, name in names:
            uri = location.join(name)
            dest = staging / name
            try:
                copy_to_local(uri, dest)
                rows = count_rows(dest, platform.format)
            except (LocationError, FormatError) as exc:
                # the copy's own message names a path; say whose file it is and where it came from
                raise type(exc)(f"platform {platform.name}, {table} file {uri}: {exc}") from exc
            entry = PulledFile(
                table=table, file=name, source_uri=uri, size=dest.stat().st_size, sha256=sha256_file(dest), rows=rows
            )
            log.info("pulled %s: %s rows, %s bytes, sha256 %s", uri, entry.rows, entry.size, entry.sha256[:12])
            files.append(entry)
        manifest = PulledBatch(
            platform=platform.name,
            role=platform.role,
            mode=platform.pull.mode,
            batch_id=batch_id,
            batch_dir=str(batch_dir),
            interval=[t.isoformat() for t in interval] if interval else None,
            pulled_at=datetime.now(UTC).isoformat(),
            files=files,
        )
        (staging / MANIFEST).write_text(json.dumps(manifest.to_xcom(), indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-pulled stays beside the batches
        raise
    aside = None
    if batch_dir.exists():
        # moved aside rather than deleted first: a stop between the two renames leaves the earlier copy, not nothing
        aside = batch_dir.with_name(f".{batch_id}.replaced-{uuid.uuid4().hex[:12]}")
        batch_dir.rename(aside)
    staging.rename(batch_dir)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return manifest
