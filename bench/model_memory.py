"""Peak memory and time of the model itself: TransferRecommender pretrain then fine-tune (one epoch each, the
config's other settings) on synthetic power-law data, in a fresh process per size.

    python -m bench.model_memory --source-users 50000 --items 8000 [--target-users 2000] [--per-user 50]
        [--pretrain-only] [--item-dense-max N] [--softmax-items-max N] [--latency REQUESTS]

Prints one JSON line: sizes, wall seconds per phase, and the process's peak resident memory (GiB, ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import numpy as np
import scipy.sparse as sp


def power_law(users: int, items: int, per_user: int, seed: int) -> sp.csr_matrix:
    """Users x items, each user `per_user` draws from a Zipf-like item popularity (duplicates merged)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    rows = np.repeat(np.arange(users), per_user)
    cols = rng.choice(items, size=users * per_user, p=weights)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(users, items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_memory", description=__doc__)
    parser.add_argument("--source-users", type=int, default=20_000)
    parser.add_argument("--target-users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (its own peak)")
    parser.add_argument("--item-dense-max", type=int, help="the config's item_dense_max unless given")
    parser.add_argument("--softmax-items-max", type=int, help="the config's softmax_items_max unless given")
    parser.add_argument("--latency", type=int, default=0, help="then time this many one-user scorings of each kind")
    args = parser.parse_args(argv)

    from transfer_rec.config import load_config
    from transfer_rec.recommender.transfer import TransferRecommender

    source = power_law(args.source_users, args.items, args.per_user, 1)
    target = power_law(args.target_users, args.items, args.per_user, 2)
    # a tenth of each target user's items held out as valid
    coo = target.tocoo()
    held = np.random.default_rng(3).random(coo.nnz) < 0.1
    train = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=target.shape)
    valid = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=target.shape)
    update = {"epochs_pretrain": 1, "epochs_finetune": 1}
    if args.item_dense_max is not None:
        update["item_dense_max"] = args.item_dense_max
    if args.softmax_items_max is not None:
        update["softmax_items_max"] = args.softmax_items_max
    config = load_config().training.model_copy(update=update)
    model = TransferRecommender(args.items, config)
    started = time.perf_counter()
    model.pretrain({"source": source})
    pretrained = time.perf_counter()
    if not args.pretrain_only:
        model.finetune(train, valid)
    done = time.perf_counter()
    served = {} if args.pretrain_only or not args.latency else latency(model, train, args.latency)
    print(
        json.dumps(
            {
                "source_users": args.source_users,
                "target_users": args.target_users,
                "items": args.items,
                "item_item": None
                if args.pretrain_only
                else ("exact" if model._exact_items else f"{config.item_neighbours} neighbours"),
                "encoder_loss": "sampled" if args.items > config.softmax_items_max else "full softmax",
                "source_interactions": int(source.nnz),
                "pretrain_seconds": round(pretrained - started, 1),
                "finetune_seconds": None if args.pretrain_only else round(done - pretrained, 1),
                "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                **served,
            }
        )
    )


def latency(model: Any, train: sp.csr_matrix, requests: int) -> dict[str, Any]:
    """The served model (saved without the source rows, loaded back) scoring one user at a time on one thread, as
    the pyfunc model answers a small request: a known user's whole history, and a new user's 5 items. Milliseconds,
    p50 and p99, and the saved model's size."""
    import tempfile

    import torch

    from transfer_rec.recommender.transfer import TransferRecommender

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/model.pt"
        torch.save(model.state(with_source=False), path)
        size = os.path.getsize(path)
        served = TransferRecommender.from_state(torch.load(path, map_location="cpu", weights_only=True))
    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    known = rng.choice(np.flatnonzero(np.diff(train.indptr) > 0), requests)
    fresh = [
        sp.csr_matrix(
            (np.ones(5, np.float32), (np.zeros(5), rng.choice(train.shape[1], 5, replace=False))),
            shape=(1, train.shape[1]),
        )
        for _ in range(requests)
    ]
    out: dict[str, Any] = {
        "served_model_mib": round(size / 2**20, 1),
        # what the fit chose for the part a known user's request pays most for (None: left out)
        "kernel_basis_users": None if served.kernel is None else int(served.kernel.rows.shape[0]),
        "kernel_weight": served.kernel_weight,
    }
    for kind, rows in (("known", [train[[u]] for u in known]), ("new_5_items", fresh)):
        served.score(rows[0])  # the first call builds the scoring caches
        times = []
        for row in rows:
            started = time.perf_counter()
            served.score(row)
            times.append((time.perf_counter() - started) * 1000)
        out[f"{kind}_ms"] = {
            "p50": round(float(np.percentile(times, 50)), 2),
            "p99": round(float(np.percentile(times, 99)), 2),
        }
    return out


if __name__ == "__main__":
    main()
