"""Ranking metrics with binary relevance, as defined in the benchmark protocol (kept apart from the models)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("ndcg", "recall", "hit", "mrr", "precision")


def top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
          candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best items per row, best first; excluded and non-candidate items never appear."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if candidates is not None:
        scores[:, ~candidates] = -np.inf
    if exclude is not None:
        rows, cols = exclude.nonzero()
        scores[rows, cols] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def per_user_metrics(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Metric values per row of `ranked` (top-k item indices) against `relevant` (rows with >= 1 relevant item)."""
    relevant = relevant.tocsr()
    ranked = ranked[:, :k]
    # one lookup for all users (a per-user loop cost ~40 ms per call on 750 users): (row, item) pairs as flat keys
    width = max(relevant.shape[1], int(ranked.max(initial=-1)) + 1)
    rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    keys = np.arange(ranked.shape[0], dtype=np.int64)[:, None] * width + ranked
    hits = np.isin(keys, rows * width + relevant.indices)
    n_relevant = np.diff(relevant.indptr).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])[
        np.minimum(n_relevant, k).astype(np.int64)]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    n_hits = hits.sum(axis=1)
    return {
        "ndcg": np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0),
        "recall": np.divide(n_hits, n_relevant, out=np.zeros(len(n_hits)), where=n_relevant > 0),
        "hit": (n_hits > 0).astype(np.float64),
        "mrr": np.divide(1.0, first, out=np.zeros(len(first)), where=first > 0),
        "precision": n_hits / k,
    }


def item_segment_hits(ranked: np.ndarray, relevant: sp.csr_matrix,
                      segments: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per item segment (a boolean mask over items): how many relevant (row, item) pairs fall in it, and the share
    of them whose item is in that row's top-k (`ranked`): which kinds of items a recommender finds."""
    relevant = relevant.tocsr()
    width = max(relevant.shape[1], int(ranked.max(initial=-1)) + 1)
    rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    found = np.isin(rows * width + relevant.indices,
                    (np.arange(ranked.shape[0], dtype=np.int64)[:, None] * width + ranked).ravel())
    out = {}
    for name, mask in segments.items():
        inside = np.asarray(mask, dtype=bool)[relevant.indices]
        count = int(inside.sum())
        out[name] = {"relevant": count, "found": float(found[inside].mean()) if count else 0.0}
    return out


def evaluate_scores(scores: np.ndarray, exclude: sp.csr_matrix, test: sp.csr_matrix, k: int,
                    candidates: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics over the users that have at least one test item."""
    users = np.flatnonzero(np.diff(test.tocsr().indptr) > 0)
    ranked = top_k(scores[users], k, exclude[users], candidates)
    return per_user_metrics(ranked, test[users], k)


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) if len(values) else 0.0 for name, values in per_user.items()}


def bootstrap_means(values: np.ndarray, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of `samples` bootstrap resamples of the users (one value per user)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(samples)
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile confidence interval of the mean over users."""
    means = bootstrap_means(values, samples, seed)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_lower_bound(candidate: np.ndarray, reference: np.ndarray, samples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> float:
    """One-sided lower confidence bound of mean(candidate - reference) over the same users (paired bootstrap)."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return float(np.percentile(bootstrap_means(diff, samples, seed), (1 - level) * 100))


# Beyond accuracy. `ranked` is always (users x K) item indices, best first, as top_k returns them.

def catalogue_coverage(ranked: np.ndarray, candidates: np.ndarray) -> float:
    """Share of the candidate items that appear in at least one user's top-K."""
    candidates = np.asarray(candidates, dtype=bool)
    if not candidates.any():
        return 0.0
    shown = np.zeros(len(candidates), dtype=bool)
    shown[np.unique(ranked)] = True
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
    sets = genres[ranked].astype(np.float32)  # users x K x genres
    inter = np.einsum("ukg,ulg->ukl", sets, sets)
    sizes = sets.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    distance = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    distance = 1.0 - distance
    k = ranked.shape[1]
    if k < 2:
        return np.zeros(ranked.shape[0])
    upper = np.triu_indices(k, 1)
    return distance[:, upper[0], upper[1]].mean(axis=1).astype(np.float64)


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Share of users with each item in their train history, add-one smoothed so unseen items stay finite."""
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float64)
    return (counts + 1.0) / (train.shape[0] + 1.0)


def novelty(ranked: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per user: mean self-information -log2(popularity) of the recommended items (higher = less obvious)."""
    return (-np.log2(popularity[ranked])).mean(axis=1)


# Time-based hold-out and user segments.

def time_holdout(frame, share: float = 0.1):
    """True for each user's later interactions: the last ceil(share * n) by timestamp (ties by item id), at least one,
    and never all of them (a user with a single interaction has no hold-out). Index aligned with `frame`."""
    import pandas as pd

    ordered = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    n = ordered.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_late = np.minimum(np.maximum(1, np.ceil(share * n - 1e-9)).astype(int), n - 1)
    return pd.Series(position >= n - n_late, index=ordered.index, name="late").reindex(frame.index)


HISTORY_BUCKETS = ((1, 5), (6, 20), (21, 50), (51, None))


def history_bucket(length: int) -> str:
    """Label of a user's history-length bucket: 1-5, 6-20, 21-50, >50 (0 for no history)."""
    for low, high in HISTORY_BUCKETS:
        if high is None and length >= low:
            return f">{low - 1}"
        if high is not None and low <= length <= high:
            return f"{low}-{high}"
    return "0"


def user_segments(history_lengths: np.ndarray, new_user_max: int) -> dict[str, np.ndarray]:
    """Boolean masks over users: all, each history-length bucket, new (<= new_user_max items) and warm."""
    lengths = np.asarray(history_lengths)
    labels = np.array([history_bucket(int(n)) for n in lengths], dtype=object)
    segments = {"all": np.ones(len(lengths), dtype=bool)}
    for low, high in HISTORY_BUCKETS:
        label = f">{low - 1}" if high is None else f"{low}-{high}"
        segments[f"history {label}"] = labels == label
    segments[f"new (<={new_user_max})"] = lengths <= new_user_max
    segments[f"warm (>{new_user_max})"] = lengths > new_user_max
    return segments


def segment_table(per_user: dict[str, dict[str, np.ndarray]], segments: dict[str, np.ndarray], metrics: tuple[str, ...],
                  samples: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """One row per (segment, contender, metric): users, mean and bootstrap CI over the segment's users (None for an
    empty segment).

    Every contender is measured on exactly the same users (the masks index the same rows for all)."""
    rows = []
    for segment, mask in segments.items():
        for contender, values in per_user.items():
            for metric in metrics:
                chosen = np.asarray(values[metric])[mask]
                low, high = bootstrap_ci(chosen, samples, seed, level) if len(chosen) else (None, None)
                rows.append({"segment": segment, "contender": contender, "metric": metric, "users": int(len(chosen)),
                             "mean": float(chosen.mean()) if len(chosen) else None,
                             "ci_low": low, "ci_high": high})
    return rows
