"""Fitting the recommender's short-history parts and choosing their weights on the target's valid split.

A profile prior, a co-occurrence update, a position shift and item content (recommender/short_history.py) are fitted
on the sources' and the target's users; their weights are chosen on the target's users' valid items by simulating
short histories from their train interactions. The pipeline's fine-tune stage and the cold-start protocol (bench/)
both fit them here, so the served model and the benchmarked one are the same.
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

from transfer_rec.config import ShortHistoryConfig
from transfer_rec.metrics.ranking import candidate_ndcg_rows, judges
from transfer_rec.recommender.content import ContentSimilarity, content_vectors
from transfer_rec.recommender.profile import ProfileConfig, ProfilePrior, profile_vocabulary
from transfer_rec.recommender.short_history import (
    ShortHistoryParts,
    cooccurrence_lift,
    cooccurrences,
    position_shift,
    pruned_lift,
)
from transfer_rec.recommender.transfer import TransferRecommender
from transfer_rec.runtime.threads import in_blocks
from transfer_rec.schema.unified import PROFILE_FIELDS

log = logging.getLogger(__name__)

# short histories simulated on the target's users to choose the weights (0: the profile alone; it does not move the
# weights, whose parts it never reaches, but it counts in the choice of the source's share)
SIMULATED_LENGTHS = (0, 1, 3, 5)
# the source's share in the profile prior and the co-occurrences, most source first (a tie keeps the source)
SOURCE_SHARES = (1.0, 0.5, 0.0)
MIX_ROWS = 1024  # rows of the mixed lift made at a time (mixed_lift)
K = 10


@dataclass
class ShortHistoryData:
    """What the short-history parts learn from: the target's users (binary train and valid matrices, profiles and
    time-ordered train items, rows aligned), the target's catalogue, the source users (an empty matrix for a
    target-only model) and the item descriptions."""

    n_items: int
    catalogue: np.ndarray  # bool mask: items of the target platform
    train: sp.csr_matrix
    valid: sp.csr_matrix
    users: pd.DataFrame  # profiles, rows aligned with train / valid
    ordered: list[np.ndarray]  # each user's train items, earliest first
    source: sp.csr_matrix
    source_users: pd.DataFrame
    items: pd.DataFrame  # item_idx, title, year, genres

    def without_source(self) -> ShortHistoryData:
        """The same target with no source users: what a target-only model may learn from."""
        return replace(
            self,
            source=sp.csr_matrix((0, self.n_items), dtype=np.float32),
            source_users=pd.DataFrame({"user_id": pd.Series(dtype=object)}),
        )


def ordered_items(frame: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    """Each user's items (rows of `frame`: user_id, item_idx, timestamp), earliest first, in the order of user_ids."""
    frame = frame.sort_values(["user_id", "timestamp", "item_idx"], kind="stable")
    groups = {u: g["item_idx"].to_numpy() for u, g in frame.groupby("user_id", sort=False)}
    return [groups.get(u, np.zeros(0, dtype=np.int64)) for u in user_ids]


def first_items(ordered: list[np.ndarray], n_items: int, first: int | None) -> sp.csr_matrix:
    """Binary matrix of each user's `first` items (all of them when None)."""
    picked = [o if first is None else o[:first] for o in ordered]
    indptr = np.concatenate([[0], np.cumsum([len(p) for p in picked])])
    indices = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(picked), n_items))


def simulations(model: TransferRecommender, data: ShortHistoryData, users_max: int) -> list[dict[str, Any]]:
    """The target's users with valid items (at most users_max and valid_users_max of them, a seeded sample past
    it), given their n earliest train items (and their whole train history).

    The models were fitted on these users' train items, so the simulation flatters the history-based part a little;
    new users are never looked at."""
    users = judges(data.valid, min(users_max, model.config.valid_users_max), model.config.seed)
    ordered = [data.ordered[u] for u in users]
    profiles = data.users.iloc[users].reset_index(drop=True)
    parts, model.short_history = model.short_history, None
    sims = []
    train, valid = data.train[users], data.valid[users]
    for n in (*SIMULATED_LENGTHS, None):
        history = first_items(ordered, data.n_items, n)
        base = model.candidate_scores(history)
        # as for a new user: everything after the n first items is relevant (the whole train: the warm protocol)
        relevant = valid if n is None else sp.csr_matrix((train - history) + valid)
        sims.append(
            {
                "history": history,
                "profiles": profiles,
                "base": base,
                "n": n,
                "full": n is None,
                "exclude": history,
                "relevant": relevant,
                "users": users,
            }
        )
    model.short_history = parts
    return sims


class _Fitted:
    """The parts fitted on one data set, cached: the source-share guard and the variants of the cold-start protocol
    reuse them."""

    def __init__(
        self, data: ShortHistoryData, settings: ShortHistoryConfig, seed: int, shared: dict[str, Any] | None = None
    ):
        self.data, self.settings, self.seed = data, settings, seed
        self.cache: dict[Any, Any] = {}
        # what depends on the source users alone, which every fold of the cross-fitting has too: one dict for the
        # fits on subsets of the same target (at 10 M source interactions, counting them took up to ~17 s a time)
        self.shared: dict[str, Any] = {} if shared is None else shared

    def with_data(self, data: ShortHistoryData) -> _Fitted:
        """Fits on other target users with the same source users (cross-fitting's folds), sharing their parts."""
        return _Fitted(data, self.settings, self.seed, self.shared)

    def prior(self, with_source: bool) -> ProfilePrior:
        """The profile prior learned from the target's users and, `with_source`, the source's."""
        if ("prior", with_source) not in self.cache:
            data = self.data
            vocabulary = profile_vocabulary(data.source_users, data.users)
            platforms = [(data.train, data.users)]
            if with_source:
                platforms.insert(0, (data.source, data.source_users))
            started = time.perf_counter()
            config = ProfileConfig(
                l2=self.settings.prior_l2,
                learning_rate=self.settings.prior_learning_rate,
                steps=self.settings.prior_steps,
                seed=self.seed,
            )
            self.cache[("prior", with_source)] = ProfilePrior(data.n_items, vocabulary, config).fit(platforms)
            log.info("profile prior (source: %s) fitted in %.1f s", with_source, time.perf_counter() - started)
        return self.cache[("prior", with_source)]

    def lift(self, with_source: bool) -> np.ndarray | sp.csr_matrix:
        if ("lift", with_source) not in self.cache and self.data.n_items > self.settings.lift_dense_max:
            # pruned (sparse) past the dense size: each fit counts the source users again, as nothing items x items
            # may be kept between fits
            matrices = [self.data.source, self.data.train] if with_source else [self.data.train]
            started = time.perf_counter()
            self.cache[("lift", with_source)] = pruned_lift(matrices, self.settings.lift_neighbours)
            log.info("pruned lift (source: %s) in %.1f s", with_source, time.perf_counter() - started)
        if ("lift", with_source) not in self.cache:
            counted = []
            if with_source:
                if "source_cooccurrences" not in self.shared:
                    self.shared["source_cooccurrences"] = cooccurrences(self.data.source)
                counted.append(self.shared["source_cooccurrences"])
            self.cache[("lift", with_source)] = cooccurrence_lift([self.data.train], counted=counted)
        return self.cache[("lift", with_source)]

    def shift(self, max_n: int) -> np.ndarray:
        """What the target's users take after their first 1 .. max_n items (position_shift): always the target's own,
        for transfer too (how users go on after signing up is the platform's own)."""
        if ("shift", max_n) not in self.cache:
            self.cache[("shift", max_n)] = position_shift(self.data.ordered, self.data.n_items, max_n)
        return self.cache[("shift", max_n)]


def _parts(
    model: TransferRecommender,
    fitted: _Fitted,
    use_profile: bool,
    use_lift: bool,
    content: ContentSimilarity | None,
    with_source: bool,
    share: float,
    use_shift: bool = False,
) -> ShortHistoryParts:
    """Parts whose prior and co-occurrences are `share` x the pooled ones + the rest the target's own; with
    `use_shift` (and a prior) the target's position shift for histories of 1 .. warm_min_history - 1 items."""
    prior = lift = shift = None
    if use_profile:
        prior = fitted.prior(with_source)
        if with_source and share < 1.0:
            prior = prior.mixed(fitted.prior(False), share)
        if use_shift:
            shift = fitted.shift(max(model.config.warm_min_history - 1, 1))
    if use_lift:
        lift = fitted.lift(with_source)
        if with_source and share < 1.0:
            lift = mixed_lift(lift, fitted.lift(False), share)
    parts = ShortHistoryParts(prior, content, lift, shift)
    # Two regimes: these parts serve histories shorter than warm_min_history, the user-kernel part (when valid chose
    # it) the longer ones; on warm histories these parts would only be held to the warm floor.
    parts.short_below = model.config.warm_min_history
    return parts


def mixed_lift(
    pooled: np.ndarray | sp.csr_matrix, own: np.ndarray | sp.csr_matrix, share: float
) -> np.ndarray | sp.csr_matrix:
    """share x pooled + (1 - share) x own, the same float32 values as that expression, made a block of rows at a
    time into the result when dense: the expression held two more item x item temporaries (3.2 GB at 20,000 items).
    Pruned lifts mix sparsely (each term's constant per row mixes into one, which the prior's z-score removes)."""
    if sp.issparse(pooled):
        return sp.csr_matrix(pooled * np.float32(share) + own * np.float32(1.0 - share), dtype=np.float32)
    mixed = np.multiply(own, 1.0 - share, dtype=np.float32)

    def add(rows: slice) -> None:
        mixed[rows] += share * pooled[rows]

    in_blocks(add, len(mixed), MIX_ROWS)
    return mixed


def _without_users(data: ShortHistoryData, rows: np.ndarray) -> ShortHistoryData:
    keep = np.setdiff1d(np.arange(data.users.shape[0]), rows)
    return replace(
        data,
        train=data.train[keep],
        valid=data.valid[keep],
        users=data.users.iloc[keep].reset_index(drop=True),
        ordered=[data.ordered[u] for u in keep],
    )


def _sim_rows(sim: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    return {
        **sim,
        "history": sim["history"][rows],
        "profiles": sim["profiles"].iloc[rows].reset_index(drop=True),
        "base": sim["base"][rows],
        "exclude": sim["exclude"][rows],
        "relevant": sim["relevant"][rows],
        "users": sim["users"][rows],
    }


def choose_source_share(
    model: TransferRecommender,
    fitted: _Fitted,
    use_lift: bool,
    content: ContentSimilarity | None,
    sims: list[dict[str, Any]],
    use_shift: bool = False,
) -> tuple[float, dict]:
    """The source's share in the profile prior and co-occurrences, chosen by two-fold cross-fitting over the users
    with valid items: parts fitted without one half (source users always in) are scored on that half's simulated
    short histories, their weights chosen on coarse grids. Fitting and scoring on the same users would flatter the
    target's own prior, which has seen them."""
    n_users = len(sims[0]["users"])
    if n_users < 2:
        log.info("short-history parts: %d user(s) with valid items, too few to cross-fit the source share: 1", n_users)
        return 1.0, {"share": 1.0, "skipped": f"{n_users} user(s) with valid items; two folds need 2"}
    fold_of = np.random.default_rng(model.config.seed).permutation(n_users) % 2
    ndcg = _simulation_ndcg(model)
    totals = dict.fromkeys(SOURCE_SHARES, 0.0)
    for fold in (0, 1):
        rows = np.flatnonzero(fold_of == fold)
        held = [_sim_rows(s, rows) for s in sims]
        part_fitted = fitted.with_data(_without_users(fitted.data, sims[0]["users"][rows]))
        for share in SOURCE_SHARES:
            parts = _parts(model, part_fitted, True, use_lift, content, True, share, use_shift)
            model.short_history = parts
            report = parts.select_weights(held, model.candidates, ndcg, coarse=True)
            totals[share] += report["short_valid_ndcg"] * len(rows)
    by_share = {share: total / n_users for share, total in totals.items()}  # the mean over all users
    share = max(SOURCE_SHARES, key=lambda s: (round(by_share[s], 9), s))
    log.info(
        "short-history parts: source share %.2f chosen by cross-fitting (short-history valid NDCG@%d by share: %s)",
        share,
        K,
        {s: round(v, 4) for s, v in by_share.items()},
    )
    return share, {"share": share, "short_valid_ndcg": by_share}


def attach(
    model: TransferRecommender,
    fitted: _Fitted,
    use_profile: bool,
    use_lift: bool,
    parts: tuple[str, ...],
    with_source: bool,
    sims: list[dict[str, Any]],
    cache_dir: Path | None,
    use_shift: bool = False,
) -> dict[str, Any]:
    """Give the model a profile prior and/or a content similarity and choose their weights on valid; with
    `use_shift`, the prior also learns what users take after their first items (position_shift).

    With the source, the prior and the co-occurrences are a mix of the pooled ones (source and target users) and
    the target's own; the source's share is chosen among SOURCE_SHARES (choose_source_share): a guard against
    negative transfer, where a source whose users' tastes or items do not match the target's gets share 0."""
    if not use_profile and not parts:
        model.short_history = None
        return {}
    content = ContentSimilarity(content_vectors(fitted.data.items, parts, cache_dir)) if parts else None
    guard = None
    share = 1.0
    if with_source and use_profile:
        key = ("share", use_lift, parts, use_shift)
        if key not in fitted.cache:
            fitted.cache[key] = choose_source_share(model, fitted, use_lift, content, sims, use_shift)
        share, guard = fitted.cache[key]
    model.short_history = _parts(model, fitted, use_profile, use_lift, content, with_source, share, use_shift)
    report = model.short_history.select_weights(sims, model.candidates, _simulation_ndcg(model))
    if guard is not None:
        report["source_share"] = guard
    return report


def _simulation_ndcg(model: TransferRecommender):
    def ndcg(scores: np.ndarray, sim: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        return candidate_ndcg_rows(scores, sim["exclude"][rows], sim["relevant"][rows], K, model.candidates)

    return ndcg


def fitter(data: ShortHistoryData, settings: ShortHistoryConfig, seed: int) -> _Fitted:
    """A cache of the parts fitted on `data`, for `attach` calls that share them."""
    return _Fitted(data, settings, seed)


def fit_short_history(
    model: TransferRecommender,
    data: ShortHistoryData,
    settings: ShortHistoryConfig,
    with_source: bool,
    cache_dir: Path | None,
    seed: int,
) -> dict[str, Any]:
    """Give a fine-tuned model the short-history parts `settings` asks for, fitted on all of the target's users
    (train items; valid for the weights) and, `with_source`, the source's. Returns the chosen weights."""
    started = time.perf_counter()
    has_profiles = bool(data.users.reindex(columns=list(PROFILE_FIELDS)).notna().any().any())
    use_profile = settings.profile_prior and has_profiles
    if settings.profile_prior and not has_profiles:
        log.info("the target's users carry no profile (%s): no profile prior", ", ".join(PROFILE_FIELDS))
    if not use_profile and not settings.content:
        model.short_history = None
        return {}
    if not with_source:
        data = data.without_source()
    selection = attach(
        model,
        fitter(data, settings, seed),
        use_profile,
        use_profile and settings.cooccurrence,
        tuple(settings.content),
        with_source,
        simulations(model, data, settings.simulated_users_max),
        cache_dir,
        settings.position_shift,
    )
    log.info("short-history parts fitted in %.1f s: %s", time.perf_counter() - started, selection)
    return selection
