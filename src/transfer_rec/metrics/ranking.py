"""Ranking metrics with binary relevance, as defined in the benchmark protocol (kept apart from the models)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

METRICS = ("ndcg", "recall", "hit", "mrr", "precision")


# top_k ranks this many rows at a time: its working copy of the scores is an array of the rows x every item (2.9 GB
# in float64 for 20,000 users x 18,000 items at once).
TOP_K_ROWS = 1024


def top_k(
    scores: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    candidates: np.ndarray | None = None,
    fill: bool = True,
) -> np.ndarray:
    """Indices of the k best items per row, best first; excluded and non-candidate items never appear (unless a row
    has fewer than k others), nor do NaN scores. Equal scores come in an unspecified but repeatable order. Without
    `fill`, a row with fewer than k others ends in -1 instead: no excluded, non-candidate or unscorable item (-inf)
    is ever listed or credited (per_user_metrics counts -1 as a miss)."""
    exclude = None if exclude is None else sp.csr_matrix(exclude)
    k = min(k, scores.shape[1])
    ranked = np.empty((scores.shape[0], k), dtype=np.intp)
    shut = None if candidates is None else torch.from_numpy(~np.asarray(candidates, dtype=bool))
    work = None  # one working copy for all blocks: a fresh one per block pays its page faults every block
    for start in range(0, scores.shape[0], TOP_K_ROWS):
        stop = min(start + TOP_K_ROWS, scores.shape[0])
        block = torch.from_numpy(np.ascontiguousarray(scores[start:stop]))  # torch takes no negative strides
        if block.dtype not in (torch.float32, torch.float64):  # float32 keeps its order in any wider type
            block = block.double()
        if work is None:
            work = torch.empty((min(TOP_K_ROWS, scores.shape[0]), scores.shape[1]), dtype=block.dtype)
        values = work[: stop - start]
        values.copy_(block)
        if shut is not None:
            values.masked_fill_(shut, -math.inf)
        if exclude is not None:
            rows, cols = exclude[start:stop].nonzero()
            values[torch.from_numpy(rows), torch.from_numpy(cols)] = -math.inf
        # a NaN score ranks last, never first (torch's order puts NaN above every number)
        torch.nan_to_num_(values, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        # torch's partial sort: several times numpy's argpartition and argsort on blocks of thousands of items; ranking
        # was a sixth of the 10 M fit's profile, in evaluation and the short-history choices (2026-12-06-top-k.md)
        best = torch.topk(values, k, dim=1, sorted=True)
        ranked[start:stop] = best.indices.numpy()
        if not fill:
            ranked[start:stop][torch.isneginf(best.values).numpy()] = -1
    return ranked


def per_user_metrics(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Metric values per row of `ranked` (top-k item indices) against `relevant` (rows with >= 1 relevant item)."""
    relevant = relevant.tocsr()
    ranked = ranked[:, :k]
    # one lookup for all users (a per-user loop cost ~40 ms per call on 750 users): (row, item) pairs as flat keys
    width = max(relevant.shape[1], int(ranked.max(initial=-1)) + 1)
    rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    keys = np.arange(ranked.shape[0], dtype=np.int64)[:, None] * width + ranked
    hits = np.isin(keys, rows * width + relevant.indices) & (ranked >= 0)  # -1: an empty place (top_k's fill)
    n_relevant = np.diff(relevant.indptr).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])[
        np.minimum(n_relevant, k).astype(np.int64)
    ]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    n_hits = hits.sum(axis=1)
    return {
        "ndcg": np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0),
        "recall": np.divide(n_hits, n_relevant, out=np.zeros(len(n_hits)), where=n_relevant > 0),
        "hit": (n_hits > 0).astype(np.float64),
        "mrr": np.divide(1.0, first, out=np.zeros(len(first)), where=first > 0),
        "precision": n_hits / k,
    }


def item_segment_hits(
    ranked: np.ndarray, relevant: sp.csr_matrix, segments: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per item segment (a boolean mask over items): how many relevant (row, item) pairs fall in it, and the share
    of them whose item is in that row's top-k (`ranked`): which kinds of items a recommender finds."""
    relevant = relevant.tocsr()
    width = max(relevant.shape[1], int(ranked.max(initial=-1)) + 1)
    rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    listed = np.arange(ranked.shape[0], dtype=np.int64)[:, None] * width + ranked
    found = np.isin(rows * width + relevant.indices, listed[ranked >= 0])  # -1: an empty place (top_k's fill)
    out = {}
    for name, mask in segments.items():
        inside = np.asarray(mask, dtype=bool)[relevant.indices]
        count = int(inside.sum())
        out[name] = {"relevant": count, "found": float(found[inside].mean()) if count else 0.0}
    return out


def evaluate_scores(
    scores: np.ndarray, exclude: sp.csr_matrix, test: sp.csr_matrix, k: int, candidates: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-user metrics over the users that have at least one test item."""
    users = np.flatnonzero(np.diff(test.tocsr().indptr) > 0)
    ranked = top_k(scores[users], k, exclude[users], candidates, fill=False)
    return per_user_metrics(ranked, test[users], k)


def candidate_ndcg(
    scores: np.ndarray, exclude: sp.csr_matrix, test: sp.csr_matrix, k: int, candidates: np.ndarray
) -> float:
    """Mean NDCG@k over the rows with a test item, from scores over the `candidates` only (item indices; column j
    scores item candidates[j]): the same as evaluate_scores on the scores spread over every item with -inf
    elsewhere, without an array of users x every item in float64 (at 20,000 users and 18,000 items: 2.9 GB)."""
    values = candidate_ndcg_rows(scores, exclude, test, k, candidates)
    judged = values[~np.isnan(values)]
    return float(np.mean(judged)) if len(judged) else 0.0


def candidate_ndcg_rows(
    scores: np.ndarray, exclude: sp.csr_matrix, test: sp.csr_matrix, k: int, candidates: np.ndarray
) -> np.ndarray:
    """candidate_ndcg's NDCG@k of every row, NaN for a row with no test item (nothing judges it)."""
    test = test.tocsr()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    values = np.full(test.shape[0], np.nan)
    if len(users):
        ranked = top_k(scores[users], k, sp.csr_matrix(exclude)[users][:, candidates], fill=False)
        listed = np.where(ranked >= 0, candidates[np.maximum(ranked, 0)], -1)
        values[users] = per_user_metrics(listed, test[users], k)["ndcg"]
    return values


def judges(valid: sp.csr_matrix, limit: int, seed: int) -> np.ndarray:
    """The rows that judge choices on a validation split, in order: those with a validation item, or a seeded
    sample of `limit` of them when there are more (a choice costs scoring every judge; past a few thousand users
    more of them narrow the estimate less than the choices differ)."""
    rows = np.flatnonzero(np.diff(sp.csr_matrix(valid).indptr) > 0)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) if len(values) else 0.0 for name, values in per_user.items()}


def recommendation_rows(users: np.ndarray, items: np.ndarray, ranked: np.ndarray) -> pd.DataFrame:
    """recommendations.tsv's rows (user_id, item_id, rank) of top_k's lists without fill: a user with fewer than k
    unseen items gets fewer rows, never a train or valid item."""
    listed = ranked >= 0
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, listed.sum(axis=1)),
            "item_id": items[ranked[listed]],
            "rank": np.tile(np.arange(1, ranked.shape[1] + 1), len(users))[listed.ravel()],
        }
    )
