"""A non-linear newcomers' model on linked worlds: does it beat the ridge (items + content) the product uses?

    python -m bench.linked_mlp --world DIR [--epochs 30] [--hidden 256]

DIR is a world written by `python -m bench.linked_world` (or bench.linked_content). A multinomial MLP (Mult-DAE
style: dropout on the input, one tanh layer, softmax over the target's items) maps a person's source items and
content profile to their target items; it is fitted on the people with target train rows and judged, with fixed
settings (no choice made on any split), on the new-to-target users' test items, next to the product's ridge with
its settings chosen on simulated newcomers and next to the two scores' z-mean. Exploratory: a first look at whether
the non-linear route is worth building, not a tuned contender.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from bench.linked_content import content_profiles
from transfer_rec.benchmark_linked import World
from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.linked import LinkedRecommender, binary
from transfer_rec.recommender.short_history import zscore
from transfer_rec.selection.linked import choose

K = 10


def fit_mlp(x: np.ndarray, y: sp.csr_matrix, hidden: int, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Dropout(0.5), torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, y.shape[1])
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    inputs = torch.from_numpy(x.astype(np.float32))
    targets = torch.from_numpy(binary(y).toarray().astype(np.float32))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for batch in np.array_split(rng.permutation(len(x)), max(len(x) // 128, 1)):
            logits = model(inputs[batch])
            loss = -(torch.log_softmax(logits, dim=1) * targets[batch]).sum(dim=1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return model


def run(world_dir: Path, hidden: int, epochs: int, seed: int) -> dict:
    world = World(
        world_dir / "platforms.yaml", {s: str(world_dir / f"target_{s}.tsv") for s in ("train", "valid", "test")}
    )
    profiles = content_profiles(world, world_dir)
    train, valid, test = (binary(world.splits[s]) for s in ("train", "valid", "test"))
    has_target = np.diff(train.indptr) > 0
    newcomers = np.flatnonzero((np.diff(test.indptr) > 0) & ~has_target & (np.diff(valid.indptr) == 0))
    on_source = newcomers[world.linked_sources[newcomers] > 0]
    items = sp.hstack(list(world.sources.values()), format="csr")
    x = np.hstack([items.toarray(), profiles])

    vectors = world.content(world_dir / ".content-cache")
    choice = choose(world.sources, train, valid, k=K, seed=seed, vectors=vectors)
    ridge = LinkedRecommender(choice.settings, vectors).fit(world.sources, train)
    ridge_scores = ridge.score_new({n: m[on_source] for n, m in world.sources.items()}, len(on_source))

    fit_rows = np.flatnonzero(has_target & (world.linked_sources > 0))
    mlp = fit_mlp(x[fit_rows], train[fit_rows], hidden, epochs, seed)
    with torch.no_grad():
        mlp_scores = mlp(torch.from_numpy(x[on_source].astype(np.float32))).numpy()

    def ndcg(scores: np.ndarray) -> float:
        return float(per_user_metrics(top_k(scores, K), test[on_source], K)["ndcg"].mean())

    result = {
        "newcomers_on_a_source": int(len(on_source)),
        "ridge": ndcg(ridge_scores),
        "mlp": ndcg(mlp_scores),
        "z_mean": ndcg(zscore(ridge_scores) + zscore(mlp_scores)),
        "ridge_settings": choice.summary(),
    }
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.world, args.hidden, args.epochs, args.seed)


if __name__ == "__main__":
    main()
