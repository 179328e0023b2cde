"""Ranking a block of score rows to their top k: `metrics.ranking.top_k` (torch's partial sort) against numpy's
argpartition and argsort, the way top_k ranked before 2026-12-06.

    python -m bench.top_k [--rows 1024] [--items 8928 18351] [--k 10] [--repeats 10]

Both rank the same float64 scores with some items not candidates and check they give the same lists (random
scores have no ties). Prints milliseconds per call (`rows` rows; top_k ranks 1,024 at a time) for each catalogue
size, each way twice, alternating.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from transfer_rec.metrics.ranking import top_k


def numpy_top_k(scores: np.ndarray, k: int, candidates: np.ndarray) -> np.ndarray:
    """top_k as numpy ranked before: a float64 copy, its negation, argpartition, then the k sorted."""
    block = np.array(scores, dtype=np.float64, copy=True)
    block[:, ~candidates] = -np.inf
    part = np.argpartition(-block, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(block, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def block_ms(rank, scores: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    ranked = rank(scores)
    started = time.perf_counter()
    for _ in range(repeats):
        rank(scores)
    return (time.perf_counter() - started) / repeats * 1000, ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--items", type=int, nargs="+", default=[8928, 18351])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for items in args.items:
        rng = np.random.default_rng(0)
        scores = rng.standard_normal((args.rows, items))
        candidates = rng.random(items) > 0.1
        ways = {
            "numpy": lambda s, c=candidates: numpy_top_k(s, args.k, c),
            "top_k": lambda s, c=candidates: top_k(s, args.k, candidates=c),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        lists = {}
        for _ in range(2):
            for name, rank in ways.items():
                ms, lists[name] = block_ms(rank, scores, args.repeats)
                times[name].append(round(ms, 4))
        if not np.array_equal(lists["numpy"], lists["top_k"]):
            raise SystemExit(f"top_k and numpy ranked {args.rows} x {items} differently")
        out[f"{args.rows}x{items}"] = times
    print(json.dumps({"ms_per_call": out, "threads": args.threads, "k": args.k}, indent=1))


if __name__ == "__main__":
    main()
