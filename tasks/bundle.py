"""A trained model with everything needed to recommend: item vocabulary, candidates and known users' histories.

The same bundle backs evaluation, the MLflow pyfunc model and publishing, so all three rank in exactly one way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tasks.metrics import top_k
from tasks.models.transfer import TransferRecommender


@dataclass
class Recommendations:
    item_ids: list[list[str]]
    scores: list[list[float]]
    unknown_items: list[list[str]]


class ModelBundle:
    def __init__(self, model: TransferRecommender, item_ids: np.ndarray, candidates: np.ndarray,
                 histories: pd.DataFrame, meta: dict | None = None):
        self.model = model
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.candidates = np.asarray(candidates, dtype=bool)
        self._index = pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)
        # Known users' histories: user_id -> item ids, so a request may name just the user.
        self.histories = histories.groupby("user_id")["item_id"].agg(list).to_dict() if len(histories) else {}
        self.meta = meta or {}

    def history_matrix(self, histories: Sequence[Sequence[str]]) -> tuple[sp.csr_matrix, list[list[str]]]:
        """Rows of item ids as a binary matrix over this model's items; ids it does not know are returned apart."""
        rows, cols, unknown = [], [], []
        for row, items in enumerate(histories):
            items = list(dict.fromkeys(str(i) for i in items))
            known = self._index.reindex(items)
            unknown.append([i for i, idx in zip(items, known) if pd.isna(idx)])
            idx = known.dropna().astype(int).to_numpy()
            rows.extend([row] * len(idx))
            cols.extend(idx.tolist())
        data = np.ones(len(rows), dtype=np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(histories), len(self.item_ids))), unknown

    def score(self, histories: Sequence[Sequence[str]], profiles: pd.DataFrame | None = None) -> np.ndarray:
        """`profiles` (age, gender, occupation per row) reach the model's profile prior, if it has one."""
        matrix, _ = self.history_matrix(histories)
        return self.model.score(matrix, profiles) if profiles is not None else self.model.score(matrix)

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10,
                  profiles: pd.DataFrame | None = None) -> Recommendations:
        """Top-k candidate items per history, items already in the history excluded."""
        matrix, unknown = self.history_matrix(histories)
        scores = self.model.score(matrix, profiles) if profiles is not None else self.model.score(matrix)
        ranked = top_k(scores, k, exclude=matrix, candidates=self.candidates)
        top_scores = np.take_along_axis(scores, ranked, axis=1)
        return Recommendations(
            item_ids=[self.item_ids[r].tolist() for r in ranked],
            scores=[s.astype(float).tolist() for s in top_scores],
            unknown_items=unknown,
        )

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state(with_source=False), folder / "model.pt")
        pd.DataFrame({"item_id": self.item_ids, "candidate": self.candidates}).to_parquet(folder / "items.parquet")
        rows = [(u, i) for u, items in self.histories.items() for i in items]
        pd.DataFrame(rows, columns=["user_id", "item_id"]).to_parquet(folder / "histories.parquet")
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "ModelBundle":
        folder = Path(folder)
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        items = pd.read_parquet(folder / "items.parquet")
        return cls(TransferRecommender.from_state(state), items["item_id"].to_numpy(), items["candidate"].to_numpy(),
                   pd.read_parquet(folder / "histories.parquet"), json.loads((folder / "meta.json").read_text()))
