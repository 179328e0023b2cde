"""A planted world of linked people: each person has a taste group; on every platform they use, they pick mostly
items of their group. Catalogues are disjoint, so a newcomer's target items can be found only through their
source histories (and the people who use both platforms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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


def planted_people(seed: int = 0, people: int = 800, new_share: float = 0.3) -> PlantedPeople:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, GROUPS, people)
    on_target = rng.random(people) < 0.6
    # short, noisy source histories: one source alone leaves a person's taste uncertain, two say more
    sources = {name: _histories(rng, group, 60, 4, rng.random(people) < 0.7, 0.6) for name in ("books", "films")}
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
