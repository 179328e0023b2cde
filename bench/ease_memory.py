"""Peak memory and time of the EASE baseline's fit as the train stage makes it: the whole L2 grid, keeping the best,
scoring the judges at each strength. On synthetic power-law rows over `--items` items of an index `--other-items`
larger (the other platforms' items, which the target's train never has).

    python -m bench.ease_memory --users 20000 --items 8928 --other-items 11500 --per-user 40 [--textbook]

`--textbook` fits each strength the way the train stage did before 2026-12-05 (its own sparse Gram, a general
inverse, weights over the whole index), as the reference. Run each in a fresh process: the peak is the process's
(ru_maxrss). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from bench.model_memory import power_law
from transfer_rec.recommender.ease import EASE
from transfer_rec.stages.train import EASE_L2_GRID


def textbook(train: sp.csr_matrix, l2: float) -> np.ndarray:
    x = (train > 0).astype(np.float64).tocsc()
    active = np.flatnonzero(np.diff(x.indptr) > 0)
    gram = (x[:, active].T @ x[:, active]).toarray()
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    block = -precision / np.diag(precision)
    block[np.diag_indices_from(block)] = 0.0
    weights = np.zeros((train.shape[1], train.shape[1]), dtype=np.float32)
    weights[np.ix_(active, active)] = block
    return weights


def textbook_grid(train: sp.csr_matrix) -> Iterator[EASE]:
    for l2 in EASE_L2_GRID:
        model = EASE(l2)
        model.items, model.weights = np.arange(train.shape[1]), textbook(train, l2)
        yield model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ease_memory", description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=8_928)
    parser.add_argument("--other-items", type=int, default=11_500)
    parser.add_argument("--per-user", type=int, default=40)
    parser.add_argument("--judges", type=int, default=2_000)
    parser.add_argument("--textbook", action="store_true")
    args = parser.parse_args(argv)
    own = power_law(args.users, args.items, args.per_user, seed=0)
    train = sp.hstack([own, sp.csr_matrix((args.users, args.other_items), dtype=own.dtype)]).tocsr()
    judges = train[: args.judges]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    best, best_sum, sums = None, -np.inf, []
    for model in textbook_grid(train) if args.textbook else EASE.grid(train, EASE_L2_GRID):
        total = float(model.score(judges).sum())  # stands in for the judges' NDCG: any reading of every score
        sums.append(round(total, 1))
        if total > best_sum:
            best, best_sum = model, total
        del model  # as the train stage: only the best is held while the next is solved
    print(
        json.dumps(
            {
                "fit": "textbook" if args.textbook else "ease.grid",
                "users": args.users,
                "items": args.items,
                "index_items": train.shape[1],
                "interactions": int(own.nnz),
                "seconds": round(time.perf_counter() - started, 1),
                "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "peak_before_fit_gib": round(before / 2**20, 2),
                "judge_score_sums": sums,
                "kept_l2": best.l2 if best is not None else None,
            }
        )
    )


if __name__ == "__main__":
    main()
