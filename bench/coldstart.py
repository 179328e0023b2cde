"""Cold-start protocol (docs/evaluation.md): new users on the target, seen through their profile and first k items.

20% of the target's users (seeded) are held out as new users; none of their interactions is used in training. The
other 80% keep their usual per-user 80/10/10 split (train; valid only for selection). Each new user is given their k
earliest interactions (by timestamp) as history, k in HISTORY_LENGTHS, and the remaining ones are ranked over the
target's catalogue with the history masked. k = 0: the model sees only the user's profile (age, gender, occupation).

Contenders, all fitted on the warm users only:
- popularity on target train;
- target-only: popularity, EASE (L2 on valid), and our model trained without the source, its profile prior learned
  from the target's users alone (the best of them per k in the table);
- transfer: pretrained on the source, fine-tuned on the target, profile prior learned from source and target users.
Side weights (profile prior, co-occurrence, position shift, content) are chosen on the warm users' valid items by
simulating short histories from their train interactions (selection/short_history.py), never on the new users.

The same run also measures the modality ablation on the warm protocol (all target users, the benchmark's split):
what the profile prior, genres/year and title text add to the transfer model's test NDCG@10; and, as a reference
that is no contender, how much a profile can say about a new user at k = 0 at all (`profile_ceiling`).

    python -m bench.coldstart --seeds 2022 2023 2024 --out DIR     (also: python -m bench.protocol --cold-start)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from transfer_rec.config import PipelineConfig, load_config
from transfer_rec.manifests import FeatureSet
from transfer_rec.metrics.ranking import evaluate_scores, mean_metrics
from transfer_rec.recommender.ease import EASE
from transfer_rec.recommender.popularity import Popularity
from transfer_rec.recommender.transfer import TransferRecommender
from transfer_rec.runtime.threads import use_torch_threads
from transfer_rec.selection.short_history import (
    K,
    ShortHistoryData,
    attach,
    first_items,
    fitter,
    ordered_items,
    simulations,
)
from transfer_rec.stages.train import new_model, with_training

log = logging.getLogger("bench.coldstart")

HISTORY_LENGTHS = (0, 1, 3, 5)
EASE_L2_GRID = (100.0, 300.0, 1000.0)
# short-history variants: (profile prior, co-occurrence lift, content parts, position shift); see
# recommender/short_history.py
VARIANTS = {
    "base": (False, False, (), False),
    "+profile": (True, False, (), False),
    "+profile+cooc": (True, True, (), False),
    "+profile+cooc+shift": (True, True, (), True),
    "+genres/year": (False, False, ("genres", "year"), False),
    "+title": (False, False, ("title",), False),
    "+profile+cooc+shift+content": (True, True, ("genres", "year", "title"), True),
}
FULL = "+profile+cooc+shift+content"
TARGET_ONLY_VARIANTS = ("base", "+profile+cooc", "+profile+cooc+shift", FULL)
# profile_ceiling: the profile cells (user columns) and smoothing (pseudo-users) it tries
CEILING_CELLS = (("gender",), ("age",), ("occupation",), ("gender", "age"), ("gender", "age", "occupation"))
CEILING_SMOOTHING = (0.0, 3.0, 10.0, 30.0, 100.0)
CEILING_SOURCE_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


NEW_USER_SHARE = 0.2


@dataclass
class ColdSplit:
    """The warm users (what every contender learns from), their test items, and the new users' time-ordered items
    and profiles."""

    data: ShortHistoryData
    test: sp.csr_matrix
    new_users: pd.DataFrame
    new_ordered: list[np.ndarray]  # each new user's items, earliest first


def _matrix(frame: pd.DataFrame, user_ids: np.ndarray, n_items: int) -> sp.csr_matrix:
    row = pd.Series(np.arange(len(user_ids)), index=user_ids)
    return sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (row[frame["user_id"]].to_numpy(), frame["item_idx"].to_numpy())),
        shape=(len(user_ids), n_items),
    )


def _profiles(users: pd.DataFrame, user_ids: np.ndarray) -> pd.DataFrame:
    return users.set_index("user_id").reindex(user_ids).reset_index()


def cold_split(
    features: FeatureSet, config: PipelineConfig, seed: int, share: float = NEW_USER_SHARE, warm_share: float = 1.0
) -> ColdSplit:
    """Hold out `share` of the first target's users (seeded) as new users; the rest keep the features' split.
    `warm_share` < 1 keeps only that share of the other users (seeded, drawn after the new users, so these stay the
    same): a smaller target platform with the same new users."""
    if not 0.0 < warm_share <= 1.0:
        raise ValueError(f"cold_split: warm_share must be in (0, 1], got {warm_share}")
    folder, n_items = Path(features.dir), features.n_items
    target, source = config.targets[0].name, config.sources[0].name
    frame = pd.read_parquet(folder / f"{target}.interactions.parquet")
    users = pd.read_parquet(folder / f"{target}.users.parquet")
    user_ids = np.sort(frame["user_id"].unique())
    rng = np.random.default_rng(seed)
    new = np.sort(rng.permutation(user_ids)[: int(round(share * len(user_ids)))])
    warm_ids = np.setdiff1d(user_ids, new)
    if warm_share < 1.0:
        warm_ids = np.sort(rng.permutation(warm_ids)[: max(1, int(round(warm_share * len(warm_ids))))])
    warm_frame, new_frame = frame[frame["user_id"].isin(set(warm_ids))], frame[frame["user_id"].isin(set(new))]
    catalogue = np.zeros(n_items, dtype=bool)
    catalogue[frame["item_idx"].unique()] = True
    source_frame = pd.read_parquet(folder / f"{source}.interactions.parquet")
    source_users = pd.read_parquet(folder / f"{source}.users.parquet")
    source_ids = np.sort(source_frame["user_id"].unique())
    split = {s: _matrix(warm_frame[warm_frame["split"] == s], warm_ids, n_items) for s in ("train", "valid", "test")}
    data = ShortHistoryData(
        n_items=n_items,
        catalogue=catalogue,
        train=split["train"],
        valid=split["valid"],
        users=_profiles(users, warm_ids),
        ordered=ordered_items(warm_frame[warm_frame["split"] == "train"], warm_ids),
        source=_matrix(source_frame, source_ids, n_items),
        source_users=_profiles(source_users, source_ids),
        items=pd.read_parquet(folder / "items.parquet"),
    )
    return ColdSplit(
        data=data, test=split["test"], new_users=_profiles(users, new), new_ordered=ordered_items(new_frame, new)
    )


def new_user_tasks(split: ColdSplit) -> dict[int, tuple[sp.csr_matrix, sp.csr_matrix]]:
    """Per k: (history = k earliest items, relevant = the remaining ones) of every new user."""
    tasks = {}
    for k in HISTORY_LENGTHS:
        history = first_items(split.new_ordered, split.data.n_items, k)
        everything = first_items(split.new_ordered, split.data.n_items, None)
        tasks[k] = (history, sp.csr_matrix(everything - history))
    return tasks


def _cold_metrics(
    scores: np.ndarray, history: sp.csr_matrix, relevant: sp.csr_matrix, catalogue: np.ndarray
) -> dict[str, float]:
    return mean_metrics(evaluate_scores(scores, history, relevant, K, catalogue))


def _cell_shares(
    items: sp.csr_matrix, keys: np.ndarray, asked: np.ndarray, own: np.ndarray, member: bool, m: float
) -> np.ndarray:
    """Per asker (their cell key in `asked`): each item's share among the rows of `items` whose key is the same,
    smoothed towards its share over all rows by m pseudo-users. A `member` asker is one of the rows: their own items
    (`own`, one row per asker) and the asker are left out."""
    left_out = 1 if member else 0
    overall = (np.asarray(items.sum(0)).ravel()[None, :] - own) / max(items.shape[0] - left_out, 1)
    counts, sizes = np.zeros_like(own), np.zeros(len(asked))
    for cell in np.unique(asked):
        rows, members = np.flatnonzero(asked == cell), np.flatnonzero(keys == cell)
        counts[rows] = np.asarray(items[members].sum(0)).ravel()[None, :] - own[rows]
        sizes[rows] = len(members) - left_out
    weight = sizes + m
    return np.where(weight[:, None] > 0, (counts + m * overall) / np.maximum(weight, 1e-12)[:, None], overall)


def profile_ceiling(split: ColdSplit) -> dict[str, Any]:
    """How much a profile says about a new user's items, measured with the answers in hand: a reference for k = 0,
    not a contender (it looks at the new users' items, which no model may).

    Each new user's items are ranked by their share among the users of the same profile cell (equal values of the
    cell's columns), counted over every target user: the warm users' train, valid and test items and the other new
    users' items, the user themself left out; smoothed towards the whole target's share by m pseudo-users. With a
    source, a share s of the score is the same cell's shares among the source's users. The cell definition
    (CEILING_CELLS), m (CEILING_SMOOTHING) and s (CEILING_SOURCE_SHARES) kept are the best on the new users
    themselves: `best`; `best_target` is the best with s = 0 (the target's users alone)."""
    new_items = first_items(split.new_ordered, split.data.n_items, None)
    everyone = sp.vstack([split.data.train + split.data.valid + split.test, new_items]).tocsr()
    everyone.data[:] = 1.0
    users = pd.concat([split.data.users, split.new_users], ignore_index=True)
    source = sp.csr_matrix(split.data.source, copy=True)
    source.data[:] = 1.0
    shares = CEILING_SOURCE_SHARES if source.shape[0] and source.nnz else (0.0,)
    own = new_items.toarray()
    no_history = sp.csr_matrix(new_items.shape, dtype=np.float32)
    grid = []
    for cells in CEILING_CELLS:
        keys = users[list(cells)].astype(str).agg("|".join, axis=1).to_numpy()
        asked = keys[everyone.shape[0] - new_items.shape[0] :]
        source_keys = (
            split.data.source_users[list(cells)].astype(str).agg("|".join, axis=1).to_numpy()
            if len(shares) > 1
            else None
        )
        for m in CEILING_SMOOTHING:
            target = _cell_shares(everyone, keys, asked, own, True, m)
            pooled = (
                _cell_shares(source, source_keys, asked, np.zeros_like(own), False, m)
                if source_keys is not None
                else target
            )
            for share in shares:
                scores = (1.0 - share) * target + share * pooled
                grid.append(
                    {
                        "cells": list(cells),
                        "smoothing": m,
                        "source_share": share,
                        **_cold_metrics(scores, no_history, new_items, split.data.catalogue),
                    }
                )
    return {
        "best": max(grid, key=lambda g: g["ndcg"]),
        "best_target": max((g for g in grid if g["source_share"] == 0.0), key=lambda g: g["ndcg"]),
        "grid": grid,
    }


def _fit(pretrained: TransferRecommender | None, split: ColdSplit, config: PipelineConfig) -> TransferRecommender:
    model = (
        TransferRecommender.from_state(pretrained.state())
        if pretrained is not None
        else new_model(split.data.n_items, config)
    )
    model.finetune(split.data.train, split.data.valid, split.data.catalogue)
    return model


def run_seed(
    features: FeatureSet,
    config: PipelineConfig,
    seed: int,
    cache_dir: Path | None,
    warm_ablation: bool = True,
    variants: tuple[str, ...] = tuple(VARIANTS),
    warm_share: float = 1.0,
) -> dict[str, Any]:
    """Cold-start table and modality ablations (the given side variants) of one split seed; `warm_share` < 1 trains
    every contender on that share of the target's other users only (a smaller target, the same new users)."""
    config = with_training(config, seed=seed)
    use_torch_threads(config.runtime.torch_threads)
    split = cold_split(features, config, seed, warm_share=warm_share)
    tasks = new_user_tasks(split)
    started = time.perf_counter()
    pretrained = new_model(split.data.n_items, config)
    pretrained.pretrain(split.data.source)
    log.info("seed %d: pretrained in %.1f s", seed, time.perf_counter() - started)
    report: dict[str, Any] = {
        "seed": seed,
        "warm_share": warm_share,
        "new_users": len(split.new_ordered),
        "warm_users": len(split.data.ordered),
        "cold": {},
        "selection": {},
        "profile_ceiling": profile_ceiling(split),
    }

    def record(name: str, score) -> None:
        report["cold"][name] = {
            k: _cold_metrics(score(history), history, relevant, split.data.catalogue)
            for k, (history, relevant) in tasks.items()
        }

    train = split.data.train
    popularity = Popularity().fit(train)
    record("popularity", popularity.score)
    best, best_ndcg = None, -1.0
    for ease in EASE.grid(train, EASE_L2_GRID):
        ndcg = float(
            np.mean(evaluate_scores(ease.score(train), train, split.data.valid, K, split.data.catalogue)["ndcg"])
        )
        if ndcg > best_ndcg:
            best, best_ndcg = ease, ndcg
        del ease  # a loser's weights would otherwise live on while the next one is solved
    record("ease", best.score)

    for name, source in (("target_only", None), ("transfer", pretrained)):
        started = time.perf_counter()
        model = _fit(source, split, config)
        log.info("seed %d: %s fine-tuned in %.1f s", seed, name, time.perf_counter() - started)
        sims, fitted = (
            simulations(model, split.data, config.short_history.simulated_users_max),
            fitter(split.data, config.short_history, config.training.seed),
        )
        for variant, (use_profile, use_lift, parts, use_shift) in VARIANTS.items():
            if variant not in variants or (name == "target_only" and variant not in TARGET_ONLY_VARIANTS):
                continue
            report["selection"][f"{name} {variant}"] = attach(
                model, fitted, use_profile, use_lift, parts, source is not None, sims, cache_dir, use_shift
            )
            record(
                f"{name} {variant}",
                lambda history, model=model: model.score(
                    history, split.new_users if model.short_history is not None else None
                ),
            )
            log.info(
                "seed %d: %s %s: %s",
                seed,
                name,
                variant,
                {k: round(v["ndcg"], 4) for k, v in report["cold"][f"{name} {variant}"].items()},
            )
    if warm_ablation:
        report["warm"] = warm_ablation_seed(features, config, seed, pretrained, cache_dir)
    return report


def warm_ablation_seed(
    features: FeatureSet, config: PipelineConfig, seed: int, pretrained: TransferRecommender, cache_dir: Path | None
) -> dict[str, Any]:
    """Test NDCG@10 on the benchmark's warm protocol (all target users, history = train) per side variant."""
    split = cold_split(features, config, seed, share=0.0)
    model = _fit(pretrained, split, config)
    sims, out = simulations(model, split.data, config.short_history.simulated_users_max), {}
    fitted = fitter(split.data, config.short_history, config.training.seed)
    seen = split.data.train + split.data.valid
    for variant, (use_profile, use_lift, parts, use_shift) in VARIANTS.items():
        selection = attach(model, fitted, use_profile, use_lift, parts, True, sims, cache_dir, use_shift)
        scores = model.score(split.data.train, split.data.users if model.short_history is not None else None)
        out[variant] = {
            **mean_metrics(evaluate_scores(scores, seen, split.test, K, split.data.catalogue)),
            "selection": selection,
        }
        log.info("seed %d: warm %s NDCG@10 %.4f", seed, variant, out[variant]["ndcg"])
    return out


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds per contender and k; the best target-only contender per k."""
    names = list(reports[0]["cold"])
    mean = {
        name: {
            k: {m: float(np.mean([r["cold"][name][k][m] for r in reports])) for m in ("ndcg", "recall")}
            for k in reports[0]["cold"][name]
        }
        for name in names
    }
    table = {}
    for k in mean["popularity"]:
        # popularity is a target-only model too: with a small target it can beat the others on new users
        contenders = {
            n: mean[n][k] for n in ("popularity", "ease", *(f"target_only {v}" for v in TARGET_ONLY_VARIANTS))
        }
        best_name = max(contenders, key=lambda n: contenders[n]["ndcg"])
        transfer = mean[f"transfer {FULL}"][k]
        table[k] = {
            "popularity": mean["popularity"][k],
            "best_target_only": {**contenders[best_name], "model": best_name},
            "transfer": transfer,
            "gain_vs_target_only": transfer["ndcg"] / max(contenders[best_name]["ndcg"], 1e-12) - 1,
        }
    summary: dict[str, Any] = {
        "seeds": [r["seed"] for r in reports],
        "table": table,
        "mean": mean,
        "warm_users": [r["warm_users"] for r in reports],
    }
    if all("profile_ceiling" in r for r in reports):
        best = [r["profile_ceiling"]["best"] for r in reports]
        summary["profile_ceiling"] = {m: float(np.mean([b[m] for b in best])) for m in ("ndcg", "recall")}
        summary["profile_ceiling"]["chosen"] = [{k: b[k] for k in ("cells", "smoothing", "source_share")} for b in best]
    if all("warm" in r for r in reports):
        summary["warm"] = {
            v: {
                "ndcg": float(np.mean([r["warm"][v]["ndcg"] for r in reports])),
                "sd": float(np.std([r["warm"][v]["ndcg"] for r in reports])),
            }
            for v in reports[0]["warm"]
        }
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\nCold start on MovieLens-100K: 20% new users, history = k earliest items, K={K}, "
        f"mean of seeds {summary['seeds']}, trained on {summary['warm_users']} target users"
    )
    print(f"{'k':>3}  {'popularity':>19}  {'best target-only':>19}  {'transfer':>19}  {'gain':>7}  best target-only")
    print(f"{'':>3}  {'NDCG    Recall':>19}  {'NDCG    Recall':>19}  {'NDCG    Recall':>19}")
    for k, row in summary["table"].items():
        cells = [row[c] for c in ("popularity", "best_target_only", "transfer")]
        print(
            f"{k:>3}  "
            + "  ".join(f"{c['ndcg']:>9.4f}{c['recall']:>10.4f}" for c in cells)
            + f"  {row['gain_vs_target_only']:>+7.1%}  {row['best_target_only']['model']}"
        )
    if "profile_ceiling" in summary:
        ceiling, first = summary["profile_ceiling"], summary["table"][min(summary["table"])]
        reference = first["best_target_only"]["ndcg"]
        print(
            "\nReference, no contender (it looks at the new users' items): the profile's ceiling at k = 0, each new "
            "user's items ranked by their profile cell's item shares over all target users but them (and the "
            f"source's users): NDCG@10 {ceiling['ndcg']:.4f}, Recall@10 {ceiling['recall']:.4f}, "
            f"{ceiling['ndcg'] / max(reference, 1e-12) - 1:+.1%} over the best target-only model "
            f"(+20% needs {1.2 * reference:.4f})"
        )
    print("\nAblation, cold start NDCG@10 per k (side components on the same fine-tuned model)")
    ks = list(summary["table"])
    print(f"{'model':<36}" + "".join(f"{'k=' + str(k):>9}" for k in ks))
    for name, per_k in summary["mean"].items():
        print(f"{name:<36}" + "".join(f"{per_k[k]['ndcg']:>9.4f}" for k in ks))
    if "warm" in summary:
        print("\nAblation, warm protocol (all target users, history = train): transfer test NDCG@10")
        for variant, values in summary["warm"].items():
            print(f"{'transfer ' + variant:<36}{values['ndcg']:>9.4f}  (sd {values['sd']:.4f})")


def run(
    seeds: list[int], out: Path, config: PipelineConfig, warm_ablation: bool = True, warm_share: float = 1.0
) -> dict[str, Any]:
    """The embedded platforms through pull -> validate -> unify -> features per seed, then the cold-start protocol."""
    from transfer_rec.benchmark import ingest_all
    from transfer_rec.io.state import StateLayout
    from transfer_rec.stages.features import build_features

    layout = StateLayout(out / "state")
    unified = ingest_all(config, layout, "bench")
    cache_dir = StateLayout.from_env().root / "cache" / "embeddings"
    reports = []
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        features = build_features(unified, config, layout, f"seed-{seed}", seed=seed)
        reports.append(run_seed(features, config, seed, cache_dir, warm_ablation, warm_share=warm_share))
        summary = summarise(reports)  # rewritten after every seed: a long run leaves its finished seeds behind
        (out / "cold_start.json").write_text(json.dumps({"summary": summary, "seeds": reports}, indent=2, default=str))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coldstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2022, 2023, 2024])
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="pipeline config (default: config/pipeline.yaml)")
    parser.add_argument("--no-warm-ablation", action="store_true", help="skip the warm-protocol ablation")
    parser.add_argument(
        "--target-share",
        type=float,
        default=1.0,
        help="train on this share of the target's other users only (a smaller target platform; "
        "the new users stay the same); the warm ablation always uses all target users",
    )
    args = parser.parse_args(argv)
    from bench.protocol import protocol_config

    if not 0.0 < args.target_share <= 1.0:
        parser.error("--target-share must be in (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print_summary(
        run(
            args.seeds,
            Path(args.out),
            protocol_config(load_config(args.config)),
            not args.no_warm_ablation,
            args.target_share,
        )
    )


if __name__ == "__main__":
    main()
