"""Stage 3, unify: map every platform's native schema onto one schema and write the unified tables atomically."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig, PlatformConfig
from tasks.expectations import USER_COLUMNS as UNIFIED_USER_COLUMNS
from tasks.formats import read_table
from tasks.state import StateLayout
from tasks.storage import atomic_dir
from tasks.validate import VALIDATION_FILE, validate_unified

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["platform", "user_id", "item_id", "rating", "label", "timestamp"]
USER_COLUMNS = list(UNIFIED_USER_COLUMNS)
# Identity columns a platform may export to link the same person across platforms: only a salted hash leaves
# landing. The salt is a secret from the environment, never stored with the data.
IDENTITY_COLUMNS = ("email", "phone")
PII_SALT_ENV = "TRANSFER_REC_PII_SALT"
CONSENT_VALUES = {"1", "true", "t", "yes", "y", "opt-in", "opt_in", "granted"}


class PrivacyError(RuntimeError):
    """Identity columns were exported but no salt is configured to hash them."""


def _normalise_identity(column: str, values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip().str.lower()
    if column == "phone":
        text = text.str.replace(r"[^0-9+]", "", regex=True)
    return text.where(text.str.len() > 0)


def link_ids(platform: str, users: pd.DataFrame) -> pd.Series:
    """A salted HMAC-SHA256 of the first identity column present (email before phone): equal for the same person
    on every platform, meaningless without the salt. Null when the platform exports no identity column."""
    present = [c for c in IDENTITY_COLUMNS if c in users]
    if not present:
        return pd.Series(pd.NA, index=users.index, dtype="string")
    salt = os.environ.get(PII_SALT_ENV, "")
    if len(salt) < 16:
        raise PrivacyError(f"platform {platform}: users column(s) {present} identify people; set the secret "
                           f"{PII_SALT_ENV} (at least 16 characters) so they are linked by a salted hash, never kept")
    key = salt.encode()
    identity = _normalise_identity(present[0], users[present[0]])
    for column in present[1:]:
        identity = identity.fillna(_normalise_identity(column, users[column]))
    hashed = [pd.NA if pd.isna(v) else hmac.new(key, f"{present[0]}:{v}".encode(), hashlib.sha256).hexdigest()
              for v in identity]
    return pd.Series(hashed, index=users.index, dtype="string")


def consent_flags(users: pd.DataFrame) -> pd.Series:
    """True unless the platform exports a consent column and the user did not give consent (missing = no)."""
    if "consent" not in users:
        return pd.Series(True, index=users.index)
    return users["consent"].astype("string").str.strip().str.lower().isin(CONSENT_VALUES).fillna(False).astype(bool)
ITEM_COLUMNS = ["item_id", "title", "year", "genres"]
AGE_BINS = [0, 18, 25, 35, 45, 50, 56, 200]


def canonical_item_key(raw: pd.Series) -> pd.Series:
    """Align items across platforms: normalised 'title (year)' (case, spacing and punctuation folded)."""
    codes, uniques = pd.factorize(raw.astype(str))
    # Normalise each distinct id once (a platform has far fewer items than interactions).
    text = pd.Series(uniques, dtype=object).str.lower().str.normalize("NFKC")
    text = text.str.replace(r"[^\w()]+", " ", regex=True).str.replace(r"\s+", " ", regex=True).str.strip()
    return pd.Series(text.to_numpy()[codes], index=raw.index)


def user_key(platform: str, native: pd.Series) -> pd.Series:
    """Users are namespaced by platform: the same native id on two platforms is two people."""
    codes, uniques = pd.factorize(native.astype(str))   # each distinct id once: far fewer users than interactions
    keys = (platform + ":" + pd.Series(uniques, dtype=str)).to_numpy()
    return pd.Series(keys[codes], index=native.index, dtype=str)


def is_member(keys: pd.Series, values: pd.Series | np.ndarray) -> np.ndarray:
    """keys.isin(values) through a hash set (pyarrow), fast on millions of string keys."""
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = pa.array(pd.unique(np.asarray(values, dtype=object)), type=pa.string())
    return pc.is_in(pa.array(np.asarray(keys, dtype=object), type=pa.string()), value_set=value_set) \
        .to_numpy(zero_copy_only=False)


def _map_values(series: pd.Series, map_name: str, config: PipelineConfig, vocabulary: list[str]) -> pd.Series:
    if map_name == "age_years":
        years = pd.to_numeric(series, errors="coerce")
        labels = vocabulary or [str(b) for b in AGE_BINS[:-1]]
        return pd.cut(years, bins=AGE_BINS, right=False, labels=labels).astype(object)
    mapping = config.value_maps[map_name]
    return series.astype(str).map(mapping)


def _native(frame: pd.DataFrame, platform: PlatformConfig, table: str) -> pd.DataFrame:
    mapping = platform.columns[table]
    return frame[[c for c in mapping if c in frame]].rename(columns=mapping)


def interaction_files(manifest: dict[str, Any], platform: PlatformConfig, layout: StateLayout) -> list[Path]:
    """The landed interaction files that make up a platform's data.

    Snapshot: the batch's own file. Incremental: every validated partition landed so far for this platform (each
    partition once: the most recent pull of it wins), so re-pulling an interval replaces its rows, never adds them.
    """
    if platform.pull.mode == "snapshot":
        return [Path(manifest["batch_dir"]) / platform.files["interactions"]]
    latest: dict[str, tuple[str, Path]] = {}
    for validation in sorted((layout.landing / platform.name).glob(f"*/{VALIDATION_FILE}")):
        batch = json.loads((validation.parent / "manifest.json").read_text())
        for entry in batch["files"]:
            if entry["table"] == "interactions" and latest.get(entry["file"], ("",))[0] <= batch["pulled_at"]:
                latest[entry["file"]] = (batch["pulled_at"], validation.parent / entry["file"])
    return [path for _, path in (latest[name] for name in sorted(latest))]


def _read_interactions(paths: list[Path], platform: PlatformConfig) -> pd.DataFrame:
    frames = [_native(read_table(p, platform.format, platform.delimiter), platform, "interactions") for p in paths]
    if not frames:
        return pd.DataFrame(columns=["user_id", "item_id", "rating", "timestamp"])
    return pd.concat(frames, ignore_index=True)


def unify_platform(batch_dir: Path, platform: PlatformConfig, config: PipelineConfig,
                   interactions: list[Path] | None = None) -> dict[str, Any]:
    """Read one validated batch (and, incrementally, the interaction partitions given) into unified tables and
    counts (nothing written)."""
    files = platform.files
    raw = _read_interactions(interactions if interactions is not None else [batch_dir / files["interactions"]],
                             platform)
    inter = pd.DataFrame({
        "platform": platform.name,
        "user_id": user_key(platform.name, raw["user_id"]),
        "item_id": canonical_item_key(raw["item_id"]),
        "rating": pd.to_numeric(raw.get("rating", pd.Series(1.0, index=raw.index)), errors="coerce"),
        "timestamp": pd.to_numeric(raw.get("timestamp", pd.Series(0, index=raw.index)), errors="coerce"),
    })
    rows_in = len(inter)
    unusable = inter["rating"].isna() | inter["timestamp"].isna()
    inter = inter[~unusable]
    # Order by (user, item, timestamp), stable, and keep the earliest of duplicate (user, item) rows. Sorting
    # integer codes (factorised in sorted order) is the same order as sorting the strings, many times faster.
    user_codes = pd.factorize(inter["user_id"], sort=True)[0].astype(np.int64)
    item_codes, item_uniques = pd.factorize(inter["item_id"], sort=True)
    order = np.lexsort((inter["timestamp"].to_numpy(), item_codes, user_codes))
    pair = (user_codes * max(len(item_uniques), 1) + item_codes)[order]
    first = np.ones(len(pair), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    duplicated = pd.Series(~first)
    inter = inter.iloc[order[first]].copy()
    inter["timestamp"] = inter["timestamp"].astype("int64")
    inter["rating"] = inter["rating"].astype("float64")
    inter["label"] = (inter["rating"] >= config.features.min_rating).astype("int8")
    inter = inter[INTERACTION_COLUMNS].reset_index(drop=True)

    users = pd.DataFrame(columns=USER_COLUMNS)
    if "users" in files:
        u = _native(read_table(batch_dir / files["users"], platform.format, platform.delimiter), platform, "users")
        u = u.drop_duplicates("user_id", keep="first")
        users = pd.DataFrame({"platform": platform.name, "user_id": user_key(platform.name, u["user_id"])})
        for column in ("age", "gender", "occupation"):
            values = u[column] if column in u else pd.Series(np.nan, index=u.index)
            if column in platform.value_maps:
                values = _map_values(values, platform.value_maps[column], config, config.vocabularies.get(column, []))
            users[column] = values.values
        users["gender"] = users["gender"].astype(str).str.upper().str[:1].where(users["gender"].notna())
        # Only a coarse region leaves landing: the first two characters of a postal code.
        region = u["region"].astype(str).str[:2] if "region" in u else pd.Series(np.nan, index=u.index)
        users["region"] = region.values
        users["link_id"] = link_ids(platform.name, u).values
        users["consent"] = consent_flags(u).values
    # Opted-out users' interactions never enter training or evaluation; they keep a users row (consent False) so
    # publishing can still give them non-personalised recommendations.
    opted_out = (pd.Series(is_member(inter["user_id"], users.loc[~users["consent"].astype(bool), "user_id"]),
                           index=inter.index) if len(users) else None)
    if opted_out is not None and opted_out.any():
        inter = inter[~opted_out].reset_index(drop=True)
    items = pd.DataFrame(columns=ITEM_COLUMNS)
    if "items" in files:
        it = _native(read_table(batch_dir / files["items"], platform.format, platform.delimiter), platform, "items")
        items = pd.DataFrame({"item_id": canonical_item_key(it["item_id"])})
        items["title"] = it["title"].values if "title" in it else it["item_id"].values
        year = pd.to_numeric(it["year"], errors="coerce") if "year" in it else pd.Series(np.nan, index=it.index)
        items["year"] = year.astype("Int64").values
        genres = it["genres"] if "genres" in it else pd.Series("", index=it.index)
        items["genres"] = genres.fillna("").astype(str).str.split().str.join("|").values
        items = items.drop_duplicates("item_id", keep="first")
    return {
        "interactions": inter,
        "users": users,
        "items": items,
        "counts": {
            "rows_in": rows_in,
            "rows_out": len(inter),
            "dropped": {"unparseable_rating_or_timestamp": int(unusable.sum()),
                        "duplicate_user_item": int(duplicated.sum()),
                        "opted_out": int(opted_out.sum()) if opted_out is not None else 0},
            "users": int(inter["user_id"].nunique()),
            "items": int(inter["item_id"].nunique()),
        },
    }


class ItemCollisionError(ValueError):
    """The same item id names different items on two platforms: aligning them would mix their interactions."""


def check_item_collisions(items: pd.DataFrame, shown: int = 3) -> None:
    """Refuse item ids that two platforms use for different titles (compared after normalisation)."""
    titles = items.assign(_title=canonical_item_key(items["title"].astype(str)))
    spread = titles.groupby("item_id")["_title"].nunique()
    clashes = spread[spread > 1].index
    if len(clashes):
        examples = titles[titles["item_id"].isin(clashes[:shown])].groupby("item_id").apply(
            lambda g: dict(zip(g["_platform"], g["title"])), include_groups=False).to_dict()
        raise ItemCollisionError(f"{len(clashes)} item id(s) name different items on different platforms (rule: "
                                 f"an item id is one item on every platform), e.g. {examples}; give those platforms "
                                 "distinct item ids or an item key that tells them apart")


def unify(validated: list[dict[str, Any]], config: PipelineConfig, layout: StateLayout) -> dict[str, Any]:
    """Unify all validated batches into lake/unified/{interactions,users,items}.parquet, switched in atomically."""
    parts = {}
    for m in validated:
        platform = config.platform(m["platform"])
        parts[m["platform"]] = unify_platform(Path(m["batch_dir"]), platform, config,
                                              interaction_files(m, platform, layout))
    interactions = pd.concat([p["interactions"] for p in parts.values()], ignore_index=True)
    users = pd.concat([p["users"] for p in parts.values() if len(p["users"])] or [pd.DataFrame(columns=USER_COLUMNS)],
                      ignore_index=True)
    items = pd.concat([p["items"].assign(_platform=name) for name, p in parts.items() if len(p["items"])]
                      or [pd.DataFrame(columns=ITEM_COLUMNS + ["_platform"])], ignore_index=True)
    check_item_collisions(items)
    items = items.drop(columns="_platform")
    # Items seen in interactions but missing from every item table still get a row (title from the id).
    missing = np.setdiff1d(interactions["item_id"].unique(), items["item_id"].unique())
    if len(missing):
        items = pd.concat([items, pd.DataFrame({"item_id": missing, "title": missing, "year": pd.NA, "genres": ""})],
                          ignore_index=True)
    items = items.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    items["year"] = items["year"].astype("Int64")

    source_items = set(parts[config.source.name]["interactions"]["item_id"]) if config.source.name in parts else set()
    counts = {}
    for name, part in parts.items():
        target_items = set(part["interactions"]["item_id"])
        counts[name] = {**part["counts"], "items_shared_with_source": len(target_items & source_items)}
        log.info("unified %s: %s", name, counts[name])
    final = layout.unified / "current"
    with atomic_dir(final) as out:
        validation = validate_unified({"interactions": interactions, "users": users, "items": items}, config,
                                      layout, out.name)
        interactions.to_parquet(out / "interactions.parquet", index=False)
        users.to_parquet(out / "users.parquet", index=False)
        items.to_parquet(out / "items.parquet", index=False)
        manifest = {
            # Downstream stages read this exact version, even if a later run switches "current" meanwhile.
            "dir": str(out),
            "current": str(final),
            "platforms": counts,
            "batches": {m["platform"]: m["batch_id"] for m in validated},
            "hashes": {m["platform"]: {f["file"]: f["sha256"] for f in m["files"]} for m in validated},
            "validation": validation,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
