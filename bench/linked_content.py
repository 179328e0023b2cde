"""Does item content help newcomers across catalogues that do not overlap? An experiment on linked worlds.

    python -m bench.linked_content --target action --seed 21 --out DIR [--target-keep 0.25] [--source-drop 0.3]

The linked recommender's newcomers' part is a ridge from a person's source items to the target's items, learned on
the people who use both. Here each person also gets a content profile: the mean, over their source items, of each
item's content vector (genres, year bucket and the MiniLM embedding of its title, as recommender/content.py builds
them), appended to the ridge's features with a weight w. w = 0 is today's part. For each w the ridge's L2 is chosen
on simulated newcomers (people with both histories, their target rows withheld, cross-fitted), as selection/linked.py
does; the test newcomers' NDCG@10 is reported next to it (never used for a choice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.linked_world import build_world
from transfer_rec.benchmark_linked import World
from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.content import YEAR_BUCKETS, title_embeddings
from transfer_rec.recommender.linked import binary, joint_rows, ridge_map, ridge_scores
from transfer_rec.selection.linked import NEW_L2

K = 10
WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def item_content(described: pd.DataFrame, genres: list[str], cache: Path) -> np.ndarray:
    """Unit vectors: genres (one-hot), year bucket (smoothed one-hot), title embedding; each part unit, then all."""
    tokens = described["genres"].fillna("").str.split()
    genre = np.array([[g in t for g in genres] for t in tokens], dtype=np.float32)
    year = pd.to_numeric(described["year"], errors="coerce").to_numpy(dtype=np.float64)
    bucket = np.searchsorted(YEAR_BUCKETS, np.nan_to_num(year, nan=-1), side="right")
    onehot = np.zeros((len(described), len(YEAR_BUCKETS) + 1), dtype=np.float32)
    onehot[np.arange(len(described)), bucket] = 1.0
    smooth = onehot + 0.5 * np.roll(onehot, 1, axis=1) + 0.5 * np.roll(onehot, -1, axis=1)
    titles = title_embeddings(described["title"].fillna("").astype(str).tolist(), cache)
    return _unit(np.concatenate([_unit(genre), _unit(smooth), titles], axis=1)).astype(np.float32)


def content_profiles(world: World, out: Path) -> np.ndarray:
    """people x d: the mean content vector of each person's items over all sources (zeros on no source)."""
    described = {
        name: pd.read_csv(out / f"{name}_items.tsv", sep="\t", dtype=str).set_index("item_id") for name in world.sources
    }
    genres = sorted({g for d in described.values() for t in d["genres"].fillna("").str.split() for g in t})
    total, count = None, np.zeros(world.n_people)
    for name, rows in world.sources.items():
        frame = described[name].reindex(world.items[name]).reset_index()
        vectors = item_content(frame, genres, out / ".content-cache")
        part = np.asarray(binary(rows) @ vectors)
        total = part if total is None else total + part
        count += np.diff(binary(rows).indptr)
    return (total / np.maximum(count, 1)[:, None]).astype(np.float32)


def features(world: World, people: np.ndarray, profiles: np.ndarray, weight: float) -> sp.csr_matrix:
    items = joint_rows({n: m[people] for n, m in world.sources.items()}, {n: 1.0 for n in world.sources})
    if weight == 0:
        return items
    return sp.hstack([items, sp.csr_matrix(weight * profiles[people])], format="csr")


def run(out: Path, seed: int) -> dict:
    world = World(
        out / "platforms.yaml",
        {s: str(out / f"target_{s}.tsv") for s in ("train", "valid", "test")},
    )
    profiles = content_profiles(world, out)
    train, valid, test = (binary(world.splits[s]) for s in ("train", "valid", "test"))
    known = binary(train + valid)
    has_target = np.diff(train.indptr) > 0
    on_source = world.linked_sources > 0
    simulated = np.flatnonzero(has_target & on_source)
    fold = np.random.default_rng(seed).integers(0, 2, len(simulated))
    newcomers = np.flatnonzero((np.diff(test.indptr) > 0) & ~has_target & (np.diff(valid.indptr) == 0))
    fit_rows = np.flatnonzero(has_target)
    results = []
    for weight in WEIGHTS:
        best = (-1.0, None)
        for l2 in NEW_L2:
            scores = []
            for f in (0, 1):
                held = simulated[fold == f]
                rows = np.setdiff1d(fit_rows, held)
                mapping = ridge_map(features(world, rows, profiles, weight), train[rows], l2)
                ranked = top_k(ridge_scores(mapping, features(world, held, profiles, weight), len(held)), K)
                scores.append(per_user_metrics(ranked, known[held], K)["ndcg"])
            best = max(best, (float(np.concatenate(scores).mean()), l2))
        mapping = ridge_map(features(world, fit_rows, profiles, weight), train[fit_rows], best[1])
        ranked = top_k(ridge_scores(mapping, features(world, newcomers, profiles, weight), len(newcomers)), K)
        ndcg = per_user_metrics(ranked, test[newcomers], K)["ndcg"]
        by_sources = {
            int(c): float(ndcg[world.linked_sources[newcomers] == c].mean())
            for c in np.unique(world.linked_sources[newcomers])
        }
        results.append(
            {
                "weight": weight,
                "l2": best[1],
                "simulated_ndcg": best[0],
                "test_new_ndcg": float(ndcg.mean()),
                "test_new_by_sources": by_sources,
            }
        )
        print(json.dumps(results[-1]))
    return {"newcomers": int(len(newcomers)), "simulated": int(len(simulated)), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="action")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--target-keep", type=float, default=0.25)
    parser.add_argument("--source-drop", type=float, default=0.3)
    parser.add_argument("--new-share", type=float, default=0.3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not (args.out / "platforms.yaml").exists():
        build_world(args.out, args.target, args.seed, args.target_keep, args.source_drop, args.new_share)
    result = run(args.out, args.seed)
    (args.out / "content.json").write_text(json.dumps({**vars(args), "out": str(args.out), **result}, indent=2))


if __name__ == "__main__":
    main()
