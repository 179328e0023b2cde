"""Recommenders. Each scores arbitrary users from their history (a users x items CSR matrix) without retraining."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp


class Recommender(Protocol):
    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """Scores of every item for every row of `history` (higher is better)."""
        ...
