"""The embedded demo platforms: each one's export, shipped in a data package, copied into its local export folder.

A platform of the registry with `embedded: pkg://<package>/<folder>` has its export folder (`location`, a local path)
filled from that package folder when it does not exist yet: `transfer-rec init` (and so `make run`) and the benchmark do
it. From then on it is an ordinary local platform export, pulled like any other; its native schema is the package's
(MovieLens-1M: age as a bucket code, occupation as a code, genre as a space-separated token; MovieLens-100K: age in
years, occupation as a name, genres as a token sequence). An existing folder is never written to: it is the platform's,
and the pipeline only reads it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from transfer_rec.config import PipelineConfig, PlatformConfig
from transfer_rec.io.storage import Location, LocationError, copy_to_local

log = logging.getLogger(__name__)


def export_embedded(platform: PlatformConfig) -> Path | None:
    """Fill the platform's local export folder from its embedded package data; the folder appears complete or not at
    all. Returns the folder when it was written now, None when there is nothing to do."""
    if platform.embedded is None:
        return None
    if Location.parse(platform.location).scheme != "file":
        raise LocationError(f"platform {platform.name}: `embedded` needs a local location, not {platform.location!r}")
    folder = Path(Location.parse(platform.location).path)
    if folder.exists():
        return None
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        for name in platform.files.values():
            copy_to_local(f"{platform.embedded.rstrip('/')}/{name}", staging / name)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("platform %s: export folder %s filled from %s", platform.name, folder, platform.embedded)
    return folder


def export_all(config: PipelineConfig) -> list[Path]:
    """Every embedded platform's export folder that did not exist yet, written now."""
    return [folder for p in config.platforms if (folder := export_embedded(p)) is not None]
