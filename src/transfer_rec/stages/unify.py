"""Stage 3, unify: map every platform's native schema onto one schema and write the unified tables atomically."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from transfer_rec.config import AGE_BINS, PipelineConfig, PlatformConfig
from transfer_rec.io.formats import as_text, read_table, to_numbers
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import atomic_dir, write_text_atomic
from transfer_rec.manifests import PulledBatch, UnifiedVersion, ValidatedBatch
from transfer_rec.ops.links import data_docs_page
from transfer_rec.runtime.workers import Forked, can_fork, workers
from transfer_rec.schema import rules
from transfer_rec.schema.suites import native_column
from transfer_rec.schema.unified import (
    GENDERS,
    IDENTITY_COLUMNS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_ID_COLUMNS,
    LINK_COLUMNS,
    PII_SALT_ENV,
    PII_SALT_FILE_ENV,
    USER_COLUMNS,
    item_key,
    rating_mapping,
    user_key,
)
from transfer_rec.schema.values import is_member
from transfer_rec.stages.pull import landed_partitions, shadowed
from transfer_rec.stages.validate import (
    PARALLEL_MIN_ROWS,
    quarantine,
    require_landed,
    validate_unified,
)

log = logging.getLogger(__name__)

# Identity columns (schema.unified.IDENTITY_COLUMNS) link the same person across platforms: only a salted hash
# (schema.unified.PII_SALT_ENV) leaves landing.
CONSENT_VALUES = {"1", "true", "t", "yes", "y", "opt-in", "opt_in", "granted"}


class PrivacyError(RuntimeError):
    """Identity columns were exported but no salt is configured to hash them."""


# What an identity must look like to link anyone: exports write placeholders ("NULL", "n/a", "none@none",
# "000-000-0000") where a person gave none, and one placeholder hashed would make everyone who has it one person
# (their histories merged, one answered from another's). An e-mail needs a local part, an @ and a dotted domain; a
# phone at least 7 digits, not all the same.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$"
PHONE_DIGITS_MIN = 7
# More accounts of one platform than this under one identity are no person (a shared family address has a few):
# none of them is linked. A placeholder that looks like an address ("noreply@company.com") ends here.
ACCOUNTS_PER_IDENTITY_MAX = 5


def _normalise_identity(column: str, values: pd.Series) -> pd.Series:
    """Each value as it is hashed (case and spaces folded; a phone as its digits, after "+" when it is written with
    an international prefix, "+" or "00": "+1 555" and "001 555" are one number), null where it cannot name a
    person. A number written without that prefix stays apart from every international one: "1 555" may be that
    number without its "+", or a national number of another country with the same digits, and the export does not
    say which (two people taken for one would see each other's histories)."""
    # as_text: a Parquet integer column with a null comes back as float64, and "4420794600001.0" would hash as a
    # different number with one digit more
    text = as_text(values).astype("string").str.strip().str.lower()
    if column == "phone":
        international = text.str.match(r"^(\+|00)").fillna(False).astype(bool)
        digits = text.str.replace(r"[^0-9]", "", regex=True)
        digits = digits.where(~text.str.startswith("00").fillna(False), digits.str.slice(2))
        usable = (digits.str.len() >= PHONE_DIGITS_MIN) & ~digits.str.fullmatch(r"(\d)\1*").fillna(False)
        text = digits.where(~international, "+" + digits)
    else:
        usable = text.str.fullmatch(EMAIL_PATTERN).fillna(False)
    return text.where(usable.fillna(False).astype(bool))


def pii_salt() -> str:
    """The linking secret: $TRANSFER_REC_PII_SALT, else the content of the file $TRANSFER_REC_PII_SALT_FILE names."""
    salt = os.environ.get(PII_SALT_ENV, "")
    path = os.environ.get(PII_SALT_FILE_ENV, "")
    if not salt and path and Path(path).is_file():
        salt = Path(path).read_text().strip()
    return salt


def ensure_salt_file(path: Path) -> bool:
    """Write a random salt to `path` (readable by its owner only) unless it exists; True when written now. A salt
    must stay the same from run to run: a new one gives everyone new link ids."""
    if path.exists():
        return False
    write_text_atomic(path, secrets.token_hex(32) + "\n", mode=0o600)
    return True


def link_ids(platform: str, users: pd.DataFrame) -> pd.Series:
    """A salted HMAC-SHA256 of each user's first identity present (email before phone), hashed under the column it
    came from: equal for the same person on every platform, meaningless without the salt. Null when the platform
    exports no identity column or the user has none."""
    present = [c for c in IDENTITY_COLUMNS if c in users]
    if not present:
        return pd.Series(pd.NA, index=users.index, dtype="string")
    salt = pii_salt()
    if len(salt.strip()) < 16:  # blanks are no secret
        raise PrivacyError(
            f"platform {platform}: users column(s) {present} identify people; set the secret "
            f"{PII_SALT_ENV} (at least 16 characters; or {PII_SALT_FILE_ENV}, a file holding it) so they are "
            "linked by a salted hash, never kept"
        )
    key = salt.encode()
    # each value hashed under the column it came from: a phone stands in for a missing e-mail as "phone:<number>",
    # so it links to a platform that exports phones only
    identity = pd.Series(pd.NA, index=users.index, dtype="string")
    for column in present:
        given = as_text(users[column]).astype("string").str.strip().fillna("").str.len() > 0
        normalised = _normalise_identity(column, users[column])
        unusable = int((given & normalised.isna()).sum())
        if unusable:  # counts only: a value itself never reaches a log
            log.warning(
                "platform %s: %d users' %s value(s) cannot name a person (placeholders such as 'NULL' or "
                "'000-000-0000', or malformed): not linked by it",
                platform,
                unusable,
                column,
            )
        identity = identity.fillna((column + ":" + normalised).astype("string"))
    counts = identity.map(identity.value_counts())
    crowded = identity.notna() & (counts > ACCOUNTS_PER_IDENTITY_MAX)
    if crowded.any():
        log.warning(
            "platform %s: %d users share %d identity value(s), each held by more than %d users: a placeholder, "
            "not a person; none of them is linked",
            platform,
            int(crowded.sum()),
            int(identity[crowded].nunique()),
            ACCOUNTS_PER_IDENTITY_MAX,
        )
        identity = identity.mask(crowded)
    hashed = [pd.NA if pd.isna(v) else hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in identity]
    return pd.Series(hashed, index=users.index, dtype="string")


def consent_flags(users: pd.DataFrame) -> pd.Series:
    """True unless the platform exports a consent column and the user did not give consent (missing = no)."""
    if "consent" not in users:
        return pd.Series(True, index=users.index)
    # as_text: a Parquet 0/1 column with a null comes back as float64, and "1.0" is no consent value
    given = as_text(users["consent"]).astype("string").str.strip().str.lower()
    return given.isin(CONSENT_VALUES).fillna(False).astype(bool)


def canonical_item_key(raw: pd.Series) -> pd.Series:
    """Align items across platforms: normalised 'title (year)' (case, spacing and punctuation folded)."""
    codes, uniques = pd.factorize(raw.astype(str))
    # Normalise each distinct id once (a platform has far fewer items than interactions).
    return pd.Series(_canonical_text(pd.Series(uniques, dtype=object)).to_numpy()[codes], index=raw.index)


def _canonical_text(uniques: pd.Series) -> pd.Series:
    return uniques.map(item_key)


def platform_user_keys(platform: str, native: pd.Series) -> pd.Series:
    """Users are namespaced by platform: the same native id on two platforms is two people."""
    codes, uniques = pd.factorize(native.astype(str))  # each distinct id once: far fewer users than interactions
    keys = _user_text(platform, pd.Series(uniques, dtype=str)).to_numpy()
    return pd.Series(keys[codes], index=native.index, dtype=str)


def _user_text(platform: str, uniques: pd.Series) -> pd.Series:
    # schema.unified.user_key, vectorised: a platform may have millions of users
    return user_key(platform, "") + uniques


def _sorted_key_codes(
    native: pd.Series, keys_of: Callable[[pd.Series], pd.Series], natives: bool = True
) -> tuple[np.ndarray, pd.Index, np.ndarray | None]:
    """The unified keys of a native id column as codes into its distinct keys in sorted order (the order of the keys
    themselves), those keys, and per key the smallest native id that maps to it (whatever file or partition it
    came in first: the Spark engine picks the same; None unless `natives`). Each distinct native id is mapped once;
    a categorical column is not expanded."""
    if isinstance(native.dtype, pd.CategoricalDtype):
        codes = native.cat.codes.to_numpy()
        uniques = native.cat.categories.astype(str)
    else:
        codes, uniques = pd.factorize(native.astype(str))
    key_codes, keys = pd.factorize(keys_of(pd.Series(uniques, dtype=str)), sort=True)
    if not natives:
        return key_codes[codes].astype(np.int64), keys, None
    smallest = pd.Series(np.asarray(uniques, dtype=object)).groupby(key_codes, sort=True).min()
    return key_codes[codes].astype(np.int64), keys, smallest.to_numpy(dtype=object)


def _strings(keys: pd.Index, codes: np.ndarray) -> pd.arrays.ArrowStringArray:
    """keys[codes] as a pandas string array, gathered by pyarrow (no Python string per row)."""
    import pyarrow as pa

    values = pa.array(np.asarray(keys, dtype=object), type=pa.large_string()).take(pa.array(codes))
    return pd.array(values, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _repeated(text: str, count: int) -> pd.arrays.ArrowStringArray:
    """One string `count` times as a pandas string array, built from its Arrow buffers (no per-row work)."""
    import pyarrow as pa

    data = text.encode()
    offsets = np.arange(count + 1, dtype=np.int64) * len(data)
    values = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data * count))
    return pd.array(values, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _map_values(series: pd.Series, map_name: str, config: PipelineConfig, vocabulary: list[str]) -> pd.Series:
    if map_name == "age_years":
        years = pd.to_numeric(series, errors="coerce")
        labels = vocabulary or [str(b) for b in AGE_BINS[:-1]]
        return pd.cut(years, bins=AGE_BINS, right=False, labels=labels).astype(object)
    mapping = config.value_maps[map_name]
    return as_text(series).map(mapping)


def unified_profiles(
    users: pd.DataFrame,
    platform: PlatformConfig,
    config: PipelineConfig,
    keep_unified: bool = False,
    file: str | Path | None = None,
) -> pd.DataFrame:
    """A users table's age, gender and occupation (columns already named as unified) in the shared vocabularies:
    each through the platform's value map, gender as its upper-case first letter. With `keep_unified`, a column whose
    values all are already in the shared vocabulary is taken as it is (a table unified before, re-read). A value the
    map does not know is read as unknown, with a warning naming the platform, `file`, column and map."""
    out = pd.DataFrame(index=users.index)
    for column in ("age", "gender", "occupation"):
        values = users[column] if column in users else pd.Series(np.nan, index=users.index)
        vocabulary = config.vocabularies.get(column, [])
        known = keep_unified and bool(vocabulary) and as_text(values).dropna().isin(vocabulary).all()
        if column in platform.value_maps and not known:
            mapped = _map_values(values, platform.value_maps[column], config, vocabulary)
            lost = values[values.notna() & mapped.isna()]
            if len(lost):
                log.warning(
                    "platform %s, %s, column %s: %d value(s) outside the value map %r (e.g. %s), read as unknown",
                    platform.name,
                    file or platform.files.get("users"),
                    column,
                    len(lost),
                    platform.value_maps[column],
                    sorted(set(as_text(lost)))[:3],
                )
            values = mapped
        out[column] = values
    out["gender"] = out["gender"].astype(str).str.upper().str[:1].where(out["gender"].notna())
    return out


def unified_item_columns(items: pd.DataFrame) -> pd.DataFrame:
    """An items table (columns already named as unified) as item_id, title, year (integer) and genres ('|'-joined;
    a native list may be space- or '|'-separated)."""
    out = pd.DataFrame({"item_id": items["item_id"].values})
    out["title"] = items["title"].values if "title" in items else items["item_id"].values
    year = pd.to_numeric(items["year"], errors="coerce") if "year" in items else pd.Series(np.nan, index=items.index)
    out["year"] = year.astype("Int64").values
    genres = items["genres"] if "genres" in items else pd.Series("", index=items.index)
    out["genres"] = genres.fillna("").astype(str).str.replace("|", " ", regex=False).str.split().str.join("|").values
    return out


def _native(frame: pd.DataFrame, platform: PlatformConfig, table: str) -> pd.DataFrame:
    mapping = platform.columns[table]
    return frame[[c for c in mapping if c in frame]].rename(columns=mapping)


class Inputs(NamedTuple):
    """What a platform's unified data is read from, listed once: the interaction files, and the sha256 of every file
    by file name (what the inputs fingerprint, the model's data tags and its lineage are made of)."""

    interactions: list[Path]
    hashes: dict[str, str]


def landed_inputs(manifest: PulledBatch, platform: PlatformConfig, layout: StateLayout) -> Inputs:
    """A snapshot's own batch; for an incremental platform, every validated partition landed so far, each once
    (`landed_partitions`, not only this run's), and the batch's other files. One listing serves both reading and
    hashing: a partition that lands while unify runs is in neither, so the fingerprint never names a day the model
    has not seen."""
    if platform.pull.mode == "snapshot":
        files = [Path(manifest.batch_dir) / platform.files["interactions"]]
        return Inputs(files, {f.file: f.sha256 for f in manifest.files})
    landed = landed_partitions(platform.name, layout)
    hashes = {f.file: f.sha256 for f in manifest.files if f.table != "interactions"}
    hashes.update({name: partition.sha256 for name, partition in landed.items()})
    return Inputs([partition.path for partition in landed.values()], hashes)


def interaction_files(manifest: PulledBatch, platform: PlatformConfig, layout: StateLayout) -> list[Path]:
    """The landed interaction files that make up a platform's data (`landed_inputs`)."""
    return landed_inputs(manifest, platform, layout).interactions


def _read_interactions(paths: list[Path], platform: PlatformConfig) -> pd.DataFrame:
    ids = [native for native, unified in platform.columns["interactions"].items() if unified in ("user_id", "item_id")]
    frames = [
        _native(read_table(p, platform.format, platform.delimiter, categorical=ids), platform, "interactions")
        for p in paths
    ]
    if not frames:
        return pd.DataFrame(columns=["user_id", "item_id", "rating", "timestamp"])
    if len(frames) > 1:  # partitions: their id categoricals have different categories
        frames = [f.astype({c: str for c in ("user_id", "item_id") if c in f}) for f in frames]
    return pd.concat(frames, ignore_index=True)


def _distinct(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, pd.Series]:
    """Each id column's distinct values (a categorical's categories that some row uses: a Parquet file written from
    a categorical keeps categories no row has any more, which validation never saw and no rule may judge)."""
    out = {}
    for column in columns:
        if column in frame:
            values = frame[column]
            categorical = isinstance(values.dtype, pd.CategoricalDtype)
            used = values.cat.remove_unused_categories().cat.categories if categorical else values.dropna().unique()
            out[column] = pd.Series(used)
    return out


def _first_per_pair(users: np.ndarray, items: np.ndarray, n_items: int, timestamps: np.ndarray) -> np.ndarray:
    """The rows to keep, in (user, item) order: of the rows of one (user, item) pair, the earliest (then the first
    in file order). The same rows and order as a stable sort by (user, item, timestamp) keeping each pair's first,
    with one stable sort of an integer pair key (a 3-key lexsort is ~10x slower on 18 M rows) and a lexsort of the
    duplicated pairs only."""
    if len(users) and n_items and int(users.max()) >= (2**62) // n_items:  # the pair key would overflow
        order = np.lexsort((timestamps, items, users))
        first = np.ones(len(order), dtype=bool)
        first[1:] = (np.diff(users[order]) != 0) | (np.diff(items[order]) != 0)
        return order[first]
    pair = users * max(n_items, 1) + items
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    kept = order[first]
    if first.all():
        return kept
    group = np.cumsum(first) - 1  # the kept row each sorted row belongs with
    repeated = np.zeros(len(kept), dtype=bool)
    repeated[group[~first]] = True
    rows, groups = order[repeated[group]], group[repeated[group]]  # rows of repeated pairs, in file order per pair
    by_time = np.lexsort((timestamps[rows], groups))
    rows, groups = rows[by_time], groups[by_time]
    head = np.ones(len(rows), dtype=bool)
    head[1:] = groups[1:] != groups[:-1]
    kept[groups[head]] = rows[head]
    return kept


def unify_platform(
    batch_dir: Path, platform: PlatformConfig, config: PipelineConfig, interactions: list[Path] | None = None
) -> dict[str, Any]:
    """Read one validated batch (and, incrementally, the interaction partitions given) into unified tables and
    counts (nothing written)."""
    files = platform.files
    limits = config.rules
    raw = _read_interactions(
        interactions if interactions is not None else [batch_dir / files["interactions"]], platform
    )
    rows_in = len(raw)
    distinct = _distinct(raw, ("user_id", "item_id"))
    rules.check_id_length(distinct, limits.max_id_length, platform.name, files["interactions"])
    if platform.e_mail_user_ids == "refuse" and "users" not in files and "user_id" in distinct:
        # (with a users file, every user id here must be one of its ids, which platform_users checks)
        rules.check_opaque_user_ids(distinct["user_id"], platform.name, files["interactions"])
    # Ids as codes into their sorted distinct unified keys: ordering by code is ordering by key, and each distinct
    # id is namespaced / normalised once.
    user_codes, user_keys, _ = _sorted_key_codes(raw["user_id"], lambda u: _user_text(platform.name, u), False)
    item_codes, item_keys, item_natives = _sorted_key_codes(raw["item_id"], _canonical_text)
    # a platform without ratings (implicit feedback: views, enrolments) has every interaction count as a positive:
    # the top of its rating scale
    rating = to_numbers(raw.get("rating", pd.Series(platform.rating_scale[1], index=raw.index))).to_numpy()
    shift, factor = rating_mapping(platform.rating_scale)
    if (shift, factor) != (0.0, 1.0):
        rating = shift + factor * rating.astype(np.float64)
    timestamp = to_numbers(raw.get("timestamp", pd.Series(0, index=raw.index))).to_numpy()
    if timestamp.dtype.kind == "f":
        # whole seconds, as they are stored and as Spark orders them: two rows of a pair within one second are
        # taken in file order, not by their fractions
        timestamp = np.trunc(timestamp)
    unusable_rows = np.flatnonzero(pd.isna(rating) | pd.isna(timestamp))
    unusable = len(unusable_rows)
    # Order by (user, item, timestamp), stable, and keep the earliest of duplicate (user, item) rows.
    if unusable:
        rows = np.delete(np.arange(rows_in), unusable_rows)
        kept = rows[_first_per_pair(user_codes[rows], item_codes[rows], len(item_keys), timestamp[rows])]
    else:
        kept = _first_per_pair(user_codes, item_codes, len(item_keys), timestamp)
    duplicated = rows_in - unusable - len(kept)
    rules.check_duplicate_share(duplicated, rows_in, limits.max_duplicate_share, platform.name, files["interactions"])
    users = platform_users(batch_dir, platform, config)
    if len(users):
        # on the pairs kept, as Spark checks its written pairs; an incremental platform's interactions span every
        # landed partition: unify then checks the run's own partitions alone to say whether its batch is to blame
        unknown = ~is_member(user_keys, users["user_id"])  # per distinct user
        of_unknown = kept[unknown[user_codes[kept]]]
        if len(of_unknown):
            names = raw["user_id"].iloc[of_unknown].unique()
            rules.check_users_known(names, len(of_unknown), platform.name, files["interactions"])
    # Opted-out users' interactions never enter training or evaluation; they keep a users row (consent False) so
    # publishing can still give them non-personalised recommendations.
    opted_out = 0
    if len(users):
        out = is_member(user_keys, users.loc[~users["consent"].astype(bool), "user_id"])  # per distinct user
        leaving = out[user_codes[kept]]
        opted_out = int(leaving.sum())
        if opted_out:
            kept = kept[~leaving]
    users_kept, items_kept = user_codes[kept], item_codes[kept]
    rating_kept = rating[kept].astype("float64")
    inter = pd.DataFrame(
        {
            "platform": _repeated(platform.name, len(kept)),
            "user_id": _strings(user_keys, users_kept),
            "item_id": _strings(item_keys, items_kept),
            "rating": rating_kept,
            "label": ((rating_kept >= config.features.min_rating) | ("rating" not in raw)).astype("int8"),
            "timestamp": timestamp[kept].astype("int64"),
        }
    )[list(INTERACTION_COLUMNS)]
    rows_per_item = np.bincount(items_kept, minlength=len(item_keys))
    present_items = np.flatnonzero(rows_per_item)
    users_kept_count = int(np.count_nonzero(np.bincount(users_kept, minlength=len(user_keys))))
    counts = (rows_in, len(inter), unusable, duplicated, opted_out, users_kept_count)
    return platform_part(
        batch_dir,
        platform,
        config,
        inter,
        users,
        item_keys[present_items],
        item_natives[present_items],
        rows_per_item[present_items],
        counts,
    )


def platform_part(
    batch_dir: Path,
    platform: PlatformConfig,
    config: PipelineConfig,
    inter: Any,
    users: pd.DataFrame,
    present_keys: Any,
    present_natives: Any,
    present_rows: Any,
    counts: tuple[int, int, int, int, int, int],
) -> dict[str, Any]:
    """One platform's unified part, as either engine returns it: its interactions (`inter`, the engine's frame),
    users, items and item ids (from its files), and counts (rows in, rows out, unparseable, duplicate and opted-out
    rows dropped, users kept); `present_keys` are the distinct items of the kept interactions, sorted,
    `present_natives` the native id of each (what the source and a target share is counted on them) and
    `present_rows` the kept interactions naming each."""
    rows_in, rows_out, unusable, duplicated, opted_out, users_kept = counts
    # the platform's own id of each of its items, so that serving can speak the platform's ids
    item_ids = pd.DataFrame({"platform": platform.name, "native_id": present_natives, "item_id": present_keys})
    items, item_ids = platform_items(batch_dir, platform, config, item_ids, present_keys, present_rows)
    return {
        "interactions": inter,
        "users": users,
        "items": items,
        "item_ids": item_ids[list(ITEM_ID_COLUMNS)],
        "counts": {
            "rows_in": int(rows_in),
            "rows_out": int(rows_out),
            "dropped": {
                "unparseable_rating_or_timestamp": int(unusable),
                "duplicate_user_item": int(duplicated),
                "opted_out": int(opted_out),
            },
            "users": int(users_kept),
            "items": len(present_keys),
        },
        "item_keys": present_keys,
    }


def platform_users(batch_dir: Path, platform: PlatformConfig, config: PipelineConfig) -> pd.DataFrame:
    """A platform's unified users table (profiles in the shared vocabularies, a coarse region, consent and the salted
    link id; no identity column) from its users file; empty when it exports none. Both engines use it: a users table
    is one row per person, small next to the interactions."""
    if "users" not in platform.files:
        return pd.DataFrame(columns=list(USER_COLUMNS))
    u = _native(read_table(batch_dir / platform.files["users"], platform.format, platform.delimiter), platform, "users")
    ids = _distinct(u, ("user_id",))
    rules.check_id_length(ids, config.rules.max_id_length, platform.name, platform.files["users"])
    if platform.e_mail_user_ids == "refuse" and "user_id" in ids:
        rules.check_opaque_user_ids(ids["user_id"], platform.name, platform.files["users"])
    # a user listed twice with different profiles is refused; exact repeats are dropped and counted
    repeats = rules.check_conflicts(
        u, "user_id", [c for c in u.columns if c != "user_id"], platform.name, platform.files["users"]
    )
    if repeats:
        log.info("platform %s, %s: %d repeated user row(s) dropped", platform.name, platform.files["users"], repeats)
    u = u.drop_duplicates("user_id", keep="first")
    users = pd.DataFrame({"platform": platform.name, "user_id": platform_user_keys(platform.name, u["user_id"])})
    for column, values in unified_profiles(u, platform, config).items():
        allowed = GENDERS if column == "gender" else config.vocabularies.get(column)
        if allowed and column in u:  # what the unified check would refuse, named here with the batch's own file
            rules.check_vocabulary(values, u[column], allowed, platform.name, platform.files["users"], column)
        users[column] = values.values
    # Only a coarse region leaves landing: the first two characters of a postal code.
    region = u["region"].astype(str).str[:2] if "region" in u else pd.Series(np.nan, index=u.index)
    users["region"] = region.values
    consent = consent_flags(u).values
    if "consent" not in u and any(c in u for c in IDENTITY_COLUMNS):
        # a platform whose consent export or mapping went missing would otherwise re-link, unremarked, the people
        # who had opted out
        log.warning(
            "platform %s: identity columns but no column mapped to consent: every user counts as consenting and is "
            "linked by them (map the platform's consent column in columns.users if it has one)",
            platform.name,
        )
    # an opted-out person is never linked: their accounts stay apart
    users["link_id"] = link_ids(platform.name, u).where(consent).values
    users["consent"] = consent
    return users


def platform_items(
    batch_dir: Path,
    platform: PlatformConfig,
    config: PipelineConfig,
    item_ids: pd.DataFrame,
    present_keys: Any,
    present_rows: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A platform's unified items table from its items file, and `item_ids` (the native id of each item its
    interactions name, keys `present_keys`) completed with the file's items; refuses unknown items unless the rule
    says fill. Both engines use it."""
    present_natives = item_ids["native_id"].to_numpy()  # as given: row for row with present_keys
    items = pd.DataFrame(columns=list(ITEM_COLUMNS))
    if "items" not in platform.files:
        return items, item_ids
    it = _native(
        read_table(batch_dir / platform.files["items"], platform.format, platform.delimiter), platform, "items"
    )
    rules.check_id_length(
        _distinct(it, ("item_id",)), config.rules.max_id_length, platform.name, platform.files["items"]
    )
    rules.check_titles(it, platform.name, platform.files["items"])
    described = it.assign(native_id=it["item_id"].astype(str), item_id=canonical_item_key(it["item_id"]))
    item_ids = pd.concat(
        [item_ids, described.assign(platform=platform.name)[list(ITEM_ID_COLUMNS)]], ignore_index=True
    ).drop_duplicates("item_id", keep="first")
    items = unified_item_columns(described)
    repeats = rules.check_conflicts(items, "item_id", ["title"], platform.name, platform.files["items"])
    if repeats:
        log.info("platform %s, %s: %d repeated item row(s) dropped", platform.name, platform.files["items"], repeats)
    items = items.drop_duplicates("item_id", keep="first")
    # referential rule on the data as it came: every interaction's item is in the items file
    missing, filled_rows = rules.check_items_known(
        pd.Series(present_keys),
        items["item_id"],
        config.rules.missing_items,
        platform.name,
        platform.files["interactions"],
        rows=present_rows,
        natives=present_natives,
    )
    if missing:
        log.warning(
            "platform %s: rule missing_items=fill: %d item(s) of %d interaction(s) are not in %s; they "
            "are added without title or genres",
            platform.name,
            missing,
            filled_rows,
            platform.files["items"],
        )
    return items, item_ids


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> None:
    for name, frame in tables.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)


def _unify_platforms(
    validated: list[ValidatedBatch], config: PipelineConfig, inputs: dict[str, Inputs]
) -> dict[str, dict[str, Any]]:
    """unify_platform for every validated batch, in platform order: the one with the most rows here, the others
    meanwhile in forked processes when the batches are large (their results come back pickled)."""
    work = [(m.platform, Path(m.batch_dir), config.platform(m.platform)) for m in validated]
    files = {name: inputs[name].interactions for name, _, _ in work}
    rows = {m.platform: m.interaction_rows() for m in validated}
    largest = max(rows, key=rows.__getitem__) if rows else None
    concurrent = sum(rows.values()) >= PARALLEL_MIN_ROWS and len(work) > 1 and can_fork() and workers() > 1
    others = {
        name: Forked(unify_platform, folder, platform, config, files[name])
        for name, folder, platform in work
        if concurrent and name != largest
    }
    try:
        parts = {
            name: unify_platform(folder, platform, config, files[name])
            for name, folder, platform in work
            if name not in others
        }
        parts.update({name: other.result() for name, other in others.items()})
    finally:
        for other in others.values():  # no child outlives this stage, whatever ended it
            other.cancel()
    return {name: parts[name] for name, _, _ in work}


def link_table(users: pd.DataFrame) -> pd.DataFrame:
    """Every linkable account (a link id: the platform exports an identity column and the user consented) as
    (link_id, platform, user_id), sorted by link id so a person's accounts sit together."""
    linked = users.loc[users["link_id"].notna(), list(LINK_COLUMNS)]
    return linked.sort_values(["link_id", "platform"], kind="stable").reset_index(drop=True)


def link_counts(links: pd.DataFrame, config: PipelineConfig) -> dict[str, int]:
    """Per target: how many of its linkable users also have an account on at least one of its sources."""
    counts = {}
    for target in config.targets:
        sources = {p.name for p in config.sources_of(target.name)}
        on_source = set(links.loc[links["platform"].isin(sources), "link_id"])
        counts[target.name] = int(links.loc[links["platform"] == target.name, "link_id"].isin(on_source).sum())
    return counts


class ItemCollisionError(ValueError):
    """The same item id names different items on two platforms: aligning them would mix their interactions."""


def check_item_collisions(items: pd.DataFrame, shown: int = 3) -> None:
    """Refuse item ids that two platforms use for different titles (compared after normalisation)."""
    titles = items.assign(_title=canonical_item_key(items["title"].astype(str)))
    spread = titles.groupby("item_id")["_title"].nunique()
    clashes = spread[spread > 1].index
    if len(clashes):
        examples = (
            titles[titles["item_id"].isin(clashes[:shown])]
            .groupby("item_id")
            .apply(lambda g: dict(zip(g["_platform"], g["title"])), include_groups=False)
            .to_dict()
        )
        raise ItemCollisionError(
            f"{len(clashes)} item id(s) name different items on different platforms (rule: "
            f"an item id is one item on every platform), e.g. {examples}; give those platforms "
            "distinct item ids or an item key that tells them apart"
        )


class PandasTables:
    """The pandas engine of unify: platforms unified in this process and forked workers, tables written by pandas.
    (spark/unify.py has the Spark one: the same steps, with the interactions as a Spark DataFrame.)"""

    def platforms(
        self, validated: list[ValidatedBatch], config: PipelineConfig, inputs: dict[str, Inputs]
    ) -> dict[str, dict[str, Any]]:
        return _unify_platforms(validated, config, inputs)

    def concat(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True)

    def write_and_validate(
        self, tables: dict[str, Any], out: Path, config: PipelineConfig, layout: StateLayout
    ) -> dict[str, Any]:
        # Large tables are written by a forked process while the suite checks them (a process, not a thread: the
        # suite forks its own workers, and a fork must not copy a writer thread's locks); a refused version is
        # discarded whole.
        large = len(tables["interactions"]) >= PARALLEL_MIN_ROWS and can_fork() and workers() > 1
        writer = Forked(write_tables, tables, out) if large else None
        if writer is None:
            write_tables(tables, out)
        try:
            validation = validate_unified(tables, config, layout, out.name)
            if writer is not None:
                writer.result()
        finally:
            if writer is not None:
                writer.cancel()
        return validation


def unify(
    validated: list[ValidatedBatch],
    config: PipelineConfig,
    layout: StateLayout,
    engine: Any = None,
    data_docs: Callable[[str], None] | None = None,
) -> UnifiedVersion:
    """Unify all validated batches into lake/unified/{interactions,users,items,links}.parquet, switched in atomically.
    A batch that breaks a rule (schema/rules.py) is quarantined with the reason, as a refusal at validation is, so
    it never becomes the drift baseline of the next batch; the current version stays. `data_docs` is told the new
    version's Data Docs page (relative to the Data Docs folder) before its tables are validated, so a refused
    version's page can be found too."""
    for m in validated:
        require_landed(Path(m.batch_dir), m.platform, m.batch_id, layout)
    try:
        version = _unify(validated, config, layout, engine or PandasTables(), data_docs)
    except rules.BatchRefused as caught:
        refused = named_as_in_file(caught, config)
        batch = next((m for m in validated if m.platform == refused.platform), None)
        holds = batch is not None and refused_in_own_files(batch, caught, config)
        if batch is not None and not holds:
            log.error(
                "%s; this run's batch %s breaks no rule on its own: the rows come from partitions landed before "
                "(alone, with this run's, or with this run's %s); nothing quarantined; the partitions read are "
                "under %s",
                refused,
                batch.batch_id,
                "users and items files" if refused.rule in CROSS_FILE_RULES else "partitions",
                layout.landing / batch.platform,
            )
        elif batch is not None and Path(batch.batch_dir).exists():
            summary = {
                "platform": batch.platform,
                "batch_id": batch.batch_id,
                "success": False,
                "stage": "unify",
                "rule": refused.rule,
                "critical": [str(refused)],
                "validation": batch.validation.to_xcom(),
            }
            where = quarantine(Path(batch.batch_dir), layout, batch.platform, batch.batch_id, summary)
            log.error("%s; batch quarantined in %s", refused, where)
        if refused is caught:
            raise
        raise refused from caught
    # an interval pulled again: its earlier copy is removed once a unified version has read the new one
    for m in validated:
        if config.platform(m.platform).pull.mode == "incremental":
            for older in shadowed(layout, m.platform):
                log.info(
                    "platform %s: %s removed from landing (a later pull of its days replaced it)",
                    m.platform,
                    older.name,
                )
                shutil.rmtree(older, ignore_errors=True)
    return version


# rules that read the interactions against the batch's users or items file
CROSS_FILE_RULES = ("missing_items", "missing_users")


def refused_in_own_files(batch: ValidatedBatch, refused: rules.BatchRefused, config: PipelineConfig) -> bool:
    """Whether the run's own batch breaks the rule. A snapshot's batch is all its platform's data. An incremental
    platform's interactions are every partition landed so far: a run without an interval lands none of them, and
    one with an interval is checked again on its own partitions alone, so that a bad day landed before never
    sends each later run's good day to quarantine."""
    files = {f.file for f in batch.files}
    if refused.file not in {name.split("/")[-1] for name in files}:
        return False
    platform = config.platform(batch.platform)
    if platform.pull.mode == "snapshot" or refused.file != platform.files.get("interactions"):
        return True
    own = [Path(batch.batch_dir) / f.file for f in batch.files if f.table == "interactions"]
    try:
        unify_platform(Path(batch.batch_dir), platform, config, own)
    except rules.BatchRefused:  # its own partitions break a rule (this one or another): its batch is at fault
        return True
    return False


def named_as_in_file(refused: rules.BatchRefused, config: PipelineConfig) -> rules.BatchRefused:
    """The refusal with its columns named as the platform's file names them (the rules run on columns renamed to
    the unified schema): "learner (user_id)" where the file calls its user column `learner`."""
    platform = next((p for p in config.platforms if p.name == refused.platform), None)
    table = next((t for t, f in platform.files.items() if f == refused.file), None) if platform else None
    if refused.column is None or platform is None or table is None:
        return refused
    unified = [c.strip() for c in refused.column.split(",")]
    native = [native_column(platform, table, c) or c for c in unified]
    if native == unified:
        return refused
    column = ", ".join(n if n == c else f"{n} ({c})" for n, c in zip(native, unified))
    return rules.BatchRefused(refused.platform, refused.file, column, refused.rule, refused.detail)


def _previous_rows(layout: StateLayout) -> dict[str, int]:
    """Interactions per platform in the current unified version (none yet: empty)."""
    manifest = layout.unified / "current" / "manifest.json"
    if not manifest.exists():
        return {}
    platforms = json.loads(manifest.read_text()).get("platforms", {})
    return {name: int(counts.get("rows_out", 0)) for name, counts in platforms.items()}


def _unify(
    validated: list[ValidatedBatch],
    config: PipelineConfig,
    layout: StateLayout,
    engine: Any,
    data_docs: Callable[[str], None] | None = None,
) -> UnifiedVersion:
    inputs = {m.platform: landed_inputs(m, config.platform(m.platform), layout) for m in validated}
    parts = engine.platforms(validated, config, inputs)
    previous = _previous_rows(layout)
    for name, part in parts.items():
        platform = config.platform(name)
        if platform.pull.mode == "snapshot":
            rules.check_shrink(
                part["counts"]["rows_out"],
                previous.get(name),
                platform.drift.volume_factor,
                name,
                platform.files["interactions"],
            )
    # each platform's rows are dropped as soon as they are in the concatenation
    interactions = engine.concat([p.pop("interactions") for p in parts.values()])
    users = pd.concat(
        [p["users"] for p in parts.values() if len(p["users"])] or [pd.DataFrame(columns=list(USER_COLUMNS))],
        ignore_index=True,
    )
    items = pd.concat(
        [p["items"].assign(_platform=name) for name, p in parts.items() if len(p["items"])]
        or [pd.DataFrame(columns=[*ITEM_COLUMNS, "_platform"])],
        ignore_index=True,
    )
    check_item_collisions(items)
    items = items.drop(columns="_platform")
    # Items named only by interactions (a platform without an items file, or rules.missing_items: fill; with
    # `refuse` a platform's own items file was checked above) get a row with the id as title: counted and logged.
    seen = (
        pd.unique(np.concatenate([np.asarray(p["item_keys"], dtype=object) for p in parts.values()]))
        if parts
        else np.array([], dtype=object)
    )
    missing = np.sort(seen[~is_member(seen, items["item_id"])]) if len(seen) else seen
    if len(missing):
        log.warning(
            "rule missing_items: %d item(s) named only by interactions get a row with the id as title and no "
            "year or genres, e.g. %s",
            len(missing),
            rules.shown(missing),
        )
        items = pd.concat(
            [items, pd.DataFrame({"item_id": missing, "title": missing, "year": pd.NA, "genres": ""})],
            ignore_index=True,
        )
    items = items.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    items["year"] = items["year"].astype("Int64")

    item_ids = pd.concat(
        [p["item_ids"] for p in parts.values()] or [pd.DataFrame(columns=list(ITEM_ID_COLUMNS))], ignore_index=True
    ).sort_values(["platform", "item_id"], kind="stable", ignore_index=True)
    links = link_table(users)
    linked_to_sources = link_counts(links, config)
    counts = {}
    for name, part in parts.items():
        # a target's items shared with its own sources (a source's: with every source)
        family = config.sources_of(name) if config.platform(name).role == "target" else config.sources
        source_items = set().union(*(parts[p.name]["item_keys"] for p in family if p.name in parts))
        counts[name] = {
            **part["counts"],
            "items_shared_with_source": len(set(part["item_keys"]) & source_items),
            "linked_users": int((links["platform"] == name).sum()),
        }
        if name in linked_to_sources:
            counts[name]["users_linked_to_a_source"] = linked_to_sources[name]
        log.info("unified %s: %s", name, counts[name])
    final = layout.unified / "current"
    with atomic_dir(final) as out:
        if data_docs is not None:
            try:
                data_docs(data_docs_page("unified", out.name))
            except Exception:  # a link for the UI; unification must not fail for want of it
                log.warning("could not record the unified version's Data Docs page for its link", exc_info=True)
        tables = {"interactions": interactions, "users": users, "items": items, "links": links, "item_ids": item_ids}
        validation = engine.write_and_validate(tables, out, config, layout)
        # Downstream stages read this exact version (dir), even if a later run switches "current" meanwhile.
        manifest = UnifiedVersion(
            dir=str(out),
            current=str(final),
            platforms=counts,
            batches={m.platform: m.batch_id for m in validated},
            hashes={name: read.hashes for name, read in inputs.items()},
            validation=validation,
            partial_users=sorted(
                m.platform for m in validated if config.platform(m.platform).users_export == "partial"
            ),
        )
        (out / "manifest.json").write_text(json.dumps(manifest.to_xcom(), indent=2))
    return manifest
