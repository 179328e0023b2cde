"""Recommending on a target from what linked people do on the source platforms, with catalogues that need not
overlap (docs/model.md, "Linked people").

Rows are people, not platform users: a person linked (by link id) on several platforms has one row holding each
platform's history side by side, [source 1 items | source 2 items | ... | target items]. Two parts answer two kinds
of people:
- warm (some target history): an EASE over those joint rows, scored on the target columns. A source's items then
  add to a person's target history as far as the people who use both platforms say they should;
- new to the target: a ridge regression from the source columns (and an intercept, which alone is popularity) to
  the target columns, fitted on the people who have both. The joint EASE conditions every source item on the target
  items, which a newcomer does not have; the regression asks the newcomer's question directly.
Each source enters with a weight (0 or 1 today, chosen per part on the target's data by selection/linked.py), so a
source that does not help contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class LinkedSettings:
    warm_l2: float = 500.0
    new_l2: float = 200.0
    # per source: 1 uses it, 0 leaves it out (names as in the sources mapping)
    warm_sources: dict[str, float] = field(default_factory=dict)
    new_sources: dict[str, float] = field(default_factory=dict)


def binary(matrix: sp.spmatrix) -> sp.csr_matrix:
    return (sp.csr_matrix(matrix) > 0).astype(np.float64).tocsr()


def joint_rows(sources: dict[str, sp.csr_matrix], weights: dict[str, float], tail: sp.csr_matrix | None = None):
    """[w_1 S_1 | w_2 S_2 | ... | tail] for the sources with a non-zero weight, in the mapping's order."""
    blocks = [binary(m) * weights[name] for name, m in sources.items() if weights.get(name, 0.0) > 0]
    if tail is not None:
        blocks.append(binary(tail))
    if not blocks:
        return None
    return sp.hstack(blocks, format="csr")


def ease_target_columns(joint: sp.csr_matrix, n_target: int, l2: float) -> np.ndarray:
    """EASE weights (Steck, 2019) of a joint item space, only the columns of its last n_target items."""
    gram = (joint.T @ joint).toarray()
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    columns = precision[:, -n_target:] / -np.diag(precision)[-n_target:]
    columns[np.arange(gram.shape[0] - n_target, gram.shape[0]), np.arange(n_target)] = 0.0
    return columns.astype(np.float32)


def ridge_map(features: sp.csr_matrix | None, target: sp.csr_matrix, l2: float) -> np.ndarray:
    """Least squares from [1 | features] to the target rows with an L2 penalty: row 0 is the intercept."""
    n = target.shape[0]
    ones = sp.csr_matrix(np.ones((n, 1)))
    x = ones if features is None else sp.hstack([ones, features], format="csr")
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    return np.linalg.solve(gram, (x.T @ binary(target)).toarray()).astype(np.float32)


def ridge_scores(weights: np.ndarray, features: sp.csr_matrix | None, n: int) -> np.ndarray:
    scores = np.repeat(weights[:1], n, axis=0)
    if features is not None:
        scores += np.asarray(features @ weights[1:])
    return scores


class LinkedRecommender:
    """Fit on people's rows (sources and target aligned by person); score people given the same kinds of rows."""

    def __init__(self, settings: LinkedSettings) -> None:
        self.settings = settings
        self.warm: np.ndarray | None = None
        self.new: np.ndarray | None = None
        self.n_target = 0

    def fit(self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix) -> LinkedRecommender:
        """sources: people x each source's items; target: people x target items (the target history to learn)."""
        s = self.settings
        self.n_target = target.shape[1]
        self.warm = ease_target_columns(joint_rows(sources, s.warm_sources, target), self.n_target, s.warm_l2)
        has_target = np.diff(binary(target).indptr) > 0
        features = joint_rows({k: m[has_target] for k, m in sources.items()}, s.new_sources)
        self.new = ridge_map(features, target[has_target], s.new_l2)
        return self

    def score_warm(self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix) -> np.ndarray:
        assert self.warm is not None, "fit first"
        return np.asarray(joint_rows(sources, self.settings.warm_sources, target) @ self.warm)

    def score_new(self, sources: dict[str, sp.csr_matrix], n: int) -> np.ndarray:
        """n people with no target history, from their source rows (all-empty rows: the intercept, popularity)."""
        assert self.new is not None, "fit first"
        return ridge_scores(self.new, joint_rows(sources, self.settings.new_sources), n)

    def score(self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix) -> np.ndarray:
        """People with a target history by the warm part, the others by the newcomers' part."""
        scores = self.score_new(sources, target.shape[0])
        warm = np.flatnonzero(np.diff(binary(target).indptr) > 0)
        if len(warm):
            scores[warm] = self.score_warm({k: m[warm] for k, m in sources.items()}, target[warm])
        return scores
