"""Side parts of the transfer model for short histories, fitted next to a fine-tuned model.

A profile prior, a co-occurrence update and item content (tasks/models/hybrid.py) are fitted on the source's and the
target's users; their weights are chosen on the target's warm users' valid items by simulating short histories
from their train interactions. The cold-start protocol (tasks/coldstart.py) and the pipeline's fine-tune stage
(tasks/train.py) both fit them here, so the served model and the benchmarked one are the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.config import PipelineConfig
from tasks.metrics import evaluate_scores
from tasks.models.content import ContentSimilarity, content_vectors
from tasks.models.hybrid import SideComponents, cooccurrence_lift
from tasks.models.profile import PROFILE_FIELDS, ProfilePrior, profile_vocabulary
from tasks.models.transfer import TransferRecommender

log = logging.getLogger(__name__)

SIMULATED_LENGTHS = (1, 3, 5)   # short histories simulated on warm users to choose the side weights
NEW_USER_SHARE = 0.2
K = 10


@dataclass
class ColdSplit:
    """Warm users' matrices and profiles, new users' time-ordered items and profiles, the target's catalogue."""
    n_items: int
    catalogue: np.ndarray             # bool mask: items of the target platform (all its users)
    warm: dict[str, sp.csr_matrix]    # train / valid / test, rows = warm users
    warm_users: pd.DataFrame
    warm_ordered: list[np.ndarray]    # each warm user's train items, earliest first
    new_users: pd.DataFrame
    new_ordered: list[np.ndarray]     # each new user's items, earliest first
    source: sp.csr_matrix
    source_users: pd.DataFrame
    items: pd.DataFrame


def ordered_items(frame: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    frame = frame.sort_values(["user_id", "timestamp", "item_idx"], kind="stable")
    groups = {u: g["item_idx"].to_numpy() for u, g in frame.groupby("user_id", sort=False)}
    return [groups.get(u, np.zeros(0, dtype=np.int64)) for u in user_ids]


def _matrix(frame: pd.DataFrame, user_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
    row = pd.Series(np.arange(len(user_ids)), index=user_ids)
    return sp.csr_matrix((np.ones(len(frame), dtype=np.float32), (row[frame["user_id"]].to_numpy(),
                                                                  frame["item_idx"].to_numpy())),
                         shape=(len(user_ids), n_items))


def _profiles(users: pd.DataFrame, user_ids: np.ndarray) -> pd.DataFrame:
    return users.set_index("user_id").reindex(user_ids).reset_index()


def cold_split(features: dict[str, Any], config: PipelineConfig, seed: int,
               share: float = NEW_USER_SHARE, target: str | None = None,
               source: str | None = None, with_source: bool = True) -> ColdSplit:
    """Hold out `share` of the target's users (seeded) as new users; the rest keep the features' split. Without
    `with_source` the source's users are left out (an empty source), as for a target-only model."""
    folder, n_items = Path(features["dir"]), features["n_items"]
    target, source = target or config.targets[0].name, source or config.source.name
    frame = pd.read_parquet(folder / f"{target}.interactions.parquet")
    users = pd.read_parquet(folder / f"{target}.users.parquet")
    user_ids = np.sort(frame["user_id"].unique())
    rng = np.random.default_rng(seed)
    new = np.sort(rng.permutation(user_ids)[:int(round(share * len(user_ids)))])
    warm_ids = np.setdiff1d(user_ids, new)
    warm_frame, new_frame = frame[frame["user_id"].isin(set(warm_ids))], frame[frame["user_id"].isin(set(new))]
    catalogue = np.zeros(n_items, dtype=bool)
    catalogue[frame["item_idx"].unique()] = True
    if with_source:
        source_frame = pd.read_parquet(folder / f"{source}.interactions.parquet")
        source_users = pd.read_parquet(folder / f"{source}.users.parquet")
    else:
        source_frame = pd.DataFrame({"user_id": pd.Series(dtype=object), "item_idx": pd.Series(dtype=np.int64)})
        source_users = pd.DataFrame({"user_id": pd.Series(dtype=object)})
    source_ids = np.sort(source_frame["user_id"].unique())
    return ColdSplit(
        n_items=n_items, catalogue=catalogue,
        warm={s: _matrix(warm_frame[warm_frame["split"] == s], warm_ids, n_items) for s in ("train", "valid", "test")},
        warm_users=_profiles(users, warm_ids),
        warm_ordered=ordered_items(warm_frame[warm_frame["split"] == "train"], warm_ids),
        new_users=_profiles(users, new), new_ordered=ordered_items(new_frame, new),
        source=_matrix(source_frame, source_ids, n_items),
        source_users=_profiles(source_users, source_ids),
        items=pd.read_parquet(folder / "items.parquet"))


def first_items(ordered: list[np.ndarray], n_items: int, first: int | None) -> sp.csr_matrix:
    """Binary matrix of each user's `first` items (all of them when None)."""
    picked = [o if first is None else o[:first] for o in ordered]
    indptr = np.concatenate([[0], np.cumsum([len(p) for p in picked])])
    indices = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(picked), n_items))


def full_scores(candidate_scores: np.ndarray, candidates: np.ndarray, n_items: int) -> np.ndarray:
    out = np.full((candidate_scores.shape[0], n_items), -np.inf)
    out[:, candidates] = candidate_scores
    return out


def simulations(model: TransferRecommender, split: ColdSplit) -> list[dict[str, Any]]:
    """Warm users with valid items, given their n earliest train items (and their whole train history).

    The models were fitted on these users' train items, so the simulation flatters the history-based part a little;
    the new users themselves are never looked at."""
    users = np.flatnonzero(np.diff(split.warm["valid"].indptr) > 0)
    ordered = [split.warm_ordered[u] for u in users]
    profiles = split.warm_users.iloc[users].reset_index(drop=True)
    side, model.side = model.side, None
    sims = []
    train, valid = split.warm["train"][users], split.warm["valid"][users]
    for n in (*SIMULATED_LENGTHS, None):
        history = first_items(ordered, split.n_items, n)
        base = model.score(history)[:, model.candidates]
        # as for a new user: everything after the n first items is relevant (the whole train: the warm protocol)
        relevant = valid if n is None else sp.csr_matrix((train - history) + valid)
        sims.append({"history": history, "profiles": profiles, "base": base, "n": n, "full": n is None,
                     "exclude": history, "relevant": relevant})
    model.side = side
    return sims


def attach_side(model: TransferRecommender, split: ColdSplit, use_profile: bool, use_lift: bool,
                parts: tuple[str, ...], with_source: bool, sims: list[dict[str, Any]], cache_dir: Path | None,
                priors: dict[Any, Any]) -> dict[str, Any]:
    """Give the model a profile prior and/or a content similarity and choose their weights on warm valid."""
    if not use_profile and not parts:
        model.side = None
        return {}
    prior = None
    if use_profile:
        if with_source not in priors:
            vocabulary = profile_vocabulary(split.source_users, split.warm_users)
            platforms = [(split.warm["train"], split.warm_users)]
            if with_source:
                platforms.insert(0, (split.source, split.source_users))
            started = time.perf_counter()
            priors[with_source] = ProfilePrior(split.n_items, vocabulary).fit(platforms)
            log.info("profile prior (source: %s) fitted in %.1f s", with_source, time.perf_counter() - started)
        prior = priors[with_source]
    lift = None
    if use_lift:
        key = ("lift", with_source)
        if key not in priors:
            priors[key] = cooccurrence_lift([split.source, split.warm["train"]] if with_source
                                            else [split.warm["train"]])
        lift = priors[key]
    content = ContentSimilarity(content_vectors(split.items, parts, cache_dir)) if parts else None
    model.side = SideComponents(prior, content, lift)
    # Two regimes: side parts serve histories shorter than warm_min_history, the user-kernel part (when valid
    # chose it) the longer ones. Side parts on warm histories were held to the warm floor and chose small weights
    # (on top of the kernel part ~none: new users lost a quarter of their NDCG@10 at k = 1).
    model.side.short_below = model.config.warm_min_history

    def ndcg(scores: np.ndarray, sim: dict[str, Any]) -> float:
        full = full_scores(scores, model.candidates, split.n_items)
        return float(np.mean(evaluate_scores(full, sim["exclude"], sim["relevant"], K)["ndcg"]))

    return model.side.select_weights(sims, model.candidates, ndcg)


def fit_side_parts(model: TransferRecommender, features: dict[str, Any], config: PipelineConfig, target: str,
                   with_source: bool, cache_dir: Path | None, source: str | None = None) -> dict[str, Any]:
    """Give a fine-tuned model the side parts `config.cold_start` asks for, fitted on all of the target's users
    (train items; valid for the weights) and, `with_source`, the source's (`source`: its name in the features folder,
    by default the config's source platform). Returns the chosen weights."""
    wanted = config.cold_start
    started = time.perf_counter()
    split = cold_split(features, config, config.features.seed, share=0.0, target=target, source=source,
                       with_source=with_source)
    has_profiles = bool(split.warm_users.reindex(columns=list(PROFILE_FIELDS)).notna().any().any())
    use_profile = wanted.profile_prior and has_profiles
    if wanted.profile_prior and not has_profiles:
        log.info("%s users carry no profile (%s): no profile prior", target, ", ".join(PROFILE_FIELDS))
    if not use_profile and not wanted.content:
        model.side = None
        return {}
    selection = attach_side(model, split, use_profile, use_profile and wanted.cooccurrence, tuple(wanted.content),
                            with_source, simulations(model, split), cache_dir, {})
    log.info("side parts of %s fitted in %.1f s: %s", target, time.perf_counter() - started, selection)
    return selection
