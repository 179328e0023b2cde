"""Profile prior: what users with a given profile (age bucket, gender, occupation) like, before any history.

A multinomial linear model over the unified profile fields:

    logits(u) = b[platform(u)] + sum over u's profile features f of W[f]

with one-hot features age, gender, occupation and the age x gender cell. W is shared by every platform it is trained
on; each platform keeps its own item bias b (its own popularity), so the source's 6,040 users teach the demographic
tastes (W) without imposing the source's popularity on the target. Trained with the Mult-DAE likelihood (softmax over
items, every interaction counts once) and an L2 penalty on W. Trained on the target's users alone it is the
honest target-only profile prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from transfer_rec.schema.unified import PROFILE_FIELDS


@dataclass
class ProfileConfig:
    """The prior's fit (defaults: config `short_history`)."""

    l2: float  # penalty on the demographic weights W (the item biases are free)
    learning_rate: float
    steps: int  # full-batch Adam steps over the (platform, profile) cells
    seed: int


# Users' profiles: a users frame, or (at serving, where building a frame costs more than scoring) a mapping of
# field -> one value per user; missing fields and values are unknown. Rows are taken by position.
Profiles = pd.DataFrame | Mapping[str, Sequence[Any]]


def profile_features(users: Profiles, vocabulary: dict[str, list[str]], n: int | None = None) -> sp.csr_matrix:
    """One-hot profile features (each field, plus the age x gender cell); unknown or missing values have none.
    `n`, the number of users, is needed only for a mapping without any profile field."""
    columns: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    offset = 0
    present = [f for f in PROFILE_FIELDS if f in users]
    if isinstance(users, pd.DataFrame):
        n = len(users)
    elif present:
        n = len(users[present[0]])
    elif n is None:
        raise ValueError("profile_features: say how many users a mapping without profile fields stands for")
    values = {}
    for f in PROFILE_FIELDS:
        # plain object arrays, not pandas' where/astype: a one-user serving request pays ~5 ms for those
        column = np.asarray(list(users[f]), dtype=object) if f in users else np.full(n, None, dtype=object)
        values[f] = np.where(pd.isna(column), None, column)
    values["age_gender"] = np.array(
        [f"{a}|{g}" if a is not None and g is not None else None for a, g in zip(values["age"], values["gender"])],
        dtype=object,
    )
    for field in (*PROFILE_FIELDS, "age_gender"):
        position = {v: i for i, v in enumerate(vocabulary.get(field, []))}
        codes = np.array([position.get(v, -1) for v in values[field]], dtype=np.int64)
        known = codes >= 0
        rows.append(np.flatnonzero(known))
        columns.append(codes[known] + offset)
        offset += len(position)
    row, col = np.concatenate(rows), np.concatenate(columns)
    return sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)), shape=(n, offset))


def profile_vocabulary(*frames: pd.DataFrame) -> dict[str, list[str]]:
    """Sorted values of each profile field over the given users tables (and their age x gender cells)."""
    users = pd.concat(frames, ignore_index=True)
    vocabulary = {f: sorted(users[f].dropna().astype(str).unique()) if f in users else [] for f in PROFILE_FIELDS}
    vocabulary["age_gender"] = [f"{a}|{g}" for a in vocabulary["age"] for g in vocabulary["gender"]]
    return vocabulary


class ProfilePrior:
    """Item logits for a user profile; `platforms` are the item-bias rows, the last one is the target."""

    def __init__(self, n_items: int, vocabulary: dict[str, list[str]], config: ProfileConfig):
        self.n_items = n_items
        self.vocabulary = {k: list(v) for k, v in vocabulary.items()}
        self.config = config
        n_features = sum(len(self.vocabulary.get(f, [])) for f in (*PROFILE_FIELDS, "age_gender"))
        self.weights = np.zeros((n_features, n_items), dtype=np.float32)
        self.bias = np.zeros(n_items, dtype=np.float32)

    def fit(self, platforms: list[tuple[sp.spmatrix, pd.DataFrame]]) -> ProfilePrior:
        """Fit on (interactions, users) pairs, one per platform, rows aligned; the last platform is the target."""
        torch.manual_seed(self.config.seed)
        # Users with the same profile on the same platform share their logits, so the likelihood only needs each
        # (platform, profile) cell's item counts: a few hundred rows instead of every user.
        cells, counts, which = [], [], []
        for index, (matrix, users) in enumerate(platforms):
            matrix = sp.csr_matrix(matrix, dtype=np.float32)
            features = profile_features(users, self.vocabulary)
            keys = pd.Series(
                [
                    ",".join(map(str, features.indices[features.indptr[r] : features.indptr[r + 1]]))
                    for r in range(features.shape[0])
                ]
            )
            codes, uniques = pd.factorize(keys)
            members = sp.csr_matrix(
                (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
                shape=(len(uniques), len(codes)),
            )
            first = np.unique(codes, return_index=True)[1]
            cells.append(features[first])
            counts.append(members @ matrix)
            which.append(np.full(len(uniques), index))
        x = torch.from_numpy(sp.vstack(cells).toarray())
        y = sp.vstack(counts)
        y = torch.from_numpy(np.asarray(y.toarray(), dtype=np.float32) / max(float(y.sum()), 1.0))
        platform = torch.from_numpy(np.concatenate(which))
        item_counts = np.asarray([np.asarray(sp.csr_matrix(m).sum(0)).ravel() for m, _ in platforms])
        start = np.log(item_counts + 0.5)
        bias = torch.tensor(start - start.mean(1, keepdims=True), dtype=torch.float32, requires_grad=True)
        weights = torch.zeros(x.shape[1], self.n_items, requires_grad=True)
        optimiser = torch.optim.Adam([bias, weights], lr=self.config.learning_rate)
        for _ in range(self.config.steps):
            logits = bias[platform] + x @ weights
            # y holds each cell's share of all interactions: the mean log-likelihood per interaction
            loss = -(torch.log_softmax(logits, 1) * y).sum() + self.config.l2 * (weights**2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.bias = bias[-1].detach().numpy().copy()
        self.weights = weights.detach().numpy().copy()
        return self

    def score(self, users: Profiles, n: int | None = None) -> np.ndarray:
        """Item logits of the target platform for each user's profile (users without a profile: popularity)."""
        return self.bias[None, :] + np.asarray(profile_features(users, self.vocabulary, n) @ self.weights)

    def state(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "vocabulary": self.vocabulary,
            "config": asdict(self.config),
            "weights": torch.from_numpy(self.weights),
            "bias": torch.from_numpy(self.bias),
        }

    def mixed(self, other: ProfilePrior, share: float) -> ProfilePrior:
        """The prior whose logits are `share` x this one's + (1 - share) x `other`'s (same items and vocabulary)."""
        if self.vocabulary != other.vocabulary or self.n_items != other.n_items:
            raise ValueError("ProfilePrior.mixed: the two priors must share their items and profile vocabulary")
        prior = ProfilePrior(self.n_items, self.vocabulary, self.config)
        prior.weights = (share * self.weights + (1.0 - share) * other.weights).astype(np.float32)
        prior.bias = (share * self.bias + (1.0 - share) * other.bias).astype(np.float32)
        return prior

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProfilePrior:
        prior = cls(state["n_items"], state["vocabulary"], ProfileConfig(**state["config"]))
        prior.weights = state["weights"].numpy().astype(np.float32)
        prior.bias = state["bias"].numpy().astype(np.float32)
        return prior
