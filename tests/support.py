"""Small helpers the tests share (importable as tests.support: pytest puts the repository on the path)."""

from __future__ import annotations

from typing import Any

from transfer_rec.config import TrainingConfig
from transfer_rec.recommender.transfer import TransferRecommender

# The smallest model that still has every part: one encoder, the best item-item setting, no kernel part unless a
# test asks for one.
SMALL = {"encoders": 1, "item_combine": "best", "kernel_weights": [0.0]}


def training(**overrides: Any) -> TrainingConfig:
    """Training settings for a small, fast model (validated as the config file is)."""
    return TrainingConfig.model_validate({**SMALL, **overrides})


def small_model(n_items: int, k: int = 10, **overrides: Any) -> TransferRecommender:
    return TransferRecommender(n_items, training(**overrides), k)
