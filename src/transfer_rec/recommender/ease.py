"""EASE (Steck, 2019): a closed-form item-item linear autoencoder. The strong single-platform baseline."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class EASE:
    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2
        self.weights: np.ndarray | None = None

    def fit(self, train: sp.csr_matrix) -> EASE:
        x = (train > 0).astype(np.float64).tocsc()
        # Items nobody in train has are decoupled in the Gram (a row and column of zeros but the diagonal): their
        # weights are zero, so only the platform's own items are solved. The item index spans every platform, and
        # the solve is cubic in its size: a target's catalogue is often a small part of it.
        active = np.flatnonzero(np.diff(x.indptr) > 0)
        gram = (x[:, active].T @ x[:, active]).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        block = -precision / np.diag(precision)
        block[np.diag_indices_from(block)] = 0.0
        weights = np.zeros((train.shape[1], train.shape[1]), dtype=np.float32)
        weights[np.ix_(active, active)] = block
        self.weights = weights
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.weights is not None, "fit first"
        return np.asarray((history > 0).astype(np.float32) @ self.weights)
