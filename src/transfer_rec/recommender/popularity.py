"""Popularity: every user gets the items most users interacted with. The floor every model must beat."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class Popularity:
    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train: sp.csr_matrix) -> Popularity:
        self.counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.counts is not None, "fit first"
        return np.tile(self.counts, (history.shape[0], 1))
