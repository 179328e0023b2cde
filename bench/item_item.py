"""The item-item part's exact solve against its neighbourhood solve (recommender/item_item.py): accuracy where both
run, cost where the exact one stops.

    python -m bench.item_item accuracy --seeds 1 2 3 4 5 --neighbours 50 100 200 400
    python -m bench.item_item cost --method dense|neighbours --users 200000 --items 20000 [--neighbours 200]

accuracy: MovieLens-1M (ratings >= 3 as positives), per seed a random 20% of each user's positives held out as test;
the item-item part alone, fitted on the rest at the product's settings (lam, drop_p; rating-weighted rows), scored
by NDCG@10 on test with train masked, exactly and with each number of neighbours. One JSON line per seed.
cost: one solve on synthetic power-law rows (bench/model_memory.py's generator, 50 draws per user), in this
process: wall seconds, the process's peak resident memory (ru_maxrss) and, by neighbourhoods, the size of what a
fine-tune keeps of each Gram between its settings (Neighbourhoods). Run each size in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def _ml_1m_split(seed: int, cache: Path) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    from transfer_rec.config import TrainingConfig
    from transfer_rec.io.linked_world import load_ml_1m

    inter = load_ml_1m(cache)[0]
    rating = inter["rating"].astype(float).to_numpy()
    inter = inter[rating >= 3]
    users = inter["user_id"].astype("category").cat.codes.to_numpy()
    items = inter["item_id"].astype("category").cat.codes.to_numpy()
    # rating-weighted rows as the product builds them (PlatformData.matrix)
    weights = 1.0 + TrainingConfig().rating_weight * (inter["rating"].astype(float).to_numpy() - 4.0)
    test = np.random.default_rng(seed).random(len(users)) < 0.2
    shape = (users.max() + 1, items.max() + 1)
    train = sp.csr_matrix((weights[~test].astype(np.float32), (users[~test], items[~test])), shape=shape)
    held = sp.csr_matrix((np.ones(test.sum(), dtype=np.float32), (users[test], items[test])), shape=shape)
    return train, held


def accuracy(args: argparse.Namespace) -> None:
    from transfer_rec.config import TrainingConfig
    from transfer_rec.metrics.ranking import evaluate_scores
    from transfer_rec.recommender.item_item import dense_gram, item_item_solve, neighbourhood_solve

    settings = TrainingConfig()
    with tempfile.TemporaryDirectory() as cache:
        for seed in args.seeds:
            train, test = _ml_1m_split(seed, Path(cache))
            n_items = train.shape[1]
            terms = [(1.0, train)]

            def ndcg(
                weights: np.ndarray | sp.spmatrix, train: sp.csr_matrix = train, test: sp.csr_matrix = test
            ) -> float:
                scores = train @ weights
                scores = scores.toarray() if sp.issparse(scores) else np.asarray(scores)
                return round(float(np.mean(evaluate_scores(scores, train, test, 10)["ndcg"])), 4)

            started = time.perf_counter()
            row: dict[str, object] = {"seed": seed, "items": n_items, "interactions": int(train.nnz)}
            exact = item_item_solve(dense_gram(terms, n_items), settings.lam, settings.drop_p)
            row["exact"] = {"ndcg": ndcg(exact), "seconds": round(time.perf_counter() - started, 1)}
            for n in args.neighbours:
                started = time.perf_counter()
                weights = neighbourhood_solve(terms, n_items, settings.lam, settings.drop_p, n)
                row[f"neighbours_{n}"] = {"ndcg": ndcg(weights), "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(row), flush=True)


def cost(args: argparse.Namespace) -> None:
    from bench.model_memory import power_law
    from transfer_rec.config import TrainingConfig
    from transfer_rec.recommender.item_item import Neighbourhoods, dense_gram, item_item_solve

    settings = TrainingConfig()
    rows = power_law(args.users, args.items, 50, 1)
    started = time.perf_counter()
    held = None
    if args.method == "dense":
        weights = item_item_solve(dense_gram([(1.0, rows)], args.items), settings.lam, settings.drop_p)
        stored = weights.astype(np.float32).nbytes
    else:
        found = Neighbourhoods.find([(1.0, rows)], args.items, args.neighbours)
        weights = found.solve(settings.lam, settings.drop_p)
        stored = weights.data.nbytes + weights.indices.nbytes + weights.indptr.nbytes
        # what a fine-tune keeps of each Gram between its settings (it keeps two)
        held = sum(a.nbytes for a in (found.neighbour, found.cooccurrence, found.diagonal, found.active))
        held += found.pruned.data.nbytes + found.pruned.indices.nbytes + found.pruned.indptr.nbytes
    print(
        json.dumps(
            {
                "method": args.method,
                "neighbours": args.neighbours if args.method == "neighbours" else None,
                "users": args.users,
                "items": args.items,
                "interactions": int(rows.nnz),
                "seconds": round(time.perf_counter() - started, 1),
                "weights_mib": round(stored / 2**20, 1),
                "neighbourhoods_mib": None if held is None else round(held / 2**20, 1),
                "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.item_item", description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    acc = modes.add_parser("accuracy")
    acc.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    acc.add_argument("--neighbours", type=int, nargs="+", default=[50, 100, 200, 400])
    cst = modes.add_parser("cost")
    cst.add_argument("--method", choices=["dense", "neighbours"], required=True)
    cst.add_argument("--users", type=int, default=200_000)
    cst.add_argument("--items", type=int, default=20_000)
    cst.add_argument("--neighbours", type=int, default=200)
    args = parser.parse_args(argv)
    accuracy(args) if args.mode == "accuracy" else cost(args)


if __name__ == "__main__":
    main()
