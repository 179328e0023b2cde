"""A seeded generator of platforms with a planted shared structure, for tests and scale runs.

Items live in a latent taste space shared by all platforms; each platform sees part of the catalogue (partial
overlap) and has its own users, so knowledge learned on one platform is genuinely useful on another. Each platform
exports in its own native schema, and faults can be injected to exercise validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

TOPICS = ["math", "physics", "biology", "history", "art", "music", "coding", "languages"]
FAULTS = ("nulls", "blank_timestamps", "out_of_range", "missing_column", "pii_column", "empty_file", "non_utf8")


@dataclass
class SyntheticPlatform:
    name: str
    role: str
    users: int
    interactions_per_user: int
    catalogue_share: float = 1.0
    # native schema: column names for (user, item, rating, timestamp)
    columns: tuple[str, str, str, str] = ("user_id", "item_id", "rating", "timestamp")
    delimiter: str = "\t"
    faults: list[str] = field(default_factory=list)


OCCUPATIONS = ["student", "engineer", "teacher", "other"]
AGE_EDGES = [18, 25, 35, 45, 50, 56]


def generate(
    folder: Path,
    platforms: list[SyntheticPlatform],
    n_items: int = 300,
    dim: int = 8,
    seed: int = 0,
    permute_target_items: bool = False,
    profile_taste: float = 0.0,
) -> dict[str, Any]:
    """Write each platform's export files under folder/<platform>/ and return a config dict for them.

    permute_target_items relabels the target platforms' item ids at random: the same ids then mean different
    items on each platform, which destroys the shared structure (a control for transfer tests).
    profile_taste > 0 plants a profile -> taste structure shared by all platforms: a user's taste vector is
    profile_taste * (effect of their age bucket + gender + occupation) plus their own part (0 keeps the old data).
    """
    rng = np.random.default_rng(seed)
    item_vectors = rng.normal(size=(n_items, dim))
    item_pop = rng.normal(scale=0.5, size=n_items)
    item_topic = rng.integers(0, len(TOPICS), size=n_items)
    # a separate stream, so that profile_taste = 0 leaves every other draw as it was
    profile_rng = np.random.default_rng(seed + 7919)
    effects = {
        "age": profile_rng.normal(size=(len(AGE_EDGES) + 1, dim)),
        "gender": profile_rng.normal(size=(2, dim)),
        "occupation": profile_rng.normal(size=(len(OCCUPATIONS), dim)),
    }
    config_platforms = []
    for platform in platforms:
        pdir = folder / platform.name
        pdir.mkdir(parents=True, exist_ok=True)
        visible = np.sort(rng.choice(n_items, size=int(n_items * platform.catalogue_share), replace=False))
        names = np.array([f"course-{i:05d}" for i in range(n_items)])
        if permute_target_items and platform.role == "target":
            names = names[rng.permutation(n_items)]
        user_vectors = rng.normal(size=(platform.users, dim))
        profile = {
            "age": profile_rng.integers(16, 70, size=platform.users),
            "gender": profile_rng.integers(0, 2, size=platform.users),
            "occupation": profile_rng.integers(0, len(OCCUPATIONS), size=platform.users),
        }
        if profile_taste > 0:
            planted = (
                effects["age"][np.searchsorted(AGE_EDGES, profile["age"], side="right")]
                + effects["gender"][profile["gender"]]
                + effects["occupation"][profile["occupation"]]
            )
            user_vectors = profile_taste * planted + user_vectors
        rows = []
        for u in range(platform.users):
            logits = user_vectors[u] @ item_vectors[visible].T / np.sqrt(dim) * 2.5 + item_pop[visible]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            n = min(len(visible), max(5, int(rng.poisson(platform.interactions_per_user))))
            chosen = rng.choice(visible, size=n, replace=False, p=p)
            ts = np.sort(rng.integers(1_600_000_000, 1_700_000_000, size=n))
            for item, t in zip(chosen, ts):
                affinity = user_vectors[u] @ item_vectors[item] / np.sqrt(dim)
                rating = int(np.clip(np.round(3.5 + affinity + rng.normal(scale=0.5)), 1, 5))
                rows.append((f"{platform.name[:2]}{u}", names[item], rating, int(t)))
        ucol, icol, rcol, tcol = platform.columns
        inter = pd.DataFrame(rows, columns=[ucol, icol, rcol, tcol])
        users = pd.DataFrame(
            {
                "uid": [f"{platform.name[:2]}{u}" for u in range(platform.users)],
                "age": rng.integers(16, 70, size=platform.users),
                "gender": rng.choice(["M", "F"], size=platform.users),
                "occupation": rng.choice(OCCUPATIONS, size=platform.users),
            }
        )
        if profile_taste > 0:
            users["age"] = profile["age"]
            users["gender"] = np.array(["M", "F"])[profile["gender"]]
            users["occupation"] = np.array(OCCUPATIONS)[profile["occupation"]]
        # titles follow the ids: in the permuted control the same id is the same course by its metadata too
        items = pd.DataFrame(
            {
                "item_key": names[visible],
                "title": [n.replace("course-", "Course ") for n in names[visible]],
                "topic": [TOPICS[t] for t in item_topic[visible]],
            }
        )
        inter = _inject(inter, platform, rng)
        if "duplicate_items" in platform.faults:  # a warning, not a stop: the unifier keeps the first row
            items = pd.concat([items, items.head(2)], ignore_index=True)
        sep = platform.delimiter
        inter_file = pdir / "interactions.txt"
        if "empty_file" in platform.faults:
            inter_file.write_bytes(b"")
        else:
            inter.to_csv(inter_file, sep=sep, index=False)
        if "non_utf8" in platform.faults:
            with open(inter_file, "ab") as fh:
                fh.write(f"{platform.name[:2]}0{sep}caf\xe9{sep}4{sep}1650000000\n".encode("latin-1"))
        users.to_csv(pdir / "users.txt", sep=sep, index=False)
        items.to_csv(pdir / "items.txt", sep=sep, index=False)
        config_platforms.append(
            {
                "name": platform.name,
                "role": platform.role,
                "location": str(pdir),
                "format": "tsv" if sep == "\t" else "csv",
                "delimiter": sep,
                "files": {"interactions": "interactions.txt", "users": "users.txt", "items": "items.txt"},
                "rating_scale": [1, 5],
                "columns": {
                    "interactions": {ucol: "user_id", icol: "item_id", rcol: "rating", tcol: "timestamp"},
                    "users": {"uid": "user_id", "age": "age", "gender": "gender", "occupation": "occupation"},
                    "items": {"item_key": "item_id", "title": "title", "topic": "genres"},
                },
                "value_maps": {"age": "age_years", "occupation": "synthetic_occupation"},
            }
        )
    return {"platforms": config_platforms, **registry_settings(folder)}


def registry_settings(folder: Path) -> dict[str, Any]:
    """The config sections generated platforms share: where they may be pulled from, and the shared vocabularies and
    value maps their profile columns use (`age_years`, `synthetic_occupation`)."""
    return {
        "allowed_locations": [str(folder), "s3://"],
        "vocabularies": {
            "age": ["under-18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"],
            "occupation": ["student", "engineer", "educator", "other"],
        },
        "value_maps": {
            "synthetic_occupation": {
                "student": "student",
                "engineer": "engineer",
                "teacher": "educator",
                "other": "other",
            }
        },
    }


def _inject(inter: pd.DataFrame, platform: SyntheticPlatform, rng: np.random.Generator) -> pd.DataFrame:
    ucol, icol, rcol, tcol = platform.columns
    inter = inter.copy()
    if "nulls" in platform.faults:
        inter[ucol] = inter[ucol].astype(object)
        inter.loc[inter.sample(3, random_state=1).index, ucol] = None
    if "blank_timestamps" in platform.faults:
        inter[tcol] = inter[tcol].astype(object)
        inter.loc[inter.sample(3, random_state=3).index, tcol] = None
    if "out_of_range" in platform.faults:
        inter.loc[inter.sample(3, random_state=2).index, rcol] = 11
    if "duplicates" in platform.faults:
        inter = pd.concat([inter, inter.head(5)], ignore_index=True)
    if "missing_column" in platform.faults:
        inter = inter.drop(columns=[rcol])
    if "pii_column" in platform.faults:
        inter["password"] = "hunter2"
    return inter


def write_config(path: Path, generated: dict[str, Any], **sections: Any) -> Path:
    """A pipeline config for generated platforms (extra sections, e.g. training=..., override the defaults)."""
    path.write_text(yaml.safe_dump({**generated, **sections}, sort_keys=False))
    return path


def partition_by_day(
    export_dir: Path, file: str, timestamp_column: str, partition: str = "dt={date}", delimiter: str = "\t"
) -> list[str]:
    """Re-export a platform's interactions file as one file per day (UTC) of its timestamps, in folders named by
    `partition`, as an incrementally pulled platform exports them; the unpartitioned file is removed. Returns the
    partition folder names, oldest first."""
    frame = pd.read_csv(export_dir / file, sep=delimiter, dtype=str)
    days = pd.to_datetime(pd.to_numeric(frame[timestamp_column]), unit="s", utc=True).dt.strftime("%Y-%m-%d")
    folders = []
    for day, part in frame.groupby(days, sort=True):
        folder = partition.format(date=day)
        (export_dir / folder).mkdir(parents=True, exist_ok=True)
        part.to_csv(export_dir / folder / file, sep=delimiter, index=False)
        folders.append(folder)
    (export_dir / file).unlink()
    return folders
