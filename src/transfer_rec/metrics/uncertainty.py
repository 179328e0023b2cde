"""Uncertainty of a mean over users: bootstrap confidence intervals, and the paired bound the gate uses."""

from __future__ import annotations

import numpy as np


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


def paired_lower_bound(
    candidate: np.ndarray, reference: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> float:
    """One-sided lower confidence bound of mean(candidate - reference) over the same users (paired bootstrap)."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return float(np.percentile(bootstrap_means(diff, samples, seed), (1 - level) * 100))
