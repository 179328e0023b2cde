"""The embedded demo platforms: each one's export, shipped in a data package, copied into its local export folder.

A platform of the registry with `embedded: pkg://<package>/<folder>` has its export folder (`location`, a local path)
filled from that package folder when it does not exist yet: `transfer-rec init` (and so `make run`) and the benchmark do
it. From then on it is an ordinary local platform export, pulled like any other; its native schema is the package's
(MovieLens-1M: age as a bucket code, occupation as a code, genre as a space-separated token; MovieLens-100K: age in
years, occupation as a name, genres as a token sequence). An existing folder is never written to: it is the platform's,
and the pipeline only reads it. A folder filled once and later deleted is not filled again (the state folder's
`embedded.json` remembers which were filled): deleting a platform's data must not bring the demo data back unasked;
`transfer-rec exports --refill` does it on purpose.

A platform with `world` gets a linked world cut from the package's MovieLens-1M instead (io/linked_world.py): the
three platforms of the world (action, family, drama: disjoint catalogues, shared people linked by e-mail) written
together into the folder they share.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from transfer_rec.config import PipelineConfig, PlatformConfig
from transfer_rec.io.storage import Location, LocationError, copy_to_local, write_text_atomic

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
        if platform.world is not None:
            _write_world(platform, staging)
        else:
            for name in platform.files.values():
                copy_to_local(f"{platform.embedded.rstrip('/')}/{name}", staging / name)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("platform %s: export folder %s filled from %s", platform.name, folder, platform.embedded)
    return folder


def _write_world(platform: PlatformConfig, staging: Path) -> None:
    from transfer_rec.io.linked_world import WorldOptions, write_exports

    assert platform.world is not None and platform.embedded is not None
    world = platform.world
    options = WorldOptions(world.target, world.seed, world.target_keep, world.source_drop)
    with tempfile.TemporaryDirectory(prefix="ml-1m-") as cache:
        written = write_exports(staging, options, Path(cache), platform.embedded)
    missing = sorted(name for name in platform.files.values() if not (staging / name).exists())
    if missing:
        raise LocationError(
            f"platform {platform.name}: the linked world writes {sorted(p.name for p in staging.iterdir())}, not "
            f"{missing}: name the platform's files <platform>_interactions.tsv, _users.tsv, _items.tsv"
        )
    log.info("linked world %s written: %s", world.model_dump(), written)


def export_folder(platform: PlatformConfig) -> Path:
    return Path(os.path.realpath(Location.parse(platform.location).path))


def export_all(config: PipelineConfig, record: Path | None = None, refill: bool = False) -> list[Path]:
    """Every embedded platform's export folder that did not exist yet, written now.

    With `record` (a JSON file of the folders filled so far), a folder that was filled before and is gone now is
    left missing, with a warning, unless `refill`: its pull then fails and says so.
    """
    filled = set(json.loads(record.read_text())) if record is not None and record.exists() else set()
    written = []
    for platform in config.platforms:
        if platform.embedded is None:
            continue
        folder = export_folder(platform)
        if str(folder) in filled and not folder.exists() and not refill:
            log.warning(
                "platform %s: export folder %s was filled with the embedded demo data once and has been deleted "
                "since; not filled again (`transfer-rec exports --refill` restores the demo data)",
                platform.name,
                folder,
            )
            continue
        if export_embedded(platform) is not None:
            written.append(folder)
            filled.add(str(folder))
    if record is not None and written:
        write_text_atomic(record, json.dumps(sorted(filled), indent=2))
    return written


def refilled_hint(platform: PlatformConfig, record: Path | None) -> str:
    """What a pull of a missing embedded folder tells the operator: how it gets filled, or why it was not."""
    if record is not None and record.exists() and str(export_folder(platform)) in json.loads(record.read_text()):
        return (
            f"it was filled with the embedded demo data ({platform.embedded}) once and deleted since; "
            "`transfer-rec exports --refill` restores the demo data"
        )
    return f"`transfer-rec init` (run by `make run`) fills it from {platform.embedded}"
