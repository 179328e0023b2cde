"""A trained model with everything needed to recommend: item vocabulary, candidates and known users' histories.

The same bundle backs evaluation, the MLflow pyfunc model and publishing, so all three rank in exactly one way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from transfer_rec.metrics.ranking import top_k
from transfer_rec.recommender.linked import LinkedPart
from transfer_rec.recommender.profile import Profiles
from transfer_rec.recommender.transfer import TransferRecommender
from transfer_rec.schema.unified import PROFILE_FIELDS, item_key, user_key


@dataclass
class Recommendations:
    item_ids: list[list[str]]
    scores: list[list[float]]
    unknown_items: list[list[str]]
    # per row, the platforms whose histories the ranking used (the target's, a linked person's sources')
    platforms: list[list[str]] = field(default_factory=list)


# Known users x items scores precomputed at load (float64: 200 MB at most); past that, every request is scored.
KNOWN_SCORES_MAX = 25_000_000


class ModelBundle:
    def __init__(
        self,
        model: TransferRecommender,
        item_ids: np.ndarray,
        candidates: np.ndarray,
        histories: pd.DataFrame,
        meta: dict | None = None,
        profiles: pd.DataFrame | None = None,
        linked: LinkedPart | None = None,
        accounts: pd.DataFrame | None = None,
        native_ids: np.ndarray | None = None,
        disliked: pd.DataFrame | None = None,
    ):
        self.model = model
        # Known users' items rated below the positive threshold (user_id -> item ids): never in their history (the
        # model learnt from positives only), never recommended back to them either
        self.disliked: dict[str, list[str]] = (
            disliked.groupby("user_id")["item_id"].agg(list).to_dict() if disliked is not None and len(disliked) else {}
        )
        # people known on the source platforms (recommender/linked.py), and the accounts (platform, user_id, link_id)
        # a request may name them by: the target's own users and the sources'
        self.linked = linked
        self.accounts = accounts if accounts is not None else pd.DataFrame(columns=["platform", "user_id", "link_id"])
        self._link_of = dict(zip(zip(self.accounts["platform"], self.accounts["user_id"]), self.accounts["link_id"]))
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.candidates = np.asarray(candidates, dtype=bool)
        # item id -> column, for requests: a dict lookup per item (a pandas reindex per request cost ~1 ms)
        self.position = {item: column for column, item in enumerate(self.item_ids.tolist())}
        # The target platform's own item ids (aligned with item_ids; None where it lacks the item): requests may name
        # items by them and answers name items by them. A bundle from before the table has none.
        self.native_ids = (
            np.asarray(native_ids, dtype=object) if native_ids is not None else np.full(len(self.item_ids), None)
        )
        self.native_of = {
            key: native for key, native in zip(self.item_ids.tolist(), self.native_ids.tolist()) if native is not None
        }
        # Known users' histories: user_id -> item ids, so a request may name just the user; and, for a model trained
        # on rating-weighted histories (meta rating_weight), what each of those items counts (aligned with the ids),
        # so that a known user is ranked from the history evaluation judged the model on
        self.histories = histories.groupby("user_id")["item_id"].agg(list).to_dict() if len(histories) else {}
        self.history_weights: dict[str, list[float]] = (
            histories.groupby("user_id")["weight"].agg(list).to_dict()
            if len(histories) and "weight" in histories and bool((histories["weight"] != 1.0).any())
            else {}
        )
        self.meta = meta or {}
        # Known users' profiles (user_id, age, gender, occupation): a request by user id gets its profile from here.
        self.profiles = (
            profiles.drop_duplicates("user_id").set_index("user_id")
            if profiles is not None
            else pd.DataFrame(columns=list(PROFILE_FIELDS), index=pd.Index([], name="user_id"))
        )

    @property
    def profile_vocabulary(self) -> dict[str, list[str]] | None:
        """The profile values the model's prior knows per field, or None when it has no profile prior."""
        parts = getattr(self.model, "short_history", None)
        prior = getattr(parts, "prior", None)
        return None if prior is None else {f: list(prior.vocabulary.get(f, [])) for f in PROFILE_FIELDS}

    def known_profiles(self, user_ids: Sequence[str | None]) -> pd.DataFrame:
        """The stored profiles of these users (rows aligned; unknown users have empty fields)."""
        columns = [c for c in PROFILE_FIELDS if c in self.profiles]
        keys = [u if u is not None else "" for u in user_ids]
        return self.profiles[columns].reindex(keys).reset_index(drop=True)

    def profile_of(self, user_id: str | None) -> dict[str, str]:
        """One known user's stored profile fields (only those it has)."""
        if not hasattr(self, "_profile_rows"):
            self._profile_rows = self.profiles.to_dict("index")
        row = self._profile_rows.get(user_id, {}) if user_id is not None else {}
        return {f: v for f, v in row.items() if f in PROFILE_FIELDS and isinstance(v, str)}

    @property
    def target(self) -> str:
        return str(self.meta.get("target", ""))

    def user_key(self, user_id: str) -> str:
        """A target user's unified key from the id a request names them by: the platform's own id or the key."""
        if user_id in self.histories or user_id in self.profiles.index:
            return user_id
        key = user_key(self.target, user_id)
        return key if key in self.histories or key in self.profiles.index else user_id

    def item_position(self, item_id: str) -> int | None:
        """The column of an item named by its unified key or by any platform's own id for it."""
        column = self.position.get(item_id)
        return column if column is not None else self.position.get(item_key(item_id))

    def link_of(self, platform: str, user_id: str | None) -> str | None:
        """The link id of a platform's user (its unified id, or the id the platform itself uses), if the model knows
        the account."""
        if user_id is None:
            return None
        return self._link_of.get((platform, user_id)) or self._link_of.get((platform, user_key(platform, user_id)))

    def target_user_of(self, link_id: str | None) -> str | None:
        """The target account of a person named by link id (or by another platform's account): their target history
        and profile are theirs too, whatever account the request names them by."""
        accounts = self.target_users_of(link_id)
        # a link id shared by two target accounts (a family's one address) names neither of them
        return accounts[0] if len(accounts) == 1 else None

    def target_users_of(self, link_id: str | None) -> tuple[str, ...]:
        """Every target account with this link id (several for a family's one address)."""
        if link_id is None:
            return ()
        if not hasattr(self, "_target_accounts_of_link"):
            own = self.accounts[self.accounts["platform"] == self.target]
            grouped: dict[str, tuple[str, ...]] = {}
            for link, user in zip(own["link_id"].tolist(), own["user_id"].tolist()):
                grouped[link] = (*grouped.get(link, ()), user)
            self._target_accounts_of_link = grouped
        return self._target_accounts_of_link.get(link_id, ())

    def score_rows(
        self, matrix: sp.csr_matrix, profiles: Profiles | None = None, link_ids: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Scores of history rows over this model's items, and per row the platforms whose histories were used: rows
        of people the linked part knows on a source (by `link_ids`) are answered by it, the others by the model."""
        scores = self.model.score(matrix, profiles) if profiles is not None else self.model.score(matrix)
        own = [[self.target] if n else [] for n in np.diff(sp.csr_matrix(matrix).indptr)]
        if self.linked is None or link_ids is None:
            return scores, own
        rows, linked, used = self.linked.answer(matrix, list(link_ids))
        if len(rows):
            scores = np.array(scores, dtype=np.float64)
            scores[rows] = linked
            for row, platforms in zip(rows.tolist(), used, strict=True):
                own[row] = platforms
        return scores, own

    def history_matrix(
        self, histories: Sequence[Sequence[str]], weights: Sequence[Sequence[float] | None] | None = None
    ) -> tuple[sp.csr_matrix, list[list[str]]]:
        """Rows of item ids as a matrix over this model's items, each item counting its weight (per row, aligned with
        the ids; 1 where none is given); ids it does not know are returned apart."""
        indptr, cols, data, unknown = [0], [], [], []
        for row, items in enumerate(histories):
            given = weights[row] if weights is not None else None
            counts: dict[int, float] = {}
            missing: dict[str, None] = {}
            for j, item in enumerate(str(i) for i in items):
                column = self.item_position(item)
                if column is None:
                    missing[item] = None
                # one column once, even when named by both its key and the platform's own id: its first weight
                elif column not in counts:
                    counts[column] = 1.0 if given is None else float(given[j])
            unknown.append(list(missing))
            ordered = sorted(counts)
            cols.extend(ordered)
            data.extend(counts[c] for c in ordered)
            indptr.append(len(cols))
        matrix = sp.csr_matrix(
            (np.asarray(data, dtype=np.float32), np.asarray(cols, dtype=np.int32), np.asarray(indptr, dtype=np.int32)),
            shape=(len(histories), len(self.item_ids)),
        )
        return matrix, unknown

    def score_aligned(
        self,
        matrix: sp.csr_matrix,
        item_ids: np.ndarray,
        profiles: Profiles | None = None,
        link_ids: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Scores for histories given as a (weighted) matrix over another item index `item_ids`, returned over that
        index: the history's weights reach this model unchanged (what a re-scored champion must see to score as it
        did when it was promoted), and items this model does not know score -inf."""
        matrix = sp.csr_matrix(matrix)
        own = pd.Series(self.position, dtype="float64").reindex(item_ids).to_numpy()
        known = ~np.isnan(own)
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        keep = known[matrix.indices]
        remapped = sp.csr_matrix(
            (matrix.data[keep], (rows[keep], own[matrix.indices[keep]].astype(np.int64))),
            shape=(matrix.shape[0], len(self.item_ids)),
            dtype=np.float32,
        )
        remapped.sort_indices()
        scores = self.score_rows(remapped, profiles, link_ids)[0]
        out = np.full((matrix.shape[0], len(item_ids)), -np.inf, dtype=np.float64)
        out[:, known] = scores[:, own[known].astype(int)]
        return out

    def precompute_known(self, max_entries: int = KNOWN_SCORES_MAX) -> bool:
        """Score every known user once, from their stored history and profile, so that a request naming only a known
        user is a lookup (`recommend(..., known=...)`); new users and requests that add items or profile fields are
        still scored at request time. Skipped (False) past `max_entries` users x items."""
        users = list(self.histories)
        if not users or len(users) * len(self.item_ids) > max_entries:
            return False
        parts, used = [], []
        for start in range(0, len(users), 2048):
            chunk = users[start : start + 2048]
            profiles = None
            if self.profile_vocabulary is not None:
                stored = [self.profile_of(u) for u in chunk]
                profiles = {f: [p.get(f) for p in stored] for f in PROFILE_FIELDS}
            matrix, _ = self.history_matrix(
                [self.histories[u] for u in chunk], [self.history_weights.get(u) for u in chunk]
            )
            scores, platforms = self.score_rows(matrix, profiles, [self.link_of(self.target, u) for u in chunk])
            parts.append(scores)
            used += platforms
        self._known_scores = np.concatenate(parts)
        self._known_used = used
        self._known_row = {u: row for row, u in enumerate(users)}
        return True

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        profiles: Profiles | None = None,
        known: Sequence[str | None] | None = None,
        link_ids: Sequence[str | None] | None = None,
        weights: Sequence[Sequence[float] | None] | None = None,
        excluded: Sequence[Sequence[str]] | None = None,
    ) -> Recommendations:
        """Top-k candidate items per history, items already in the history excluded, and per row the `excluded` ids
        too (what the user rated low: seen, but no history item).

        `known`, per row, names a known user whose request is exactly their stored history and profile: with
        `precompute_known` done, that row's scores are looked up instead of computed (the same scores). `link_ids`,
        per row, names the person for the linked part (a known user's own is looked up when not given). `weights`,
        per row, what each history item counts (`history_matrix`)."""
        matrix, unknown = self.history_matrix(histories, weights)
        cache = getattr(self, "_known_scores", None)
        rows = (
            [self._known_row.get(u) if u is not None else None for u in known]
            if known is not None and cache is not None
            else [None] * len(histories)
        )
        todo = [i for i, row in enumerate(rows) if row is None]
        platforms: list[list[str]] = [[] for _ in rows]
        scores = np.empty((len(rows), len(self.item_ids)), dtype=np.float64)
        done = [i for i, row in enumerate(rows) if row is not None]
        if done:
            scores[done] = cache[[rows[i] for i in done]]
            for i in done:
                platforms[i] = self._known_used[rows[i]]
        if todo:
            subset = (
                None
                if profiles is None
                else profiles
                if len(todo) == len(rows)
                else profiles.iloc[todo]
                if isinstance(profiles, pd.DataFrame)
                else {f: [values[i] for i in todo] for f, values in ((f, list(v)) for f, v in profiles.items())}
            )
            links = None
            if self.linked is not None:
                given = list(link_ids) if link_ids is not None else [None] * len(rows)
                own = list(known) if known is not None else [None] * len(rows)
                links = [given[i] if given[i] is not None else self.link_of(self.target, own[i]) for i in todo]
            part = matrix if len(todo) == len(rows) else matrix[todo]
            scores[todo], used = self.score_rows(part, subset, links)
            for i, u in zip(todo, used, strict=True):
                platforms[i] = u
        seen = sp.csr_matrix(matrix)
        if excluded is not None and any(len(items) for items in excluded):
            seen = (seen != 0).astype(np.float32) + (self.history_matrix(excluded)[0] != 0).astype(np.float32)
        ranked = top_k(scores, k, exclude=seen, candidates=self.candidates)
        top_scores = np.take_along_axis(scores, ranked, axis=1)
        # top_k fills a row that has fewer than k eligible items with seen, off-platform or unscorable ones: an answer
        # is cut there instead (a k past the platform's unseen items gets fewer than k, never an item seen or -inf)
        width = np.int64(len(self.item_ids))
        seen_keys = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr)) * width + seen.indices
        keys = np.arange(len(ranked), dtype=np.int64)[:, None] * width + ranked
        eligible = self.candidates[ranked] & np.isfinite(top_scores) & ~np.isin(keys, seen_keys)
        return Recommendations(
            item_ids=[self.item_ids[r[ok]].tolist() for r, ok in zip(ranked, eligible, strict=True)],
            scores=[s[ok].astype(float).tolist() for s, ok in zip(top_scores, eligible, strict=True)],
            unknown_items=unknown,
            platforms=platforms,
        )

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state(with_source=False), folder / "model.pt")
        pd.DataFrame({"item_id": self.item_ids, "candidate": self.candidates, "native_id": self.native_ids}).to_parquet(
            folder / "items.parquet"
        )
        rows = [
            (u, i, w)
            for u, items in self.histories.items()
            for i, w in zip(items, self.history_weights.get(u) or [1.0] * len(items), strict=True)
        ]
        pd.DataFrame(rows, columns=["user_id", "item_id", "weight"]).to_parquet(folder / "histories.parquet")
        disliked = [(u, i) for u, items in self.disliked_items().items() for i in items]
        pd.DataFrame(disliked, columns=["user_id", "item_id"]).to_parquet(folder / "disliked.parquet")
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2))
        self.profiles.reset_index().to_parquet(folder / "profiles.parquet")
        if self.linked is not None:
            self.linked.save(folder / "linked")
            self.accounts.to_parquet(folder / "linked" / "accounts.parquet", index=False)
        return folder

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        folder = Path(folder)
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        items = pd.read_parquet(folder / "items.parquet")
        profiles = pd.read_parquet(folder / "profiles.parquet") if (folder / "profiles.parquet").exists() else None
        linked = folder / "linked"
        return cls(
            TransferRecommender.from_state(state),
            items["item_id"].to_numpy(),
            items["candidate"].to_numpy(),
            pd.read_parquet(folder / "histories.parquet"),
            json.loads((folder / "meta.json").read_text()),
            profiles,
            LinkedPart.load(linked) if linked.exists() else None,
            pd.read_parquet(linked / "accounts.parquet") if linked.exists() else None,
            items["native_id"].to_numpy() if "native_id" in items else None,
            pd.read_parquet(folder / "disliked.parquet") if (folder / "disliked.parquet").exists() else None,
        )

    def disliked_items(self) -> dict[str, list[str]]:
        """Known users' items rated low (none in a bundle saved before they were kept)."""
        return getattr(self, "disliked", None) or {}
