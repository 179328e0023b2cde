"""Do the sources' rating values tell the newcomers' part more than which items a person rated?

    python -m bench.linked_ratings --world DIR [--seed 0] [--folds 5]

DIR is a world of bench/linked_world.py (its source files keep each positive's rating, 3 to 5). The product's
newcomers' part (recommender/linked.py: a ridge from a person's source items, content profile and an intercept to
their known target rows) reads each source item as 1; here the same part reads it through a transform of its
rating. Each transform's content weight and L2 are chosen on simulated newcomers (people with target and source
histories, their target rows withheld, `folds` seeded folds), as selection/linked.py chooses them; the test
newcomers' NDCG@10 is reported beside it and used for nothing. Printed and written to DIR/ratings.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import transfer_rec.benchmark_linked as linked_bench
from transfer_rec.benchmark_linked import World, platform_table
from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.linked import binary, newcomer_features, ridge_map, ridge_scores
from transfer_rec.selection.linked import CONTENT_WEIGHTS, NEW_L2

K = 10
# rating (3, 4 or 5) -> the value a source item is read as
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "binary": lambda r: np.ones_like(r),
    "rating - 2": lambda r: r - 2.0,
    "sqrt(rating - 2)": lambda r: np.sqrt(r - 2.0),
    "5 only x2": lambda r: np.where(r >= 5, 2.0, 1.0),
    "3 as 0.5": lambda r: np.where(r <= 3, 0.5, 1.0),
}


class RatedWorld(World):
    """World, with each source's (person x item) ratings kept beside its 0/1 rows."""

    def __init__(self, registry: Path, splits: dict[str, str]) -> None:
        self.rating_frames: dict[str, pd.DataFrame] = {}
        original = linked_bench.read_interactions

        def with_ratings(p, base):
            frame = platform_table(p, base, "interactions")[["user_id", "item_id", "rating"]].astype(
                {"user_id": str, "item_id": str}
            )
            frame = frame.groupby(["user_id", "item_id"], as_index=False, sort=False)["rating"].max()
            self.rating_frames[p.name] = frame
            return frame

        linked_bench.read_interactions = with_ratings
        try:
            super().__init__(registry, splits)
        finally:
            linked_bench.read_interactions = original
        self.ratings = {}
        for name, frame in self.rating_frames.items():
            cols = self.items[name].get_indexer(frame["item_id"])
            matrix = sp.csr_matrix(
                (frame["rating"].to_numpy(float), (frame["person"].to_numpy(), cols)),
                shape=(self.n_people, len(self.items[name])),
            )
            self.ratings[name] = matrix


def run(folder: Path, seed: int, folds: int) -> dict:
    world = RatedWorld(
        folder / "platforms.yaml", {s: str(folder / f"target_{s}.tsv") for s in ("train", "valid", "test")}
    )
    train, valid, test = (binary(world.splits[s]) for s in ("train", "valid", "test"))
    known = binary(train + valid)
    has_target = np.diff(known.indptr) > 0
    simulated = np.flatnonzero((np.diff(train.indptr) > 0) & (world.linked_sources > 0))
    fold = np.random.default_rng(seed).integers(0, folds, len(simulated))
    newcomers = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(known.indptr) == 0))
    everyone = {n: 1.0 for n in world.sources}
    vectors = world.content(folder / ".content-cache")
    report: dict = {"world": str(folder), "newcomers": int(len(newcomers)), "simulated": int(len(simulated))}

    def scores(sources: dict, fit_rows: np.ndarray, rows: np.ndarray, content: float, l2: float) -> np.ndarray:
        # the content profile stays the mean over rated items: only the item columns carry the rating
        fit = newcomer_features({n: m[fit_rows] for n, m in sources.items()}, everyone, vectors, content)
        fit = _rated(fit, {n: m[fit_rows] for n, m in sources.items()})
        mapping = ridge_map(fit, known[fit_rows], l2)
        held = newcomer_features({n: m[rows] for n, m in sources.items()}, everyone, vectors, content)
        return ridge_scores(mapping, _rated(held, {n: m[rows] for n, m in sources.items()}), len(rows))

    def ndcg(values: np.ndarray, relevant: sp.csr_matrix) -> float:
        return float(per_user_metrics(top_k(values, K), relevant, K)["ndcg"].mean())

    for name, transform in TRANSFORMS.items():
        sources = {}
        for n, m in world.ratings.items():
            valued = m.copy()
            valued.data = transform(valued.data)
            sources[n] = valued
        trials = []
        for content in (0.0, *CONTENT_WEIGHTS):
            for l2 in NEW_L2:
                out = np.zeros((len(simulated), train.shape[1]), dtype=np.float32)
                for f in range(folds):
                    held = simulated[fold == f]
                    out[fold == f] = scores(sources, np.setdiff1d(np.flatnonzero(has_target), held), held, content, l2)
                trials.append((ndcg(out, known[simulated]), {"content": content, "l2": l2}))
        score, setting = max(trials, key=lambda t: t[0])
        final = scores(sources, np.flatnonzero(has_target), newcomers, **setting)
        report[name] = {"setting": setting, "simulated": score, "test": ndcg(final, test[newcomers])}
        print(name, json.dumps(report[name]), flush=True)
    return report


def _rated(features, sources: dict[str, sp.csr_matrix]):
    """newcomer_features' output with its item block replaced by the valued rows (binary() made them 0/1)."""
    valued = sp.hstack(list(sources.values()), format="csr")
    if isinstance(features, tuple):
        return valued, features[1]
    return valued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    report = run(args.world, args.seed, args.folds)
    (args.world / "ratings.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
