"""Choosing the linked recommender's settings on the target's own data (recommender/linked.py).

- Warm part: each setting is fitted on target train and judged on target valid (users never see their own valid
  items in the fit).
- Newcomers' part: judged on simulated newcomers: people with a target history and a source history, their target
  rows withheld from the fit (cross-fitted over seeded folds, so nobody judges a model that learned from them) and
  their whole known target history (train and valid) to be found from their sources alone. The new users' own test
  items are never looked at.
- Sources: every part starts with all sources and drops, one at a time, any source whose removal does not lower the
  part's score: a source that does not help gets no weight (a wrongly linked or permuted source is dropped).
- Content (newcomers' part, when the sources' items have content vectors): with the sources chosen, each weight of
  CONTENT_WEIGHTS is judged the same way and kept only if it beats items alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.linked import (
    LinkedSettings,
    binary,
    ease_columns,
    gram_of,
    joint_rows,
    newcomer_features,
    ridge_scores,
    ridge_solve,
    ridge_system,
)

log = logging.getLogger(__name__)

WARM_L2 = (100.0, 250.0, 500.0, 1000.0, 2500.0)
NEW_L2 = (25.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
# A person's content profile is a mean of unit vectors (norm <= 1) beside hundreds of 0/1 item features: it needs a
# large weight to count (on linked worlds the simulated-newcomer NDCG rose up to about 16:
# docs/results/2026-12-04-linked-content.md).
CONTENT_WEIGHTS = (4.0, 8.0, 16.0, 32.0)


@dataclass
class LinkedChoice:
    settings: LinkedSettings
    # (part, sources used, l2) -> NDCG@k on that part's judges
    trials: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        s = self.settings
        return {
            "warm_l2": s.warm_l2,
            "new_l2": s.new_l2,
            "new_content_weight": s.content_weight,
            **{f"warm_weight.{k}": v for k, v in s.warm_sources.items()},
            **{f"new_weight.{k}": v for k, v in s.new_sources.items()},
        }


def ndcg_of(scores: np.ndarray, relevant: sp.csr_matrix, exclude: sp.csr_matrix | None, k: int) -> float:
    ranked = top_k(scores, k, exclude, fill=False)
    return float(per_user_metrics(ranked, relevant, k)["ndcg"].mean()) if relevant.shape[0] else 0.0


def _best_subset(
    names: Sequence[str], judge: Callable[[dict[str, float]], tuple[float, float]]
) -> tuple[dict[str, float], float, float]:
    """Backward elimination: drop a source while dropping it scores at least as well. judge -> (score, l2)."""
    weights = {n: 1.0 for n in names}
    score, l2 = judge(weights)
    improved = True
    while improved and any(weights.values()):
        improved = False
        for name in [n for n, w in weights.items() if w > 0]:
            trial = {**weights, name: 0.0}
            trial_score, trial_l2 = judge(trial)
            if trial_score >= score:
                weights, score, l2, improved = trial, trial_score, trial_l2, True
                break
    return weights, score, l2


def choose(
    sources: dict[str, sp.csr_matrix],
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    k: int = 10,
    folds: int = 2,
    seed: int = 0,
    warm_l2: Sequence[float] = WARM_L2,
    new_l2: Sequence[float] = NEW_L2,
    vectors: dict[str, np.ndarray] | None = None,
) -> LinkedChoice:
    """sources, train, valid: people x items, rows aligned by person; vectors: per source, its items' content."""
    train, valid = binary(train), binary(valid)
    trials: list[dict[str, Any]] = []
    judges = np.flatnonzero((np.diff(valid.indptr) > 0) & (np.diff(train.indptr) > 0))

    def judge_warm(weights: dict[str, float]) -> tuple[float, float]:
        joint = joint_rows(sources, weights, train)
        gram = gram_of(joint)  # once for every strength
        best = (-1.0, warm_l2[0])
        for l2 in warm_l2:
            columns = ease_columns(gram, train.shape[1], l2)
            score = ndcg_of(np.asarray(joint[judges] @ columns), valid[judges], train[judges], k)
            trials.append({"part": "warm", "sources": _used(weights), "l2": l2, "ndcg": score})
            best = max(best, (score, l2))
        return best

    known = binary(train + valid)
    has_target = np.diff(train.indptr) > 0
    on_source = np.zeros(train.shape[0], dtype=bool)
    for matrix in sources.values():
        on_source |= np.diff(binary(matrix).indptr) > 0
    simulated = np.flatnonzero(has_target & on_source)
    fold = np.random.default_rng(seed).integers(0, folds, len(simulated))

    def judge_new(weights: dict[str, float], content_weight: float = 0.0) -> tuple[float, float]:
        best = (-1.0, new_l2[0])
        # each fold's normal equations once, then one solve per strength
        per_fold: dict[float, list[np.ndarray]] = {l2: [] for l2 in new_l2}
        for f in range(folds):
            held = simulated[fold == f]
            fit_rows = np.setdiff1d(np.flatnonzero(has_target), held)
            rows = {n: m[fit_rows] for n, m in sources.items()}
            system = ridge_system(newcomer_features(rows, weights, vectors, content_weight), train[fit_rows])
            held_rows = {n: m[held] for n, m in sources.items()}
            held_features = newcomer_features(held_rows, weights, vectors, content_weight)
            for l2 in new_l2:
                ranked = top_k(ridge_scores(ridge_solve(*system, l2), held_features, len(held)), k)
                per_fold[l2].append(per_user_metrics(ranked, known[held], k)["ndcg"])
        for l2 in new_l2:
            score = float(np.concatenate(per_fold[l2]).mean()) if len(simulated) else 0.0
            trials.append(
                {"part": "new", "sources": _used(weights), "l2": l2, "content": content_weight, "ndcg": score}
            )
            best = max(best, (score, l2))
        return best

    names = list(sources)
    warm_weights, warm_score, chosen_warm_l2 = _best_subset(names, judge_warm)
    log.info(
        "linked, warm part: sources %s, l2 %s, valid NDCG@%d %.4f", _used(warm_weights), chosen_warm_l2, k, warm_score
    )
    new_weights, new_score, chosen_new_l2 = _best_subset(names, judge_new)
    content_weight = 0.0
    if vectors and any(new_weights.values()):
        for weight in CONTENT_WEIGHTS:
            score, l2 = judge_new(new_weights, weight)
            if score > new_score:
                content_weight, new_score, chosen_new_l2 = weight, score, l2
    log.info(
        "linked, newcomers' part: sources %s, content weight %s, l2 %s, NDCG@%d %.4f on %d simulated newcomers",
        _used(new_weights),
        content_weight,
        chosen_new_l2,
        k,
        new_score,
        len(simulated),
    )
    settings = LinkedSettings(
        warm_l2=chosen_warm_l2,
        new_l2=chosen_new_l2,
        warm_sources=warm_weights,
        new_sources=new_weights,
        content_weight=content_weight,
    )
    return LinkedChoice(settings, trials)


def _used(weights: dict[str, float]) -> list[str]:
    return [n for n, w in weights.items() if w > 0]
