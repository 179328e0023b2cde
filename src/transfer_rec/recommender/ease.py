"""EASE (Steck, 2019): a closed-form item-item linear autoencoder. The strong single-platform baseline."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class EASE:
    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2
        self.weights: np.ndarray | None = None

    def fit(self, train: sp.csr_matrix) -> EASE:
        x = (train > 0).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None, "fit first"
        return np.asarray((history > 0).astype(np.float32) @ self.weights)
