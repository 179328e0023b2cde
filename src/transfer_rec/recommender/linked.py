"""Recommending on a target from what linked people do on the source platforms, with catalogues that need not
overlap (docs/model.md, "Linked people").

Rows are people, not platform users: a person linked (by link id) on several platforms has one row holding each
platform's history side by side, [source 1 items | source 2 items | ... | target items]. Two parts answer two kinds
of people:
- warm (some target history): an EASE over those joint rows, scored on the target columns. A source's items then
  add to a person's target history as far as the people who use both platforms say they should;
- new to the target: a ridge regression from the source columns (and an intercept, which alone is popularity) to
  the target columns, fitted on the people who have both. The joint EASE conditions every source item on the target
  items, which a newcomer does not have; the regression asks the newcomer's question directly. With item content,
  the regression also reads each person's content profile: the mean content vector (genres, year, title embedding;
  recommender/content.py) of their source items, weighted by `content_weight`. Catalogues that do not overlap still
  share what their items are about, and a profile generalises past the source items the fit has seen often.
Each source enters with a weight (0 or 1 today, chosen per part on the target's data by selection/linked.py), so a
source that does not help contributes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp


@dataclass(frozen=True)
class LinkedSettings:
    warm_l2: float = 500.0
    new_l2: float = 200.0
    # per source: 1 uses it, 0 leaves it out (names as in the sources mapping)
    warm_sources: dict[str, float] = field(default_factory=dict)
    new_sources: dict[str, float] = field(default_factory=dict)
    # the newcomers' part's weight on people's content profiles (0: items only)
    content_weight: float = 0.0


def binary(matrix: sp.spmatrix) -> sp.csr_matrix:
    return (sp.csr_matrix(matrix) > 0).astype(np.float64).tocsr()


def joint_rows(sources: dict[str, sp.csr_matrix], weights: dict[str, float], tail: sp.csr_matrix | None = None):
    """[w_1 S_1 | w_2 S_2 | ... | tail] for the sources with a non-zero weight, in the mapping's order."""
    blocks = [binary(m) * weights[name] for name, m in sources.items() if weights.get(name, 0.0) > 0]
    if tail is not None:
        blocks.append(binary(tail))
    if not blocks:
        return None
    return sp.hstack(blocks, format="csr")


def ease_target_columns(joint: sp.csr_matrix, n_target: int, l2: float) -> np.ndarray:
    """EASE weights (Steck, 2019) of a joint item space, only the columns of its last n_target items."""
    return ease_columns(gram_of(joint), n_target, l2)


def gram_of(rows: sp.csr_matrix) -> np.ndarray:
    """The dense Gram (items x items) of people's rows: made once for every L2 strength a choice tries."""
    return (rows.T @ rows).toarray()


def ease_columns(gram: np.ndarray, n_target: int, l2: float) -> np.ndarray:
    """ease_target_columns from the joint Gram: only the precision's last n_target columns are solved for (by
    Cholesky), not the whole inverse."""
    n = gram.shape[0]
    unit = np.zeros((n, n_target))
    unit[np.arange(n - n_target, n), np.arange(n_target)] = 1.0
    precision = _spd_solve(gram, l2, unit)
    columns = precision / -precision[np.arange(n - n_target, n), np.arange(n_target)]
    columns[np.arange(n - n_target, n), np.arange(n_target)] = 0.0
    return columns.astype(np.float32)


def _spd_solve(gram: np.ndarray, l2: float, rhs: np.ndarray) -> np.ndarray:
    """(gram + l2 I)^-1 rhs for a Gram (positive semi-definite) and l2 > 0, by Cholesky: half an LU's work, and the
    Gram is left as it was, for the next strength. LU if rounding made the system indefinite."""
    system = np.asfortranarray(gram)  # a copy in LAPACK's order: factored in place, not copied once more
    if system is gram:
        system = system.copy(order="F")
    system[np.diag_indices_from(system)] += l2
    try:
        # cho_factor + cho_solve: faster than scipy.linalg.solve(assume_a="pos") and numpy's LU here (measured at
        # 2,000-3,000 items: 0.18-0.34 s against 0.24-0.47 s for numpy.linalg.solve)
        factor = scipy.linalg.cho_factor(system, overwrite_a=True, check_finite=False)
        return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
    except np.linalg.LinAlgError:
        system = gram.copy()
        system[np.diag_indices_from(system)] += l2
        return np.linalg.solve(system, rhs)


def content_profiles(
    sources: dict[str, sp.csr_matrix], weights: dict[str, float], vectors: dict[str, np.ndarray] | None
) -> np.ndarray | None:
    """People x d: the mean content vector of each person's items on the sources in use (zeros for none); None
    without content vectors."""
    used = [name for name, w in weights.items() if w > 0 and vectors is not None and name in vectors]
    if not used:
        return None
    assert vectors is not None
    n = next(iter(sources.values())).shape[0]
    total = np.zeros((n, vectors[used[0]].shape[1]), dtype=np.float64)
    count = np.zeros(n)
    for name in used:
        rows = binary(sources[name])
        total += np.asarray(rows @ vectors[name])
        count += np.diff(rows.indptr)
    return (total / np.maximum(count, 1)[:, None]).astype(np.float32)


# The newcomers' regression's inputs: the sources' items (sparse) and, with content, the content profiles (dense).
Features = sp.csr_matrix | tuple[sp.csr_matrix | None, np.ndarray] | None


def newcomer_features(
    sources: dict[str, sp.csr_matrix],
    weights: dict[str, float],
    vectors: dict[str, np.ndarray] | None,
    content_weight: float,
) -> Features:
    """The newcomers' regression's inputs: the sources' items and, with a content weight, the content profile."""
    items = joint_rows(sources, weights)
    profiles = content_profiles(sources, weights, vectors) if content_weight > 0 else None
    if profiles is None:
        return items
    return items, content_weight * profiles


def _blocks(features: Features, n: int, dtype: type = np.float64) -> tuple[np.ndarray, sp.csr_matrix | None]:
    """(dense columns: the intercept then any content, sparse item columns), the dense part in `dtype`: float64 to
    fit, the weights' float32 to score (mixing them would convert the whole content block of weights per request)."""
    ones = np.ones((n, 1), dtype=dtype)
    if features is None:
        return ones, None
    if isinstance(features, tuple):
        items, dense = features
        return np.hstack([ones, dense.astype(dtype, copy=False)]), items
    return ones, features


def ridge_map(features: Features, target: sp.csr_matrix, l2: float) -> np.ndarray:
    """Least squares from [1 | content | items] to the target rows with an L2 penalty: row 0 is the intercept."""
    return ridge_solve(*ridge_system(features, target), l2)


def ridge_system(features: Features, target: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """ridge_map's normal equations without the penalty, (Gram, right-hand side): the same for every L2 strength a
    choice tries. The Gram is built by blocks: a dense content block inside one sparse product is several times
    slower."""
    dense, items = _blocks(features, target.shape[0])
    t = binary(target)
    gram = dense.T @ dense
    rhs = np.asarray((t.T @ dense).T)
    if items is not None:
        cross = np.asarray(items.T @ dense)
        gram = np.block([[gram, cross.T], [cross, (items.T @ items).toarray()]])
        rhs = np.vstack([rhs, (items.T @ t).toarray()])
    return gram, rhs


def ridge_solve(gram: np.ndarray, rhs: np.ndarray, l2: float) -> np.ndarray:
    """ridge_map's weights from its normal equations (ridge_system) at one L2 strength."""
    return _spd_solve(gram, l2, rhs).astype(np.float32)


def ridge_scores(weights: np.ndarray, features: Features, n: int) -> np.ndarray:
    dense, items = _blocks(features, n, weights.dtype.type)
    scores = dense @ weights[: dense.shape[1]]
    if items is not None:
        scores += np.asarray(items @ weights[dense.shape[1] :])
    return scores.astype(np.float32)


class LinkedRecommender:
    """Fit on people's rows (sources and target aligned by person); score people given the same kinds of rows."""

    def __init__(self, settings: LinkedSettings, vectors: dict[str, np.ndarray] | None = None) -> None:
        """vectors: per source, its items' content vectors (rows in that source's column order), if any."""
        self.settings = settings
        self.vectors = vectors
        self.warm: np.ndarray | None = None
        self.new: np.ndarray | None = None
        self.n_target = 0

    def _new_features(self, sources: dict[str, sp.csr_matrix]) -> sp.csr_matrix | None:
        s = self.settings
        return newcomer_features(sources, s.new_sources, self.vectors, s.content_weight)

    def fit(
        self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix, known: sp.csr_matrix | None = None
    ) -> LinkedRecommender:
        """sources: people x each source's items; target: people x target items (the target history to learn).
        known: people's whole known target history (train and valid) for the newcomers' part to learn from instead
        (default: target). Its settings were chosen on simulated newcomers, never on valid items, so once chosen it
        may learn from them: more people and rows to map from, +0.8% to +2.0% NDCG@10 for newcomers on three linked
        worlds (docs/results/2026-12-06-linked-newcomers.md). The warm part learns from `target` only: whether it
        answers warm users is judged on their valid items."""
        if known is not None and known.shape != target.shape:
            raise ValueError(
                f"linked part: known target history is people x items {known.shape}, the target rows are "
                f"{target.shape}: both must hold the same people and the target's items, in the same order"
            )
        s = self.settings
        self.n_target = target.shape[1]
        self.warm = ease_target_columns(joint_rows(sources, s.warm_sources, target), self.n_target, s.warm_l2)
        learn = binary(target if known is None else known)
        has_target = np.diff(learn.indptr) > 0
        features = self._new_features({k: m[has_target] for k, m in sources.items()})
        self.new = ridge_map(features, learn[has_target], s.new_l2)
        return self

    def score_warm(self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix) -> np.ndarray:
        assert self.warm is not None, "fit first"
        return np.asarray(joint_rows(sources, self.settings.warm_sources, target) @ self.warm)

    def score_new(self, sources: dict[str, sp.csr_matrix], n: int) -> np.ndarray:
        """n people with no target history, from their source rows (all-empty rows: the intercept, popularity)."""
        assert self.new is not None, "fit first"
        return ridge_scores(self.new, self._new_features(sources), n)

    def score(self, sources: dict[str, sp.csr_matrix], target: sp.csr_matrix) -> np.ndarray:
        """People with a target history by the warm part, the others by the newcomers' part."""
        scores = self.score_new(sources, target.shape[0])
        warm = np.flatnonzero(np.diff(binary(target).indptr) > 0)
        if len(warm):
            scores[warm] = self.score_warm({k: m[warm] for k, m in sources.items()}, target[warm])
        return scores


def rows_by_link(
    histories: dict[str, sp.csr_matrix], row_of: dict[str, int], link_ids: list[str | None]
) -> dict[str, sp.csr_matrix]:
    """Per source, the rows of `histories` (people x that source's items, `row_of`: link id -> row) for these
    people, aligned with `link_ids`; an unknown or missing link id gets an empty row."""
    rows = np.array([row_of.get(link, -1) if link is not None else -1 for link in link_ids], dtype=np.int64)
    known = sp.diags((rows >= 0).astype(np.float64))
    out = {}
    for name, matrix in histories.items():
        picked = sp.csr_matrix(known @ matrix[np.maximum(rows, 0)])
        picked.eliminate_zeros()
        out[name] = picked
    return out


@dataclass
class LinkedPart:
    """The linked recommender inside a target's model, over the unified item index: which people it knows on which
    source (by link id, with their source histories), and which of a target's users it answers.

    A person with no target history and a history on a kept source is answered by the newcomers' part; a person with
    a target history only when `warm` (chosen on the target's valid split against the model it sits in). Everyone
    else is left to the rest of the model."""

    model: LinkedRecommender
    target: str
    target_columns: np.ndarray
    source_columns: dict[str, np.ndarray]
    link_ids: np.ndarray
    histories: dict[str, sp.csr_matrix]
    warm: bool = False

    def __post_init__(self) -> None:
        self._row = {link: row for row, link in enumerate(self.link_ids.tolist())}

    def describe(self) -> dict:
        """What the part does, for reports: the sources each part uses, whether it answers warm users, how many
        people it knows."""
        s = self.model.settings
        return {
            "newcomers_from": [k for k, w in s.new_sources.items() if w > 0],
            "warm_from": [k for k, w in s.warm_sources.items() if w > 0],
            "newcomers_content_weight": s.content_weight,
            "answers_warm": self.warm,
            "people": len(self.link_ids),
        }

    def knows(self, link_id: str) -> bool:
        """Whether this part answers this person with no target history: a history on a source the newcomers' part
        weighs (`answer` leaves such a row to the base model otherwise; warm sources need a target history)."""
        row = self._row.get(link_id)
        if row is None:
            return False
        used = [k for k, w in self.model.settings.new_sources.items() if w > 0]
        return any(self.histories[k].indptr[row + 1] > self.histories[k].indptr[row] for k in used)

    def source_rows(self, link_ids: list[str | None]) -> dict[str, sp.csr_matrix]:
        """Each source's histories for these people, rows aligned (an unknown or missing link id: an empty row)."""
        return rows_by_link(self.histories, self._row, link_ids)

    def answer(
        self, target_rows: sp.csr_matrix, link_ids: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """(rows this part answers, their scores over the unified item index with -inf off the target's columns, per
        answered row the platforms whose histories were used)."""
        n = target_rows.shape[0]
        sources = self.source_rows(link_ids)
        target = binary(sp.csr_matrix(target_rows)[:, self.target_columns])
        has_target = np.diff(target.indptr) > 0

        def on(weights: dict[str, float]) -> np.ndarray:
            found = np.zeros(n, dtype=bool)
            for name, w in weights.items():
                if w > 0:
                    found |= np.diff(sources[name].indptr) > 0
            return found

        new = np.flatnonzero(~has_target & on(self.model.settings.new_sources))
        warm = np.flatnonzero(has_target & on(self.model.settings.warm_sources)) if self.warm else np.array([], int)
        rows = np.concatenate([new, warm]).astype(np.int64)
        scores = np.full((len(rows), target_rows.shape[1]), -np.inf, dtype=np.float64)
        if len(new):
            local = self.model.score_new({k: m[new] for k, m in sources.items()}, len(new))
            scores[: len(new), self.target_columns] = local
        if len(warm):
            local = self.model.score_warm({k: m[warm] for k, m in sources.items()}, target[warm])
            scores[len(new) :, self.target_columns] = local
        settings = self.model.settings
        used = [self._used(sources, r, settings.new_sources) for r in new]
        used += [self._used(sources, r, settings.warm_sources) + [self.target] for r in warm]
        return rows, scores, used

    @staticmethod
    def _used(sources: dict[str, sp.csr_matrix], row: int, weights: dict[str, float]) -> list[str]:
        return [k for k, w in weights.items() if w > 0 and sources[k].indptr[row + 1] > sources[k].indptr[row]]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        s = self.model.settings
        arrays: dict[str, np.ndarray] = {
            "warm": self.model.warm,
            "new": self.model.new,
            "target_columns": self.target_columns,
            "link_ids": self.link_ids.astype(str),
        }
        for i, name in enumerate(self.histories):
            m = self.histories[name]
            arrays |= {f"s{i}_columns": self.source_columns[name], f"s{i}_indptr": m.indptr, f"s{i}_indices": m.indices}
            if self.model.vectors is not None and name in self.model.vectors:
                arrays[f"s{i}_content"] = self.model.vectors[name]
        np.savez_compressed(folder / "linked.npz", **arrays)
        meta = {
            "target": self.target,
            "sources": list(self.histories),
            "warm": self.warm,
            "settings": {
                "warm_l2": s.warm_l2,
                "new_l2": s.new_l2,
                "warm_sources": s.warm_sources,
                "new_sources": s.new_sources,
                "content_weight": s.content_weight,
            },
        }
        (folder / "linked.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> LinkedPart:
        meta = json.loads((folder / "linked.json").read_text())
        arrays = np.load(folder / "linked.npz", allow_pickle=False)
        link_ids = arrays["link_ids"].astype(object)
        columns, histories, vectors = {}, {}, {}
        for i, name in enumerate(meta["sources"]):
            columns[name] = arrays[f"s{i}_columns"]
            if f"s{i}_content" in arrays:
                vectors[name] = arrays[f"s{i}_content"]
            indices = arrays[f"s{i}_indices"]
            histories[name] = sp.csr_matrix(
                (np.ones(len(indices)), indices, arrays[f"s{i}_indptr"]), shape=(len(link_ids), len(columns[name]))
            )
        model = LinkedRecommender(LinkedSettings(**meta["settings"]), vectors or None)
        model.warm, model.new = arrays["warm"], arrays["new"]
        model.n_target = len(arrays["target_columns"])
        return cls(model, meta["target"], arrays["target_columns"], columns, link_ids, histories, meta["warm"])
