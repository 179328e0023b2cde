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
    hits = np.zeros(ranked.shape, dtype=bool)
    for row in range(ranked.shape[0]):
        truth = relevant.indices[relevant.indptr[row]:relevant.indptr[row + 1]]
        hits[row] = np.isin(ranked[row, :k], truth)
    n_relevant = np.diff(relevant.indptr).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_relevant])
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    n_hits = hits.sum(axis=1)
    return {
        "ndcg": np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0),
        "recall": np.divide(n_hits, n_relevant, out=np.zeros(len(n_hits)), where=n_relevant > 0),
        "hit": (n_hits > 0).astype(np.float64),
        "mrr": np.divide(1.0, first, out=np.zeros(len(first)), where=first > 0),
        "precision": n_hits / k,
    }


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
