"""EASE (Steck, 2019): a closed-form item-item linear autoencoder. The strong single-platform baseline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from transfer_rec.recommender.item_item import dense_gram, item_item_solve


class EASE:
    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2
        # Items nobody in train has are decoupled in the Gram (a row and column of zeros but the diagonal): their
        # weights are zero, so only the items train has are solved and kept (`items`, `weights` among them). The
        # item index spans every platform: solving and keeping all of it would be cubic and square in its size.
        self.items: np.ndarray | None = None
        self.weights: np.ndarray | None = None  # float32, items x items

    def fit(self, train: sp.csr_matrix) -> EASE:
        fitted = next(EASE.grid(train, (self.l2,)))
        self.items, self.weights = fitted.items, fitted.weights
        return self

    @staticmethod
    def grid(train: sp.csr_matrix, l2s: Iterable[float]) -> Iterator[EASE]:
        """EASE fitted with each L2 strength in turn, all from one Gram (making it is a pass over every interaction).
        Hold only the models you keep: each holds its own weights."""
        x = (train > 0).astype(np.float64).tocsc()
        items = np.flatnonzero(np.diff(x.indptr) > 0)
        gram = dense_gram([(1.0, x)], x.shape[1], items)
        # 0/1 rows make co-occurrence counts, integers float32 holds exactly below 2^24 users: kept at half the size
        # while each strength's float64 solve works on its own copy
        if x.shape[0] < 2**24:
            gram = gram.astype(np.float32)
        for l2 in l2s:
            model = EASE(l2)
            model.items = items
            model.weights = item_item_solve(gram.astype(np.float64), l2, overwrite=True).astype(np.float32)
            yield model

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """Users x every item of the index (zero for the items train did not have)."""
        assert self.weights is not None and self.items is not None, "fit first"
        scores = np.zeros(history.shape, dtype=np.float32)
        scores[:, self.items] = (history[:, self.items] > 0).astype(np.float32) @ self.weights
        return scores
