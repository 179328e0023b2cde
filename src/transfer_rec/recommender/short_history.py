"""Short-history parts of the transfer recommender: a profile prior, its updates by a short history, and item content.

For a user with n history items, over the target's candidate items:

    score = base(history) + w_profile(n) * z(bayes) + w_content(n) * z(content(history))
    bayes = prior(profile) + delta * after(n, i) + gamma * sum over history items h of log lift(i, h)
    w(n) = a * (c / (c + n))^2        (a: weight at n = 0, c: history length where it is a quarter; c = inf: constant)
    w(n) = 0 for n >= short_below     (when set: the model's user-kernel part serves those histories instead)

base is the transfer model's own blend (EASE-like weights, which deliberately ignore popularity: right for long
histories, weak for one or three items). bayes is a naive-Bayes update of the profile prior by the history, with
lift(i, h) = P(i | h) / P(i) from co-occurrence counts: pooled over source and target users for transfer (the
source's 6,040 users estimate item-item co-occurrence far better than a small target's), target users only for the
target-only model. after(n, i) = log P(i comes after a user's first n items) / P(i) is what users go on to take once
they have n items (`position_shift`): a user's first items are not like their later ones (on MovieLens the first
ones are the popular titles a sign-up page shows), so for a user with n items the items others took later are the
better guess. It is learned from the target's own users' time-ordered train items (their onboarding, not the
source's). With no history (n = 0) the score is the profile prior alone. gamma, delta and (a, c) of each part are
chosen on the target's validation users by simulating short histories from their train interactions
(`select_weights`), never on test. selection/short_history.py fits them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from transfer_rec.recommender.content import ContentSimilarity
from transfer_rec.recommender.item_item import dense_gram, gram_diagonal, times, weights_from, weights_state
from transfer_rec.recommender.profile import ProfilePrior, Profiles
from transfer_rec.runtime.threads import available_cpus, in_blocks

PROFILE_GRID = tuple(
    (a, c) for a in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0) for c in (1.0, 3.0, 10.0, 30.0)
)
GAMMA_GRID = (0.0, 0.1, 0.2, 0.4, 0.8)
SHIFT_GRID = (0.0, 0.5, 1.0)  # delta, the weight of the position shift (chosen jointly with gamma)
# coarse grids for comparing parts cheaply (the source-share guard of selection/short_history.py)
COARSE_PROFILE_GRID = tuple((a, c) for a in (8.0, 32.0, 128.0) for c in (3.0, 30.0))
COARSE_GAMMA_GRID = (0.0, 0.2, 0.8)
COARSE_SHIFT_GRID = (0.0, 1.0)
CONTENT_GRID = tuple((a, c) for a in (0.0, 0.05, 0.1, 0.2, 0.4) for c in (3.0, float("inf")))


def zscore(scores: np.ndarray) -> np.ndarray:
    """Each row's scores standardised (mean 0, standard deviation 1; a constant row becomes zeros)."""
    return (scores - scores.mean(1, keepdims=True)) / (scores.std(1, keepdims=True) + 1e-12)


LIFT_ROWS = 1024


def cooccurrences(matrix: sp.spmatrix) -> tuple[np.ndarray, int]:
    """A platform's users' co-occurrence counts (items x items, float32; exact up to 2^24 users) and how many users
    have an item. Made a block of columns at a time (dense_gram): the whole sparse product of 10 M interactions held
    more than the dense result."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    gram = dense_gram([(1.0, matrix)], matrix.shape[1], dtype=np.float32)
    return gram, int((np.diff(matrix.indptr) > 0).sum())


def cooccurrence_lift(
    matrices: list[sp.spmatrix], smoothing: float = 20.0, counted: list[tuple[np.ndarray, int]] = ()
) -> np.ndarray:
    """log P(i | h) / P(i) for every item pair (rows h), from the pooled co-occurrences of the given platforms' users
    and of `counted` ones (their `cooccurrences`, when the caller reuses them across fits); P(i | h) is shrunk
    towards P(i) by `smoothing` pseudo-users, so a rare h moves little."""
    gram, n_users = None, 0
    for part, users in [*counted, *(cooccurrences(m) for m in matrices)]:
        if gram is None:
            gram = part.copy()  # a counted part may be reused by the caller: never added into
        else:
            gram += part
        n_users += users
    if gram is None:
        raise ValueError("cooccurrence_lift: no platform's users to count co-occurrences of")
    counts = np.diag(gram).astype(np.float64)
    p = (counts + 0.5) / (n_users + 1.0)
    # in float64 a block of rows at a time (on threads), into the float32 result: over the whole item x item matrix
    # at once its float64 temporaries were four times the result (at 18,000 items: ~10 GB next to a 1.3 GB result)
    lift = np.empty(gram.shape, dtype=np.float32)

    def fill(rows: slice) -> None:
        conditional = (gram[rows] + smoothing * p[None, :]) / (counts[rows, None] + smoothing)
        lift[rows] = np.log(conditional / p[None, :])

    in_blocks(fill, gram.shape[0], LIFT_ROWS)
    np.fill_diagonal(lift, 0.0)
    return lift


PRUNED_LIFT_COLUMNS = 512


def pruned_lift(matrices: list[sp.spmatrix], neighbours: int, smoothing: float = 20.0) -> sp.csr_matrix:
    """cooccurrence_lift up to a constant per row, sparse, with each row's `neighbours` largest entries: memory
    items x neighbours, never items^2 (50,000 items: 10 GB per dense float32 copy).

    Row h of the lift is log(s / (c_h + s)), the same for every item i, plus log1p(g_hi / (s p_i)), which is zero
    where h and i never co-occur (s: smoothing, c_h: h's users, g_hi: their co-occurrences). An entry left out of
    the sparse matrix reads as the row's constant r_h: the mean of the entries it leaves out (on a large platform
    most pairs co-occur a little, about as often as chance would have them, and reading those as "never together"
    would sink every item outside a history item's neighbours), and the kept ones are stored less r_h. A history's
    summed lifts then differ from the dense ones by a constant per user, which the z-score of
    ShortHistoryParts.updated_prior removes, plus the left-out entries' spread around their mean; with `neighbours`
    >= items - 1 nothing is left out and the scores are the dense lift's (tests/unit/test_coldstart_parts.py). The
    diagonal keeps the dense lift's 0. The co-occurrences are made a block of columns at a time, on threads."""
    n_items = matrices[0].shape[1]
    counts = gram_diagonal([(1.0, m) for m in matrices], n_items)
    n_users = sum(int((np.diff(sp.csr_matrix(m).indptr) > 0).sum()) for m in matrices)
    scale = smoothing * (counts + 0.5) / (n_users + 1.0)
    # An item none of these users has co-occurs with nothing: its row and column hold only the row's constant, so
    # only the items they have are made (a target's own lift: its catalogue, not the whole index).
    active = np.flatnonzero(counts > 0)
    prepared = [
        (sp.csr_matrix(m[:, active].T, dtype=np.float64), sp.csc_matrix(m[:, active], dtype=np.float64))
        for m in (sp.csc_matrix(m) for m in matrices)
    ]
    width = max(min(neighbours, n_items - 1), 0)
    among = max(min(width, len(active) - 1), 0)  # past it, every item the row's item co-occurs with is kept
    kept = np.zeros((len(active), among), dtype=np.int32)
    values = np.zeros((len(active), among), dtype=np.float32)
    left_out = np.zeros(n_items, dtype=np.float64)  # each row's mean left-out term (0 when nothing is left out)

    def fill(rows: slice) -> None:
        g = np.zeros((len(active), rows.stop - rows.start), dtype=np.float64)
        for by_item, by_column in prepared:
            g += (by_item @ by_column[:, rows]).toarray()
        # column c of the block is row h = active[rows.start + c] of the lift, over the active items i (axis 0)
        delta = np.log1p(g / scale[active][:, None])
        delta[np.arange(rows.start, rows.stop), np.arange(rows.stop - rows.start)] = 0.0
        top = np.argpartition(-delta, among - 1, axis=0)[:among]
        largest = np.take_along_axis(delta, top, axis=0)
        if n_items - 1 > width:  # the inactive items' terms are 0: they count in the mean, not in the sum
            left_out[active[rows]] = (delta.sum(axis=0) - largest.sum(axis=0)) / (n_items - 1 - width)
        kept[rows] = active[top.T]
        values[rows] = (largest - left_out[active[rows]][None, :]).T

    if among:
        in_blocks(fill, len(active), PRUNED_LIFT_COLUMNS)
    lift = sp.csr_matrix((values.ravel(), (np.repeat(active, among), kept.ravel())), shape=(n_items, n_items))
    lift.eliminate_zeros()  # entries equal to the row's constant (pairs never together, when nothing is left out)
    diagonal = np.log((counts + smoothing) / smoothing) - left_out  # the dense lift's 0, less the row's constant
    lift = lift + sp.diags(diagonal.astype(np.float32), format="csr")
    lift.sort_indices()
    return sp.csr_matrix(lift, dtype=np.float32)


def position_shift(ordered: list[np.ndarray], n_items: int, max_n: int) -> np.ndarray:
    """Row n - 1 (n = 1 .. max_n): log of each item's share among the items users took after their first n, over
    its share among all their items (add-one smoothed). `ordered`: each user's items, earliest first."""
    lengths = np.array([len(o) for o in ordered], dtype=np.int64)
    items = np.concatenate(ordered) if len(ordered) else np.zeros(0, dtype=np.int64)
    position = np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    every = np.bincount(items, minlength=n_items).astype(np.float64)
    share = (every + 1.0) / (every.sum() + n_items)
    rows = np.zeros((max_n, n_items), dtype=np.float32)
    for n in range(1, max_n + 1):
        later = np.bincount(items[position >= n], minlength=n_items).astype(np.float64)
        rows[n - 1] = np.log((later + 1.0) / (later.sum() + n_items) / share)
    return rows


def decay(a: float, c: float, n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    # squared: strong for 1-5 items yet ~0 at a warm user's ~60 (a * c / (c + n) was either weak or a warm cost)
    return np.full(n.shape, a) if np.isinf(c) else a * (c / (c + n)) ** 2


def _rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows], the array itself when rows are all of its rows in order (no copy of a simulation's scores)."""
    return array if len(rows) == len(array) else array[rows]


@dataclass
class _Prepared:
    """One simulation in select_weights: the rows its weights move (`moving`) with their scores' parts, and every
    row's NDCG with the moving ones still NaN (`settled_values`)."""

    sim: dict[str, Any]
    moving: np.ndarray
    settled_values: np.ndarray
    lengths: np.ndarray
    base: np.ndarray
    prior: np.ndarray | None
    content: np.ndarray | None
    lift: np.ndarray | None
    shift: np.ndarray | None


class ShortHistoryParts:
    def __init__(
        self,
        prior: ProfilePrior | None = None,
        content: ContentSimilarity | None = None,
        lift: np.ndarray | sp.csr_matrix | None = None,
        shift: np.ndarray | None = None,
    ):
        self.prior = prior
        self.content = content
        self.lift = lift
        self.shift = shift  # position_shift rows (n = 1 .. len): only with a prior
        self.gamma = 0.0
        self.shift_weight = 0.0
        self.profile_weight = (0.0, 1.0)
        self.content_weight = (0.0, float("inf"))
        # histories of at least this many items get none of these parts (None: every history gets them)
        self.short_below: int | None = None

    def parts(
        self, history: sp.spmatrix, profiles: Profiles | None, candidates: np.ndarray
    ) -> tuple[np.ndarray | None, ...]:
        """Prior logits, z-scored content scores, the history's summed log lifts and each history length's position
        shift over the candidates (None for a part the model does not hold)."""
        n_users = history.shape[0]
        history = sp.csr_matrix(history, dtype=np.float32)
        prior = content = lift = shift = None
        if self.prior is not None:
            prior = self.prior.score(profiles if profiles is not None else {}, n_users)[:, candidates]
            prior = prior.astype(np.float64)
        if self.content is not None:
            content = zscore(self.content.score(history)[:, candidates])
        if self.lift is not None:
            lift = times(history, self._candidate_lift(candidates)).astype(np.float64)
        if self.shift is not None and self.prior is not None:
            lengths = np.diff(history.indptr)
            rows = np.vstack([np.zeros((1, len(candidates)), dtype=np.float32), self.shift[:, candidates]])
            shift = rows[np.minimum(lengths, len(self.shift))].astype(np.float64)  # n = 0: nothing taken yet
        return prior, content, lift, shift

    def _candidate_lift(self, candidates: np.ndarray) -> np.ndarray | sp.csr_matrix:
        """The lift's candidate columns (one C-contiguous block when dense), cut once per candidate set: a history
        then reads only its own rows (cutting it per request copied the whole matrix: ~20 ms a request on ML-100K)."""
        key = hash(np.asarray(candidates).tobytes())
        cached = getattr(self, "_lift_cut", None)
        if cached is None or cached[0] != key:
            cut = self.lift[:, candidates]
            cached = (key, cut.tocsr() if sp.issparse(cut) else np.ascontiguousarray(cut))
            self._lift_cut = cached
        return cached[1]

    def blend(
        self,
        base: np.ndarray,
        lengths: np.ndarray,
        prior: np.ndarray | None,
        content: np.ndarray | None,
        history_lift: np.ndarray | None = None,
        shift: np.ndarray | None = None,
    ) -> np.ndarray:
        """The base scores with the parts blended in at the chosen weights."""
        if prior is not None:
            prior = self.updated_prior(prior, None, history_lift, shift, None)
        return self._blend_updated(base, lengths, prior, content, self.profile_weight, None)

    def updated_prior(
        self,
        prior: np.ndarray,
        gamma: float | None,
        history_lift: np.ndarray | None,
        shift: np.ndarray | None,
        shift_weight: float | None,
    ) -> np.ndarray:
        """The prior logits moved by the position shift and the history's lifts, z-scored per user."""
        gamma = self.gamma if gamma is None else gamma
        shift_weight = self.shift_weight if shift_weight is None else shift_weight
        if shift is not None and shift_weight != 0.0:
            prior = prior + shift_weight * shift
        if history_lift is not None and gamma != 0.0:
            prior = prior + gamma * history_lift
        return zscore(prior)

    def _blend_updated(
        self,
        base: np.ndarray,
        lengths: np.ndarray,
        prior: np.ndarray | None,
        content: np.ndarray | None,
        profile_weight: tuple[float, float],
        content_weight: tuple[float, float] | None,
    ) -> np.ndarray:
        content_weight = content_weight or self.content_weight
        short = np.ones(len(lengths)) if self.short_below is None else (lengths < self.short_below).astype(np.float64)
        terms = [
            ((short * decay(*weight, lengths))[:, None], part)
            for weight, part in ((content_weight, content), (profile_weight, prior))
            if part is not None
        ]
        if not terms:
            return np.array(base, dtype=np.float64, copy=True)
        # base + the terms in this order, the first one's product made where a copy of base was (a sum is the same
        # either way round): a pass over users x candidates less at every grid point of select_weights
        scores = terms[0][0] * terms[0][1]
        scores += base
        for weight, part in terms[1:]:
            scores += weight * part
        if prior is not None:
            empty = lengths == 0
            scores[empty] = prior[empty]
        return scores

    def adjust(
        self, base: np.ndarray, history: sp.spmatrix, profiles: Profiles | None, candidates: np.ndarray
    ) -> np.ndarray:
        """The transfer model's candidate scores with the short-history parts added (see the module docstring)."""
        lengths = np.diff(sp.csr_matrix(history).indptr)
        prior, content, lift, shift = self.parts(history, profiles, candidates)
        return self.blend(base, lengths, prior, content, history_lift=lift, shift=shift)

    def select_weights(
        self,
        simulations: list[dict[str, Any]],
        candidates: np.ndarray,
        ndcg: Callable[[np.ndarray, dict[str, Any], np.ndarray], np.ndarray],
        coarse: bool = False,
    ) -> dict[str, Any]:
        """Choose gamma and (a, c) of each part on simulated short histories: each simulation holds `base`
        (candidate scores), `history`, `profiles`, and `full` (True for users' whole histories: the warm case);
        `ndcg(scores, simulation, rows)` is the validation NDCG of each of the simulation's `rows` (scores: those
        rows'), NaN for a row nothing judges; a simulation scores the mean over its judged rows (0 with none). The
        short ones are maximised; on the full ones a setting may not do worse than the model without these parts
        (they are for short histories, not a warm cost). `coarse` uses the COARSE_ grids: cheaper, for comparing
        parts."""
        prepared = [self._prepare(sim, candidates, ndcg) for sim in simulations]

        # The updated prior depends only on (gamma, shift weight), which stay fixed while the content and profile
        # grids run: kept for the last pair, it is computed once per pair instead of once per grid point (each is
        # users x candidates per simulation).
        updated: dict[str, Any] = {"key": None, "priors": []}

        def updated_prior(entry: _Prepared) -> np.ndarray | None:
            gamma, shift_weight = updated["key"]
            if entry.prior is None:
                return None
            return self.updated_prior(entry.prior, gamma, entry.lift, entry.shift, shift_weight)

        def evaluate(profile_weight, content_weight, gamma=None, shift_weight=None) -> tuple[float, float]:
            key = (self.gamma if gamma is None else gamma, self.shift_weight if shift_weight is None else shift_weight)
            if updated["key"] != key:
                updated["key"] = key
                updated["priors"] = list(pool.map(updated_prior, prepared))

            def score(entry: _Prepared, prior: np.ndarray | None) -> tuple[bool, float]:
                values = entry.settled_values
                if len(entry.moving):
                    values = values.copy()
                    scores = self._blend_updated(
                        entry.base, entry.lengths, prior, entry.content, profile_weight, content_weight
                    )
                    values[entry.moving] = ndcg(scores, entry.sim, entry.moving)
                judged = values[~np.isnan(values)]
                return bool(entry.sim.get("full")), float(np.mean(judged)) if len(judged) else 0.0

            values: dict[bool, list[float]] = {True: [], False: []}
            for full, value in pool.map(score, prepared, updated["priors"]):
                values[full].append(value)
            return float(np.mean(values[False] or [0.0])), float(np.mean(values[True] or [np.inf]))

        # The simulations of one grid point are scored on threads (`pool`, used by the functions above): numpy's array
        # work and partial sorts release the GIL, and one simulation at a time left a core idle for most of a large
        # target's fine-tune. Each simulation's NDCG is the same whichever thread computes it.
        with ThreadPoolExecutor(max_workers=max(1, min(len(prepared), available_cpus()))) as pool:
            warm_floor = evaluate((0.0, 1.0), (0.0, 1.0), 0.0, 0.0)[1]

            def best(grid: dict[Any, tuple[float, float]], key) -> Any:
                allowed = {w: v for w, v in grid.items() if v[1] >= warm_floor - 1e-9} or grid
                return max(allowed, key=lambda w: (allowed[w][0], key(w)))

            report: dict[str, Any] = {"warm_floor": warm_floor}
            has_shift = self.shift is not None
            if self.prior is not None and (self.lift is not None or has_shift):
                # the naive-Bayes part on its own first (the base with a small weight next to it)
                gammas = (COARSE_GAMMA_GRID if coarse else GAMMA_GRID) if self.lift is not None else (0.0,)
                shifts = (COARSE_SHIFT_GRID if coarse else SHIFT_GRID) if has_shift else (0.0,)
                grid = {(g, d): evaluate((16.0, float("inf")), (0.0, 1.0), g, d) for g in gammas for d in shifts}
                self.gamma, self.shift_weight = max(grid, key=lambda w: (grid[w][0], -w[0], -w[1]))
                report["gamma"] = {"gamma": self.gamma, "valid_ndcg": grid[(self.gamma, self.shift_weight)]}
                if has_shift:
                    report["shift"] = {
                        "weight": self.shift_weight,
                        "valid_ndcg_by_weight": {d: grid[(self.gamma, d)][0] for d in shifts},
                    }
            if self.content is not None:
                grid = {w: evaluate((0.0, 1.0), w) for w in CONTENT_GRID}
                self.content_weight = best(grid, lambda w: -w[0])
                report["content"] = {"weight": self.content_weight, "valid_ndcg": grid[self.content_weight]}
            if self.prior is not None:
                grid = {w: evaluate(w, self.content_weight) for w in (COARSE_PROFILE_GRID if coarse else PROFILE_GRID)}
                self.profile_weight = best(grid, lambda w: (-w[0], -w[1]))
                report["profile"] = {"weight": self.profile_weight, "valid_ndcg": grid[self.profile_weight]}
            report["short_valid_ndcg"] = evaluate(self.profile_weight, self.content_weight)[0]
            return report

    def _prepare(self, sim: dict[str, Any], candidates: np.ndarray, ndcg: Callable) -> _Prepared:
        """A simulation's parts over the rows any weight moves, and the NDCG of the rows none does, scored once:
        an empty history scores the profile prior alone (no lift, no shift, whatever their weights) and a history
        of short_below items or more the base alone. On a large target that is the whole 0-item simulation and most
        of the full one, which every grid point ranked again."""
        lengths = np.diff(sp.csr_matrix(sim["history"]).indptr)
        prior, content, lift, shift = self.parts(sim["history"], sim.get("profiles"), candidates)
        settled = np.zeros(len(lengths), dtype=bool)
        if self.short_below is not None:
            settled |= lengths >= self.short_below
        if prior is not None:  # without a prior an empty history's content scores could move it
            settled |= lengths == 0
        values = np.full(len(lengths), np.nan)
        rows = np.flatnonzero(settled)
        if len(rows):
            fixed = None if prior is None else zscore(prior[rows])
            scores = self._blend_updated(_rows(sim["base"], rows), lengths[rows], fixed, None, (0.0, 1.0), (0.0, 1.0))
            values[rows] = ndcg(scores, sim, rows)
        moving = np.flatnonzero(~settled)
        return _Prepared(
            sim,
            moving,
            values,
            lengths[moving],
            _rows(sim["base"], moving),
            *(None if part is None else _rows(part, moving) for part in (prior, content, lift, shift)),
        )

    def state(self) -> dict[str, Any]:
        return {
            "prior": self.prior.state() if self.prior is not None else None,
            "gamma": self.gamma,
            "lift": weights_state(self.lift) if self.lift is not None else None,
            "shift": torch.from_numpy(self.shift) if self.shift is not None else None,
            "shift_weight": self.shift_weight,
            "content": self.content.state() if self.content is not None else None,
            "profile_weight": list(self.profile_weight),
            "content_weight": list(self.content_weight),
            "short_below": self.short_below,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShortHistoryParts:
        parts = cls(
            ProfilePrior.from_state(state["prior"]) if state.get("prior") is not None else None,
            ContentSimilarity.from_state(state["content"]) if state.get("content") is not None else None,
            weights_from(state["lift"]) if state.get("lift") is not None else None,
            state["shift"].numpy() if state.get("shift") is not None else None,
        )
        parts.gamma = float(state.get("gamma", 0.0))
        parts.shift_weight = float(state.get("shift_weight", 0.0))
        parts.profile_weight = tuple(float(v) for v in state["profile_weight"])
        parts.content_weight = tuple(float(v) for v in state["content_weight"])
        parts.short_below = state.get("short_below")
        return parts
