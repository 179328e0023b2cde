"""The next-period hold-out of retention, and users by history length: the segments every metric is reported on."""

from __future__ import annotations

from typing import Any

import numpy as np

from transfer_rec.metrics.ranking import METRICS
from transfer_rec.metrics.uncertainty import bootstrap_ci


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


# test users with no train or valid interaction on the target (a target's new_users holds them out whole)
NEW_TO_TARGET = "new to the target"


def linked_segments(sources: np.ndarray, new: np.ndarray, new_label: str) -> dict[str, np.ndarray]:
    """Boolean masks over users by how many source platforms the same person is linked on (0, 1, ... the most any
    user has), for all users and for new users (`new`: their mask, `new_label`: its segment's name)."""
    sources = np.asarray(sources)
    segments = {}
    for n in range(int(sources.max(initial=0)) + 1):
        on = f"on {n} source{'s' if n != 1 else ''}"
        segments[f"linked {on}"] = sources == n
        segments[f"{new_label}, {on}"] = (sources == n) & new
    return segments


def segment_table(
    per_user: dict[str, dict[str, np.ndarray]],
    segments: dict[str, np.ndarray],
    metrics: tuple[str, ...],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """One row per (segment, contender, metric): users, mean and bootstrap CI over the segment's users (None for an
    empty segment).

    Every contender is measured on exactly the same users (the masks index the same rows for all)."""
    rows = []
    for segment, mask in segments.items():
        for contender, values in per_user.items():
            for metric in metrics:
                chosen = np.asarray(values[metric])[mask]
                low, high = bootstrap_ci(chosen, samples, seed, level) if len(chosen) else (None, None)
                rows.append(
                    {
                        "segment": segment,
                        "contender": contender,
                        "metric": metric,
                        "users": int(len(chosen)),
                        "mean": float(chosen.mean()) if len(chosen) else None,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return rows


def group_summary(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """A group of users' mean metrics (per_user_metrics' values, one row per user) and the bootstrap CI of NDCG."""
    if not len(values["ndcg"]):
        return {"users": 0}
    low, high = bootstrap_ci(values["ndcg"])
    return {"users": len(values["ndcg"]), **{m: float(values[m].mean()) for m in METRICS}, "ndcg_ci95": [low, high]}
