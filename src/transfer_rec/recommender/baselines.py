"""The contenders every candidate is judged against, fitted on the same split: the same model trained on the target
alone, EASE and popularity. Saved beside the candidate so evaluation only scores them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer_rec.recommender.ease import EASE
from transfer_rec.recommender.popularity import Popularity
from transfer_rec.recommender.transfer import TransferRecommender


@dataclass
class Baselines:
    target_only: TransferRecommender
    ease: EASE
    popularity: Popularity
    info: dict[str, Any] = field(default_factory=dict)  # how they were fitted: EASE's L2, seconds

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.target_only.state(with_source=False), folder / "target_only.pt")
        np.save(folder / "ease_weights.npy", self.ease.weights)
        np.save(folder / "ease_items.npy", self.ease.items)
        np.save(folder / "popularity.npy", self.popularity.counts)
        (folder / "baselines.json").write_text(json.dumps({**self.info, "ease_l2": self.ease.l2}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Baselines:
        folder = Path(folder)
        info = json.loads((folder / "baselines.json").read_text())
        ease = EASE(info["ease_l2"])
        ease.weights = np.load(folder / "ease_weights.npy")
        # folders saved before the weights were kept among train's items only hold them over the whole index
        saved = folder / "ease_items.npy"
        ease.items = np.load(saved) if saved.exists() else np.arange(len(ease.weights))
        popularity = Popularity()
        popularity.counts = np.load(folder / "popularity.npy")
        twin = TransferRecommender.from_state(
            torch.load(folder / "target_only.pt", map_location="cpu", weights_only=True)
        )
        return cls(twin, ease, popularity, info)
