"""Side parts of the transfer model for short histories, fitted next to a fine-tuned model.

A profile prior, a co-occurrence update and item content (tasks/models/hybrid.py) are fitted on the source's and the
target's users; their weights are chosen on the target's warm users' valid items by simulating short histories
from their train interactions. The cold-start protocol (tasks/coldstart.py) and the pipeline's fine-tune stage
(tasks/train.py) both fit them here, so the served model and the benchmarked one are the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.config import PipelineConfig
from tasks.metrics import evaluate_scores
from tasks.models.content import ContentSimilarity, content_vectors
from tasks.models.hybrid import SideComponents, cooccurrence_lift, position_shift
from tasks.models.profile import PROFILE_FIELDS, ProfilePrior, profile_vocabulary
from tasks.models.transfer import TransferRecommender

log = logging.getLogger(__name__)

# short histories simulated on warm users to choose the side weights (0: the profile alone; it does not move the
# weights, whose parts it never reaches, but it counts in the choice of the source's share)
SIMULATED_LENGTHS = (0, 1, 3, 5)
# the source's share in the profile prior and the co-occurrences (attach_side), most source first
SOURCE_SHARES = (1.0, 0.5, 0.0)
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
               source: str | None = None, with_source: bool = True, warm_share: float = 1.0) -> ColdSplit:
    """Hold out `share` of the target's users (seeded) as new users; the rest keep the features' split. Without
    `with_source` the source's users are left out (an empty source), as for a target-only model. `warm_share` < 1
    keeps only that share of the other users (seeded, drawn after the new users, so these stay the same): a smaller
    target platform with the same new users."""
    if not 0.0 < warm_share <= 1.0:
        raise ValueError(f"cold_split: warm_share must be in (0, 1], got {warm_share}")
    folder, n_items = Path(features["dir"]), features["n_items"]
    target, source = target or config.targets[0].name, source or config.source.name
    frame = pd.read_parquet(folder / f"{target}.interactions.parquet")
    users = pd.read_parquet(folder / f"{target}.users.parquet")
    user_ids = np.sort(frame["user_id"].unique())
    rng = np.random.default_rng(seed)
    new = np.sort(rng.permutation(user_ids)[:int(round(share * len(user_ids)))])
    warm_ids = np.setdiff1d(user_ids, new)
    if warm_share < 1.0:
        warm_ids = np.sort(rng.permutation(warm_ids)[:max(1, int(round(warm_share * len(warm_ids))))])
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
                     "exclude": history, "relevant": relevant, "users": users})
    model.side = side
    return sims


def _fitted_prior(split: ColdSplit, with_source: bool, priors: dict[Any, Any]) -> ProfilePrior:
    """The profile prior learned from the target's users and, `with_source`, the source's (cached in `priors`)."""
    if with_source not in priors:
        vocabulary = profile_vocabulary(split.source_users, split.warm_users)
        platforms = [(split.warm["train"], split.warm_users)]
        if with_source:
            platforms.insert(0, (split.source, split.source_users))
        started = time.perf_counter()
        priors[with_source] = ProfilePrior(split.n_items, vocabulary).fit(platforms)
        log.info("profile prior (source: %s) fitted in %.1f s", with_source, time.perf_counter() - started)
    return priors[with_source]


def _fitted_lift(split: ColdSplit, with_source: bool, priors: dict[Any, Any]) -> np.ndarray:
    key = ("lift", with_source)
    if key not in priors:
        priors[key] = cooccurrence_lift([split.source, split.warm["train"]] if with_source else [split.warm["train"]])
    return priors[key]


def _fitted_shift(split: ColdSplit, max_n: int, priors: dict[Any, Any]) -> np.ndarray:
    """What the target's users take after their first 1 .. max_n items (position_shift): always the target's own,
    for transfer too (how users go on after signing up is the platform's own; the source's shift, from other
    years' sign-up pages, did about as well as none for the target's new users)."""
    key = ("shift", max_n)
    if key not in priors:
        priors[key] = position_shift(split.warm_ordered, split.n_items, max_n)
    return priors[key]


def _side(model: TransferRecommender, split: ColdSplit, use_profile: bool, use_lift: bool,
          content: ContentSimilarity | None, with_source: bool, share: float,
          priors: dict[Any, Any], use_shift: bool = False) -> SideComponents:
    """Side parts whose prior and co-occurrences are `share` x the pooled ones + the rest the target's own; with
    `use_shift` (and a prior) the target's position shift for histories of 1 .. warm_min_history - 1 items."""
    prior = lift = shift = None
    if use_profile:
        prior = _fitted_prior(split, with_source, priors)
        if with_source and share < 1.0:
            prior = prior.mixed(_fitted_prior(split, False, priors), share)
        if use_shift:
            shift = _fitted_shift(split, max(model.config.warm_min_history - 1, 1), priors)
    if use_lift:
        lift = _fitted_lift(split, with_source, priors)
        if with_source and share < 1.0:
            lift = share * lift + (1.0 - share) * _fitted_lift(split, False, priors)
    side = SideComponents(prior, content, lift, shift)
    # Two regimes: side parts serve histories shorter than warm_min_history, the user-kernel part (when valid chose
    # it) the longer ones. Side parts on warm histories were held to the warm floor and chose small weights (on top
    # of the kernel part ~none: new users lost a quarter of their NDCG@10 at k = 1).
    side.short_below = model.config.warm_min_history
    return side


def _without_users(split: ColdSplit, rows: np.ndarray) -> ColdSplit:
    keep = np.setdiff1d(np.arange(split.warm_users.shape[0]), rows)
    return replace(split, warm={name: m[keep] for name, m in split.warm.items()},
                   warm_users=split.warm_users.iloc[keep].reset_index(drop=True),
                   warm_ordered=[split.warm_ordered[u] for u in keep])


def _sim_rows(sim: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    return {**sim, "history": sim["history"][rows], "profiles": sim["profiles"].iloc[rows].reset_index(drop=True),
            "base": sim["base"][rows], "exclude": sim["exclude"][rows], "relevant": sim["relevant"][rows],
            "users": sim["users"][rows]}


def choose_source_share(model: TransferRecommender, split: ColdSplit, use_lift: bool,
                        content: ContentSimilarity | None, sims: list[dict[str, Any]],
                        use_shift: bool = False) -> tuple[float, dict]:
    """The source's share in the profile prior and co-occurrences, chosen by two-fold cross-fitting over the warm
    users with valid items: side parts fitted without one half (source users always in) are scored on that half's
    simulated short histories, their weights chosen on coarse grids (the full grids made the guard ~70 s on the
    protocol). Fitting and scoring on the same users would flatter the target's own prior, which has seen them (on
    planted data it then beat a far better pooled prior)."""
    n_users = len(sims[0]["users"])
    if n_users < 2:
        log.info("side parts: %d warm user(s) with valid items, too few to cross-fit the source share: 1", n_users)
        return 1.0, {"share": 1.0, "skipped": f"{n_users} warm user(s) with valid items; two folds need 2"}
    fold_of = np.random.default_rng(model.config.seed).permutation(n_users) % 2
    ndcg = _simulation_ndcg(model, split)
    totals = dict.fromkeys(SOURCE_SHARES, 0.0)
    for fold in (0, 1):
        rows = np.flatnonzero(fold_of == fold)
        fitted, held, priors = _without_users(split, sims[0]["users"][rows]), [_sim_rows(s, rows) for s in sims], {}
        for share in SOURCE_SHARES:
            side = _side(model, fitted, True, use_lift, content, True, share, priors, use_shift)
            model.side = side
            report = side.select_weights(held, model.candidates, ndcg, coarse=True)
            totals[share] += report["short_valid_ndcg"] * len(rows)
    by_share = {share: total / n_users for share, total in totals.items()}   # the mean over all users
    # the shares go from the most source to the least: a tie keeps the source
    share = max(SOURCE_SHARES, key=lambda s: (round(by_share[s], 9), s))
    log.info("side parts: source share %.2f chosen by cross-fitting (short-history valid NDCG@%d by share: %s)",
             share, K, {s: round(v, 4) for s, v in by_share.items()})
    return share, {"share": share, "short_valid_ndcg": by_share}


def attach_side(model: TransferRecommender, split: ColdSplit, use_profile: bool, use_lift: bool,
                parts: tuple[str, ...], with_source: bool, sims: list[dict[str, Any]], cache_dir: Path | None,
                priors: dict[Any, Any], use_shift: bool = False) -> dict[str, Any]:
    """Give the model a profile prior and/or a content similarity and choose their weights on warm valid; with
    `use_shift`, the prior also learns what users take after their first items (position_shift).

    With the source, the prior and the co-occurrences are a mix of the pooled ones (source and target users) and
    the target's own; the source's share is chosen among SOURCE_SHARES (choose_source_share): a guard against
    negative transfer, where a source whose users' tastes or items do not match the target's gets share 0."""
    if not use_profile and not parts:
        model.side = None
        return {}
    content = ContentSimilarity(content_vectors(split.items, parts, cache_dir)) if parts else None
    guard = None
    share = 1.0
    if with_source and use_profile:
        key = ("share", use_lift, parts, use_shift)
        if key not in priors:
            priors[key] = choose_source_share(model, split, use_lift, content, sims, use_shift)
        share, guard = priors[key]
    model.side = _side(model, split, use_profile, use_lift, content, with_source, share, priors, use_shift)
    report = model.side.select_weights(sims, model.candidates, _simulation_ndcg(model, split))
    if guard is not None:
        report["source_share"] = guard
    return report


def _simulation_ndcg(model: TransferRecommender, split: ColdSplit):
    def ndcg(scores: np.ndarray, sim: dict[str, Any]) -> float:
        full = full_scores(scores, model.candidates, split.n_items)
        return float(np.mean(evaluate_scores(full, sim["exclude"], sim["relevant"], K)["ndcg"]))
    return ndcg


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
                            with_source, simulations(model, split), cache_dir, {}, wanted.position_shift)
    log.info("side parts of %s fitted in %.1f s: %s", target, time.perf_counter() - started, selection)
    return selection
