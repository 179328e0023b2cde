"""Operations on interaction tables that the pipeline's features stage and the linked-world generator share."""

from __future__ import annotations

import numpy as np
import pandas as pd


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than k interactions, repeating until stable (the k-core is unique, so the
    order of removal does not matter); rows keep their order."""
    users, _ = pd.factorize(inter["user_id"])
    items, _ = pd.factorize(inter["item_id"])
    alive = np.ones(len(inter), dtype=bool)
    while True:
        user_counts = np.bincount(users[alive], minlength=users.max() + 1 if len(users) else 0)
        item_counts = np.bincount(items[alive], minlength=items.max() + 1 if len(items) else 0)
        keep = alive & (user_counts[users] >= k) & (item_counts[items] >= k)
        if (keep == alive).all():
            return inter[alive]
        alive = keep
