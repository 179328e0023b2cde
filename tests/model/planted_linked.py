"""A planted world of linked people: each person has a taste group; on every platform they use, they pick mostly
items of their group. Catalogues are disjoint, so a newcomer's target items can be found only through their
source histories (and the people who use both platforms)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.synthetic import registry_settings

GROUPS = 4


@dataclass
class PlantedPeople:
    sources: dict[str, sp.csr_matrix]
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    new: np.ndarray  # people new to the target (all their target rows in test)
    group: np.ndarray


def _histories(
    rng: np.random.Generator, group: np.ndarray, n_items: int, per_person: int, on: np.ndarray, own_share: float
):
    rows, cols = [], []
    block = n_items // GROUPS
    for person in np.flatnonzero(on):
        own = rng.random(per_person) < own_share
        items = np.where(
            own, group[person] * block + rng.integers(0, block, per_person), rng.integers(0, n_items, per_person)
        )
        rows += [person] * per_person
        cols += list(items)
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(group), n_items))
    return (matrix > 0).astype(np.float64).tocsr()


def planted_people(seed: int = 0, people: int = 800, new_share: float = 0.3, source_items: int = 4) -> PlantedPeople:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, GROUPS, people)
    on_target = rng.random(people) < 0.6
    # short, noisy source histories: one source alone leaves a person's taste uncertain, two say more
    sources = {
        name: _histories(rng, group, 60, source_items, rng.random(people) < 0.7, 0.6) for name in ("books", "films")
    }
    target = _histories(rng, group, 48, 10, on_target, 0.8).tolil()
    new = np.flatnonzero(on_target & (rng.random(people) < new_share))
    splits = {s: sp.lil_matrix(target.shape) for s in ("train", "valid", "test")}
    for person in np.flatnonzero(on_target):
        items = np.array(target.rows[person])
        if person in set(new):
            splits["test"][person, items] = 1
            continue
        order = rng.permutation(items)
        splits["valid"][person, order[:1]] = 1
        splits["test"][person, order[1:3]] = 1
        splits["train"][person, order[3:]] = 1
    return PlantedPeople(sources, *(splits[s].tocsr() for s in ("train", "valid", "test")), new=new, group=group)


def shuffled_links(matrix: sp.csr_matrix, seed: int) -> sp.csr_matrix:
    """The same histories matched to the wrong people."""
    return matrix[np.random.default_rng(seed).permutation(matrix.shape[0])]


def scrambled_items(matrix: sp.csr_matrix, seed: int) -> sp.csr_matrix:
    """Each interaction's item replaced by a random one: the right people, meaningless items."""
    coo = matrix.tocoo()
    cols = np.random.default_rng(seed).integers(0, matrix.shape[1], len(coo.col))
    return (sp.csr_matrix((coo.data, (coo.row, cols)), shape=matrix.shape) > 0).astype(np.float64).tocsr()


def export_platforms(world: PlantedPeople, folder: Path, target: str = "shop", seed: int = 0) -> dict[str, Any]:
    """Write the world as three platforms' export files (each with native user and item ids of its own, and an
    `email` column: the only link between them) and return the config dict for them (bench.synthetic's form). The
    target's whole history is exported: the pipeline's features stage splits it."""
    rng = np.random.default_rng(seed)
    whole = {**world.sources, target: world.train + world.valid + world.test}
    platforms = []
    for name, matrix in whole.items():
        pdir = folder / name
        pdir.mkdir(parents=True, exist_ok=True)
        # native ids numbered in a platform's own order: nothing aligns by id
        number = rng.permutation(matrix.shape[0])
        coo = sp.coo_matrix(matrix)
        pd.DataFrame(
            {
                "uid": [f"{name[0]}{number[r]}" for r in coo.row],
                "item": [f"{name}-{c}" for c in coo.col],
                "rating": 4,
                "ts": 1_600_000_000 + rng.integers(0, 10_000_000, len(coo.row)),
            }
        ).to_csv(pdir / "interactions.tsv", sep="\t", index=False)
        present = np.flatnonzero(np.diff(matrix.indptr) > 0)
        pd.DataFrame(
            {
                "uid": [f"{name[0]}{number[r]}" for r in present],
                "email": [f"Person{r}@Example.org" for r in present],
                "age": rng.integers(16, 70, len(present)),
                "gender": rng.choice(["M", "F"], len(present)),
                "occupation": rng.choice(["student", "engineer", "teacher", "other"], len(present)),
            }
        ).to_csv(pdir / "users.tsv", sep="\t", index=False)
        block = matrix.shape[1] // GROUPS
        pd.DataFrame(
            {
                "item": [f"{name}-{c}" for c in range(matrix.shape[1])],
                "title": [f"{name.title()} {c}" for c in range(matrix.shape[1])],
                "topic": [f"kind {c // block}" for c in range(matrix.shape[1])],
            }
        ).to_csv(pdir / "items.tsv", sep="\t", index=False)
        platforms.append(
            {
                "name": name,
                "role": "target" if name == target else "source",
                "location": str(pdir),
                "format": "tsv",
                "delimiter": "\t",
                "files": {"interactions": "interactions.tsv", "users": "users.tsv", "items": "items.tsv"},
                "rating_scale": [1, 5],
                "columns": {
                    "interactions": {"uid": "user_id", "item": "item_id", "rating": "rating", "ts": "timestamp"},
                    "users": {
                        "uid": "user_id",
                        "email": "email",
                        "age": "age",
                        "gender": "gender",
                        "occupation": "occupation",
                    },
                    "items": {"item": "item_id", "title": "title", "topic": "genres"},
                },
                "value_maps": {"age": "age_years", "occupation": "synthetic_occupation"},
            }
        )
    return {"platforms": platforms, **registry_settings(folder)}
