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

from transfer_rec.io.linked_world import PLATFORMS, WorldOptions, counts, cut_world, load_ml_1m


def recbole_split(n: int) -> tuple[int, int, int]:
    """RecBole's 80/10/10 rounding: valid and test floor(0.1 n), one row each below 10 rows."""
    held = n // 10 if n >= 10 else 1
    return n - 2 * held, held, held


def build_world(
    out: Path,
    target: str,
    seed: int,
    target_keep: float = 0.25,
    source_drop: float = 0.3,
    new_share: float = 0.3,
    cache: Path | None = None,
) -> dict[str, Any]:
    try:
        options = WorldOptions(target, seed, target_keep, source_drop)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    out.mkdir(parents=True, exist_ok=True)
    platforms: dict[str, Any] = {}
    registry = []
    for cut, rng in cut_world(load_ml_1m(cache or out / ".ml-1m"), options):
        name = cut.name
        cut.users.to_csv(out / f"{name}_users.tsv", sep="\t", index=False)
        cut.items.to_csv(out / f"{name}_items.tsv", sep="\t", index=False)
        files = {"users": f"{name}_users.tsv", "items": f"{name}_items.tsv"}
        platforms[name] = counts(cut)
        if name == target:
            splits = split_target(cut.interactions, rng, new_share)
            for split, frame in splits.items():
                frame.to_csv(out / f"target_{split}.tsv", sep="\t", index=False)
            platforms[name]["new_users"] = len(set(cut.interactions["user_id"]) - set(splits["train"]["user_id"]))
        else:
            cut.interactions.to_csv(out / f"source_{name}.tsv", sep="\t", index=False)
            files["interactions"] = f"source_{name}.tsv"
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
        "platforms": platforms,
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
