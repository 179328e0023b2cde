"""Rules a platform's batch must meet as it came, checked before unification fills anything in or drops anything.

Each rule has a name (config `rules:` sets its bound) and a refusal names the platform, the file, the column, the
rule, how many rows break it and a few examples, cut short: a message never quotes a whole input.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import pandas as pd

EXAMPLES = 3
MIN_SHARE_ROWS = 100
EXAMPLE_CHARS = 40


class BatchRefused(ValueError):
    """A batch breaks a rule of its own data; it is quarantined with this message and changes nothing downstream."""

    def __init__(self, platform: str, file: str, column: str | None, rule: str, detail: str) -> None:
        self.platform, self.file, self.column, self.rule, self.detail = platform, file, column, rule, detail
        where = f"{file}, column {column!r}" if column else file
        super().__init__(f"platform {platform}, {where}: rule {rule}: {detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None, str, str]]:
        # rebuilt from its parts: a refusal raised in a forked unify worker reaches the stage as itself
        return (BatchRefused, (self.platform, self.file, self.column, self.rule, self.detail))


def shown(values: Iterable[Any], limit: int = EXAMPLES) -> str:
    """A few values, each cut to EXAMPLE_CHARS characters (with its length when cut)."""
    out = []
    for value in list(values)[:limit]:
        text = str(value)
        out.append(repr(text) if len(text) <= EXAMPLE_CHARS else f"{text[:EXAMPLE_CHARS]!r}... ({len(text):,} chars)")
    return ", ".join(out)


def check_id_length(ids: dict[str, pd.Series], limit: int, platform: str, file: str) -> None:
    """Refuse ids longer than `limit` characters (rule max_id_length); `ids`: each id column's distinct values."""
    for column, values in ids.items():
        text = values.astype(str)
        long = text[text.str.len() > limit]
        if len(long):
            raise BatchRefused(
                platform,
                file,
                column,
                "max_id_length",
                f"{len(long):,} row(s) have an id longer than {limit} characters, e.g. {shown(long.unique())}",
            )


# A user id holding an e-mail address or a phone number: a raw identity would be the model's key for that person,
# and reach its logs, artifacts and published lists. Searched for in both engines (Python's re.search, Spark's
# rlike): an address anywhere in the id (" a@b.org", "a@b.org|old") with a domain that ends in letters
# ("learner-17@v2.1" is no address); a phone as the whole id, written with its international "+" and at least 7
# digits ("+44 7700 900123"). A bare number is no phone here: numeric ids are the commonest opaque ids there are.
# [^@ \t\r\n] and [ ().-]: the same characters in Python's and Java's regex; (?![\s\S]) is the end of the id in
# both (Java's $ also matches before a final \u2028 or \u0085, Python's does not).
EMAIL_ID_PATTERN = r"[^@ \t\r\n]+@[^@ \t\r\n]+\.[A-Za-z]{2,}(?:[^A-Za-z0-9]|$)"
PHONE_ID_PATTERN = r"^[ \t]*\+[ ]*[0-9](?:[ ().-]*[0-9]){6,}[ \t\r\n]*(?![\s\S])"
IDENTITY_ID_PATTERN = f"(?:{EMAIL_ID_PATTERN})|(?:{PHONE_ID_PATTERN})"


def identity_ids(values: pd.Series) -> int:
    """How many of `values` (distinct ids) are e-mail addresses or phone numbers."""
    return int(values.astype(str).str.contains(IDENTITY_ID_PATTERN, regex=True).sum())


def check_opaque_user_ids(ids: pd.Series, platform: str, file: str) -> None:
    """Rule opaque_user_id at unification, on the distinct user ids of every landed file: partitions landed and
    validated before the rule (or before it knew phone numbers) are read again with each run's, unchecked."""
    found = identity_ids(ids)
    if found:
        raise opaque_user_id_refusal(found, platform, file, "user_id")


def opaque_user_id_refusal(found: int, platform: str, file: str, column: str) -> BatchRefused:
    """Rule opaque_user_id: `found` user ids are e-mail addresses or phone numbers. The message quotes none: they
    are identities."""
    return BatchRefused(
        platform,
        file,
        column,
        "opaque_user_id",
        f"{found:,} user id(s) are e-mail addresses or phone numbers (not shown: they are identities); export an "
        "opaque id as the user id and map the address or number to `email` or `phone` in the platform's users "
        "columns, where it becomes the salted link id",
    )


def check_duplicate_share(duplicates: int, rows: int, limit: float, platform: str, file: str) -> None:
    """Refuse a batch whose share of repeated (user, item) rows passes `limit` (rule max_duplicate_share): past a
    few, repeated rows mean a broken export, not a user who came back. Files under MIN_SHARE_ROWS rows are too small
    for a share to say anything."""
    if rows >= MIN_SHARE_ROWS and duplicates / rows > limit:
        raise BatchRefused(
            platform,
            file,
            "user_id, item_id",
            "max_duplicate_share",
            f"{duplicates:,} of {rows:,} rows ({duplicates / rows:.1%}) repeat a (user, item) pair already in the "
            f"file; at most {limit:.1%} may",
        )


def check_conflicts(frame: pd.DataFrame, key: str, columns: Iterable[str], platform: str, file: str) -> int:
    """Refuse a key listed twice with different values (rule one_row_per_<key>); exact repeats are harmless and
    counted (returned) for the caller to drop and log."""
    columns = [c for c in columns if c in frame]
    repeated = frame[frame.duplicated(key, keep=False)]
    if repeated.empty:
        return 0
    distinct = repeated.drop_duplicates([key, *columns])
    conflicting = distinct[distinct.duplicated(key, keep=False)]
    if len(conflicting):
        keys = conflicting[key].unique()
        first = conflicting[conflicting[key] == keys[0]]
        differ = [c for c in columns if first[c].astype(str).nunique(dropna=False) > 1]
        raise BatchRefused(
            platform,
            file,
            key,
            f"one_row_per_{key}",
            f"{len(keys):,} {key}(s) are listed more than once with different values, e.g. {shown(keys)} "
            f"(differing in {', '.join(differ) or 'values'}); keep one row per {key}",
        )
    return int(len(repeated) - repeated[key].nunique())


def check_titles(items: pd.DataFrame, platform: str, file: str, column: str = "title") -> None:
    """Refuse items without a title (rule item_has_title)."""
    if column not in items:
        return
    empty = items[items[column].isna() | (items[column].astype(str).str.strip() == "")]
    if len(empty):
        raise BatchRefused(
            platform,
            file,
            column,
            "item_has_title",
            f"{len(empty):,} of {len(items):,} items ({len(empty) / len(items):.1%}) have an empty title, e.g. item "
            f"id(s) {shown(empty['item_id'].unique())}",
        )


def check_items_known(
    interaction_items: pd.Series,
    item_ids: pd.Series,
    policy: str,
    platform: str,
    file: str,
    rows: Any = None,
    natives: Any = None,
) -> tuple[int, int]:
    """Interactions whose item the platform's items file lacks (rule missing_items). `interaction_items`: the
    distinct item keys the interactions name, with `rows` the interactions naming each and `natives` each one's id
    as the file gives it (shown in the message). `refuse`: the batch is refused; `fill`: returned as (items,
    interactions) for the caller to fill in and log."""
    missing = ~interaction_items.isin(set(item_ids)).to_numpy()
    if not missing.any():
        return 0, 0
    count = int(missing.sum())
    interactions = int(np.asarray(rows)[missing].sum()) if rows is not None else count
    shown_ids = np.asarray(natives if natives is not None else interaction_items)[missing]
    if policy == "refuse":
        raise BatchRefused(
            platform,
            file,
            "item_id",
            "missing_items",
            f"{interactions:,} interaction(s) name {count:,} item(s) the items file lacks, e.g. {shown(shown_ids)} "
            "(config rules.missing_items: fill adds them without title or genres)",
        )
    return count, interactions


def check_vocabulary(
    unified: pd.Series, native: pd.Series, allowed: Collection[str], platform: str, file: str, column: str
) -> None:
    """Refuse profile values that are outside the shared vocabulary once mapped (rule profile_vocabulary): the
    platform exports a value its value map (or the shared labels) does not foresee. `unified`: the mapped values,
    `native`: the file's, row for row."""
    outside = unified.notna() & ~unified.astype(str).isin(set(allowed))
    if outside.any():
        raise BatchRefused(
            platform,
            file,
            column,
            "profile_vocabulary",
            f"{int(outside.sum()):,} user(s) have a value outside the shared vocabulary {sorted(allowed)} once mapped, "
            f"e.g. {shown(sorted(set(native[outside.to_numpy()].astype(str))))} (map them in config value_maps)",
        )


def check_users_known(missing: Collection[Any], interactions: int, platform: str, file: str) -> None:
    """Refuse interactions of users the platform's users file lacks (rule missing_users; only for a platform that
    exports users): the unified tables keep a profile for every user who has one, so the users export is behind
    the interactions or names them otherwise. `missing`: those users' ids; `interactions`: how many rows they have."""
    if len(missing):
        raise BatchRefused(
            platform,
            file,
            "user_id",
            "missing_users",
            f"{interactions:,} interaction(s) name {len(missing):,} user(s) the users file lacks, e.g. "
            f"{shown(sorted(map(str, missing)))} (export the users file together with the interactions)",
        )


def check_shrink(rows: int, previous: int | None, factor: float, platform: str, file: str) -> None:
    """Refuse a batch that would shrink the platform's unified table below previous / factor (rule shrink; the
    platform's drift.volume_factor, 0 = off)."""
    if previous and factor and rows < previous / factor:
        raise BatchRefused(
            platform,
            file,
            None,
            "shrink",
            f"unification keeps {rows:,} interactions where the current version has {previous:,} (more than "
            f"{factor:g}x fewer: drift.volume_factor); the current version stays",
        )
