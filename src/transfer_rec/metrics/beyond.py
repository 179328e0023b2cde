"""Beyond accuracy: catalogue coverage, genre diversity and novelty of top-K lists. `ranked` is always (users x K)
item indices, best first, as ranking.top_k returns them; -1 is an empty place (a list shorter than K), which counts
as no item."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def catalogue_coverage(ranked: np.ndarray, candidates: np.ndarray) -> float:
    """Share of the candidate items that appear in at least one user's top-K."""
    candidates = np.asarray(candidates, dtype=bool)
    if not candidates.any():
        return 0.0
    shown = np.zeros(len(candidates), dtype=bool)
    shown[np.unique(ranked[ranked >= 0])] = True
    return float((shown & candidates).sum() / candidates.sum())


def genre_matrix(genres: list[str] | np.ndarray, separator: str = "|") -> np.ndarray:
    """Items x genres booleans from '|'-joined genre tokens (an item with an empty string has no genre)."""
    tokens = [set(t for t in str(g or "").split(separator) if t) for g in genres]
    vocabulary = sorted(set().union(*tokens)) if tokens else []
    column = {g: j for j, g in enumerate(vocabulary)}
    matrix = np.zeros((len(tokens), max(1, len(vocabulary))), dtype=bool)
    for i, item_tokens in enumerate(tokens):
        matrix[i, [column[t] for t in item_tokens]] = True
    return matrix


def intra_list_diversity(ranked: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """Per user: mean Jaccard distance between the genre sets of every pair of items in the top-K.

    A pair where neither item has a genre counts as distance 0 (nothing shows they differ); a list of one item is 0.
    """
    k = ranked.shape[1]
    if k < 2:
        return np.zeros(ranked.shape[0])
    listed = ranked >= 0
    sets = genres[np.where(listed, ranked, 0)].astype(np.float32)  # users x K x genres
    inter = np.einsum("ukg,ulg->ukl", sets, sets)
    sizes = sets.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    distance = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    distance = 1.0 - distance
    upper = np.triu_indices(k, 1)
    pairs = listed[:, upper[0]] & listed[:, upper[1]]
    total = (distance[:, upper[0], upper[1]] * pairs).sum(axis=1, dtype=np.float64)
    return np.divide(total, pairs.sum(axis=1), out=np.zeros(len(total)), where=pairs.any(axis=1))


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Share of users with each item in their train history, add-one smoothed so unseen items stay finite."""
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    return (counts + 1.0) / (train.shape[0] + 1.0)


def novelty(ranked: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per user: mean self-information -log2(popularity) of the recommended items (higher = less obvious); 0 for an
    empty list."""
    listed = ranked >= 0
    information = np.where(listed, -np.log2(popularity[np.where(listed, ranked, 0)]), 0.0)
    count = listed.sum(axis=1)
    return np.divide(information.sum(axis=1), count, out=np.zeros(len(count)), where=count > 0)
