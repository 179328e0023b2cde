"""User-kernel part of the transfer recommender: kernel ridge regression from a history to items over the target's
training users, with the neural tangent kernel of an infinitely wide one-hidden-layer ReLU autoencoder (the
"infinite-width autoencoder" of Sachdeva et al., 2022).

For training users' rows X (their rating-weighted histories) and a history x:

    score(x) = k(x, X) (K + lam * mean(diag K) I)^-1 X[:, candidates],  K = k(X, X)
    k(x, y) = <x, y> k0(u) + |x||y| k1(u),  u = <x, y> / (|x||y|)
    k0(u) = (pi - arccos u) / pi,  k1(u) = (sqrt(1 - u^2) + (pi - arccos u) u) / pi

It is user-based (a history is compared with every training user), where the model's other parts are item-based:
a different view, which is why it adds accuracy in the blend. A user is still only their history, so new users are
scored at request time without retraining. The solve is over users: past `max_users` training users, a seeded
subset of them is the regression's basis (the kernel matrix grows with their square).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

# the basis sample's random stream beside the seed (any value other than none: judges draws with the seed alone)
BASIS_STREAM = 1


def _norms(rows: sp.csr_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1), dtype=np.float64).ravel())


def ntk(
    a: sp.csr_matrix, b: sp.csr_matrix, norms_a: np.ndarray, norms_b: np.ndarray, b_columns: sp.csr_matrix | None = None
) -> np.ndarray:
    """The one-hidden-layer ReLU NTK between the rows of a and of b (an empty row has zero kernel with all).
    `b_columns`, b transposed as CSR, saves transposing b on every call."""
    dot = np.asarray((a @ (b.T if b_columns is None else b_columns)).toarray(), dtype=np.float64)
    outer = norms_a[:, None] * norms_b[None, :]
    cosine = np.clip(np.divide(dot, outer, out=np.zeros_like(dot), where=outer > 0), -1.0, 1.0)
    angle = np.pi - np.arccos(cosine)
    return (dot * angle + outer * (np.sqrt(1.0 - cosine * cosine) + angle * cosine)) / np.pi


class UserKernel:
    def __init__(self, lam: float, max_users: int = 5000, seed: int = 2022):
        self.lam = float(lam)
        self.max_users = int(max_users)
        self.seed = int(seed)
        self.rows: sp.csr_matrix | None = None
        self.norms = np.zeros(0)
        self.dual: np.ndarray | None = None

    def fit(self, train: sp.spmatrix, candidates: np.ndarray) -> UserKernel:
        rows = sp.csr_matrix(train, dtype=np.float64)
        rows = rows[np.flatnonzero(np.diff(rows.indptr) > 0)]
        if rows.shape[0] > self.max_users:
            # a stream of its own: the seed alone draws the valid judges (metrics.ranking.judges) from the same rows,
            # so the basis was the judge set and the kernel's ridge and weight were chosen on basis users only
            stream = np.random.default_rng([self.seed, BASIS_STREAM])
            keep = np.sort(stream.choice(rows.shape[0], self.max_users, replace=False))
            rows = rows[keep]
        norms = _norms(rows)
        gram = ntk(rows, rows, norms, norms)
        gram[np.diag_indices_from(gram)] += self.lam * float(np.mean(np.diag(gram)))
        targets = rows[:, candidates].toarray()
        self.dual = scipy.linalg.solve(gram, targets, assume_a="pos", overwrite_a=True).astype(np.float32)
        self.rows, self.norms = rows.astype(np.float32), norms
        return self

    def score(self, history: sp.spmatrix) -> np.ndarray:
        """Scores over the candidates the part was fitted for, one row per history."""
        assert self.rows is not None and self.dual is not None, "fit first"
        history = sp.csr_matrix(history, dtype=np.float32)
        kernel = ntk(history, self.rows, _norms(history), self.norms, self._columns()).astype(np.float32)
        # torch's matmul keeps to torch's thread setting (one thread for small serving requests)
        return (torch.from_numpy(kernel) @ torch.from_numpy(self.dual)).numpy()

    def _columns(self) -> sp.csr_matrix:
        """The training rows transposed, as CSR: a history then reads only its own items' rows (transposing per
        request cost ~0.4 ms of a one-user request)."""
        assert self.rows is not None, "fit first"
        if getattr(self, "_rows_t", None) is None or self._rows_t.shape[1] != self.rows.shape[0]:
            self._rows_t = sp.csr_matrix(self.rows.T)
        return self._rows_t

    def state(self) -> dict[str, Any]:
        assert self.rows is not None and self.dual is not None, "fit first"
        rows = self.rows
        return {
            "lam": self.lam,
            "max_users": self.max_users,
            "seed": self.seed,
            "indptr": torch.from_numpy(rows.indptr.astype(np.int64)),
            "indices": torch.from_numpy(rows.indices.astype(np.int64)),
            "data": torch.from_numpy(rows.data.astype(np.float32)),
            "shape": list(rows.shape),
            "dual": torch.from_numpy(self.dual),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UserKernel:
        part = cls(state["lam"], state["max_users"], state["seed"])
        part.rows = sp.csr_matrix(
            (state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy()), shape=tuple(state["shape"])
        )
        part.norms = _norms(part.rows)
        part.dual = state["dual"].numpy()
        return part
