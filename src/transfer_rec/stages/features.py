"""Stage 4, features: implicit feedback, k-core filtering and the seeded per-user split of each target platform."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from transfer_rec.config import PipelineConfig
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import atomic_dir
from transfer_rec.io.tables import k_core
from transfer_rec.manifests import FeatureSet, UnifiedVersion
from transfer_rec.schema.unified import PROFILE_FIELDS

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
RATING_PIVOT = 4.0  # the rating that counts 1 in a rating-weighted history (see PlatformData.matrix)


def split_sizes(n: int, shares: tuple[float, float, float]) -> tuple[int, int, int]:
    """Per-user split sizes: valid and test get floor(share*n), at least 1 when share*n > 0; train the rest."""
    valid, test = int(shares[1] * n), int(shares[2] * n)
    train = n - valid - test
    for share, which in ((shares[2], "test"), (shares[1], "valid")):
        if train <= 1:
            break
        if 0 < share * n < 1:
            train -= 1
            valid, test = (valid + 1, test) if which == "valid" else (valid, test + 1)
    return train, valid, test


def _stable_keys(frame: pd.DataFrame, salt: str, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per row that depends only on the row's own values: the draw of one user or
    interaction never moves when other users or rows come or go."""
    return pd.util.hash_pandas_object(frame, index=False, hash_key=f"{salt}{seed:015d}"[-16:]).to_numpy()


def split_users(inter: pd.DataFrame, shares: tuple[float, float, float], seed: int) -> pd.Series:
    """Label each user's interactions train/valid/test by the shares, in a seeded order of their own. Each row's
    place comes from a hash of (seed, user, item), not from a draw of one generator over all users: with new data,
    the rows of a user whose history did not change keep their split, so a champion trained on an earlier version
    has not trained on the test rows it is compared on now."""
    if inter.empty:
        return pd.Series([], index=inter.index, dtype=object, name="split")
    keys = _stable_keys(inter[["user_id", "item_id"]], "r", seed)
    codes, _ = pd.factorize(inter["user_id"])
    order = np.lexsort((keys, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    cut = {int(n): split_sizes(int(n), shares) for n in np.unique(sizes)}
    train = np.repeat([cut[int(n)][0] for n in sizes], sizes)
    valid = np.repeat([cut[int(n)][1] for n in sizes], sizes)
    labels = np.where(rank < train, "train", np.where(rank < train + valid, "valid", "test")).astype(object)
    out = np.empty(len(order), dtype=object)
    out[order] = labels
    return pd.Series(out, index=inter.index, name="split")


def hold_out_users(inter: pd.DataFrame, split: pd.Series, share: float, seed: int) -> pd.Series:
    """A seeded share of the users (at least one when share > 0, never all) get every interaction in test: new to
    the target. They are the users with the smallest hash of (seed, user): a user added to or gone from the data
    moves the cut by at most one user, so the newcomers of one data version are (nearly) those of the next, and a
    champion was not trained on the newcomers it is compared on."""
    if share <= 0:
        return split
    users = pd.Series(np.sort(inter["user_id"].unique()))
    n = min(max(1, int(round(share * len(users)))), len(users) - 1)
    chosen = users.to_numpy()[np.argsort(_stable_keys(users, "n", seed), kind="stable")[:n]]
    return split.where(~inter["user_id"].isin(set(chosen)), "test")


def build_features(
    unified: UnifiedVersion, config: PipelineConfig, layout: StateLayout, run_key: str, seed: int | None = None
) -> FeatureSet:
    """Write features/<run_key>/: source interactions, per-target train/valid/test, the item and user index."""
    udir = Path(unified.dir)
    path = udir / "interactions.parquet"
    users = pd.read_parquet(udir / "users.parquet")
    items = pd.read_parquet(udir / "items.parquet")
    seed = config.features.seed if seed is None else seed
    unified_rows = unified.interaction_rows()
    # One platform's positive rows read at a time (the filter is applied as the file is read): holding every
    # platform's rows, their positive rows and each platform's slice at once was the stage's peak
    # (docs/results/2026-12-06-ingest-50m.md).
    kept: dict[str, pd.DataFrame] = {}
    for p in config.platforms:
        positive = pd.read_parquet(path, filters=[("platform", "==", p.name), ("label", "==", 1)])
        kept[p.name] = k_core(positive, config.features.min_interactions)
        if kept[p.name].empty:
            refuse_empty(p.name, unified_rows.get(p.name, 0), len(positive), config)
        del positive
    item_ids = np.sort(np.unique(np.concatenate([k["item_id"].unique() for k in kept.values()])))
    item_index = pd.DataFrame({"item_id": item_ids, "item_idx": np.arange(len(item_ids))})
    item_table = item_index.merge(items, on="item_id", how="left")
    counts: dict[str, Any] = {}
    final = layout.features / run_key
    with atomic_dir(final) as out:
        item_table.to_parquet(out / "items.parquet", index=False)
        for platform in config.platforms:
            # each platform's kept rows leave memory as they are written
            frame = kept.pop(platform.name).merge(item_index, on="item_id")
            if platform.role == "target":
                frame = split_target(frame, platform.name, config, seed)
            else:
                frame = frame.assign(split="train")
            frame.to_parquet(out / f"{platform.name}.interactions.parquet", index=False)
            write_platform_users(users, platform.name, frame["user_id"].unique(), out)
            counts[platform.name] = platform_counts(
                platform.role,
                unified_rows.get(platform.name, 0),
                int(frame["user_id"].nunique()),
                int(frame["item_id"].nunique()),
                frame["split"].value_counts().to_dict(),
            )
            log.info("features %s: %s", platform.name, counts[platform.name])
        manifest = write_manifest(out, run_key, seed, len(item_ids), counts, unified)
    return manifest


def split_target(frame: pd.DataFrame, platform: str, config: PipelineConfig, seed: int) -> pd.DataFrame:
    """A target's rows with their split: each user's rows cut train/valid/test, then the users held out whole as
    new to the target put wholly in test."""
    split = split_users(frame, config.features.split, seed)
    return frame.assign(split=hold_out_users(frame, split, config.new_users_share(platform), seed))


def write_platform_users(users: pd.DataFrame, platform: str, present: Any, out: Path) -> None:
    """The platform's unified users who kept interactions, as `<platform>.users.parquet`."""
    platform_users = users[users["platform"] == platform]
    platform_users[platform_users["user_id"].isin(set(present))].to_parquet(
        out / f"{platform}.users.parquet", index=False
    )


def write_manifest(
    out: Path, run_key: str, seed: int, n_items: int, counts: dict[str, Any], unified: UnifiedVersion
) -> FeatureSet:
    manifest = FeatureSet(
        dir=str(out), run_key=run_key, seed=seed, n_items=int(n_items), platforms=counts, unified=unified.dir
    )
    (out / "manifest.json").write_text(json.dumps(manifest.to_xcom(), indent=2))
    return manifest


def refuse_empty(platform: str, unified: int, positive: int, config: PipelineConfig) -> None:
    """A platform with nothing left would train on nothing and fail far downstream: say so here."""
    raise ValueError(
        f"platform {platform}: no interactions left for training ({unified:,} unified, {positive:,} positive, 0 "
        f"after the {config.features.min_interactions}-core filter): nothing to train or evaluate on"
    )


def platform_counts(role: str, interactions_in: int, users: int, items: int, splits: dict[str, int]) -> dict[str, Any]:
    """A platform's line of the feature set's manifest (a target's also per split)."""
    return {
        "role": role,
        "interactions_in": int(interactions_in),
        "interactions": int(sum(splits.values())),
        "users": int(users),
        "items": int(items),
        **({s: int(splits.get(s, 0)) for s in SPLITS} if role == "target" else {}),
    }


def disliked(unified_dir: str | None, platform: str, users: list[str]) -> pd.DataFrame:
    """(user_id, item_id) of what these users of a platform rated below its positive threshold: seen, and not liked.
    Never a signal to learn from (training reads positives only); what they must not be recommended back."""
    if not unified_dir or not users:
        return pd.DataFrame({"user_id": pd.Series(dtype=object), "item_id": pd.Series(dtype=object)})
    return pd.read_parquet(
        Path(unified_dir) / "interactions.parquet",
        columns=["user_id", "item_id"],
        filters=[("platform", "==", platform), ("label", "==", 0), ("user_id", "in", list(users))],
    ).drop_duplicates()


def interaction_weights(frame: pd.DataFrame, rating_weight: float) -> np.ndarray:
    """What each interaction counts in a history: 1 + w * (rating - 4), at least 0.1, with w = `rating_weight`; 1
    throughout when w is 0 or the frame has no ratings (a missing rating counts as 4: 1 too)."""
    if not rating_weight or "rating" not in frame:
        return np.ones(len(frame), dtype=np.float32)
    rating = pd.to_numeric(frame["rating"], errors="coerce").fillna(RATING_PIVOT).to_numpy()
    return np.maximum(1.0 + rating_weight * (rating - RATING_PIVOT), 0.1).astype(np.float32)


class PlatformData:
    """One platform's training set in matrix form: users by the unified item index."""

    @classmethod
    def of(cls, features: FeatureSet, platform: str) -> PlatformData:
        return cls(Path(features.dir), platform, features.n_items)

    def __init__(self, features_dir: Path, platform: str, n_items: int):
        self.frame = pd.read_parquet(Path(features_dir) / f"{platform}.interactions.parquet")
        self.users = pd.read_parquet(Path(features_dir) / f"{platform}.users.parquet")
        self.user_ids = np.sort(self.frame["user_id"].unique())
        self.n_items = n_items
        self._row = pd.Series(np.arange(len(self.user_ids)), index=self.user_ids)

    def matrix(self, *splits: str, rating_weight: float = 0.0) -> sp.csr_matrix:
        """User x item matrix of the given splits (all interactions when none is given).

        Binary by default; with `rating_weight` w an interaction counts 1 + w * (rating - 4) (at least 0.1): on the
        1-5 scale a typical positive (4) counts 1, as does an item of a history given without ratings at serving.
        """
        return self.rows_matrix(self.frame["split"].isin(splits).to_numpy() if splits else None, rating_weight)

    def rows_matrix(self, mask: np.ndarray | None, rating_weight: float = 0.0) -> sp.csr_matrix:
        """User x item matrix of the interactions where `mask` holds (all when None), weighted as `matrix`."""
        frame = self.frame if mask is None else self.frame[mask]
        rows = self._row[frame["user_id"]].to_numpy()
        shape = (len(self.user_ids), self.n_items)
        return sp.csr_matrix(
            (interaction_weights(frame, rating_weight), (rows, frame["item_idx"].to_numpy())), shape=shape
        )

    def profiles(self) -> pd.DataFrame:
        """Each user's profile (age, gender, occupation), rows aligned with the matrices' rows (empty if unknown)."""
        columns = [c for c in PROFILE_FIELDS if c in self.users]
        return self.users.set_index("user_id")[columns].reindex(self.user_ids).reset_index()

    def link_ids(self) -> np.ndarray:
        """Each user's link id (None where the user cannot be linked), rows aligned with the matrices' rows."""
        if "link_id" not in self.users:
            return np.full(len(self.user_ids), None, dtype=object)
        linked = self.users.set_index("user_id")["link_id"].reindex(self.user_ids)
        return linked.astype(object).where(linked.notna(), None).to_numpy()

    def item_mask(self) -> np.ndarray:
        """Items that occur on this platform: the candidates its users are ranked over."""
        mask = np.zeros(self.n_items, dtype=bool)
        mask[self.frame["item_idx"].unique()] = True
        return mask


def sources_linked(features: FeatureSet, target: PlatformData, sources: list[str]) -> np.ndarray:
    """Per target user (matrix rows): on how many of the sources the same person has a history (by link id)."""
    mine = target.link_ids()
    counts = np.zeros(len(mine), dtype=np.int64)
    for name in sources:
        theirs = {link for link in PlatformData.of(features, name).link_ids() if link is not None}
        counts += np.fromiter((link is not None and link in theirs for link in mine), dtype=bool, count=len(mine))
    return counts
