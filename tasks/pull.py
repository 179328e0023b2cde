"""Stage 1, pull: copy a platform's export files as they came into the landing area, with a manifest."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from typing import Any

from tasks.config import PlatformConfig
from tasks.formats import count_rows
from tasks.state import StateLayout
from tasks.storage import Location, copy_to_local, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def pull_platform(platform: PlatformConfig, layout: StateLayout, batch_id: str) -> dict[str, Any]:
    """Land every export file of `platform` under landing/<platform>/<batch_id>/ and return the pull manifest.

    Re-running the same batch replaces its landing folder, so a retry never duplicates rows.
    """
    location = Location.parse(platform.location)
    batch_dir = layout.landing / platform.name / batch_id
    staging = batch_dir.with_name(f".{batch_id}.pulling")
    if staging.exists():
        shutil.rmtree(staging)
    files = []
    for table, name in platform.files.items():
        uri = location.join(name)
        dest = staging / name
        copy_to_local(uri, dest)
        entry = {
            "table": table,
            "file": name,
            "source_uri": uri,
            "size": dest.stat().st_size,
            "sha256": sha256_file(dest),
            "rows": count_rows(dest, platform.format),
        }
        log.info("pulled %s: %s rows, %s bytes, sha256 %s", uri, entry["rows"], entry["size"], entry["sha256"][:12])
        files.append(entry)
    manifest = {
        "platform": platform.name,
        "role": platform.role,
        "batch_id": batch_id,
        "batch_dir": str(batch_dir),
        "pulled_at": datetime.now(timezone.utc).isoformat(),
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if batch_dir.exists():
        shutil.rmtree(batch_dir)
    staging.rename(batch_dir)
    return manifest
