"""Newcomers' part on linked worlds: which change to the ridge from source items to target items carries over?

    python -m bench.linked_newcomers --world DIR [--seed 0] [--variants ridge expanded ...] [--alphas 2 4]
        [--expand-l2s 50 200]

DIR is a world of bench/linked_world.py. Every variant's settings are chosen on simulated newcomers (people with a
target history and a source history, their target rows withheld from the fit, two seeded folds; their whole known
target history to be found), as selection/linked.py chooses; the test newcomers' NDCG@10 is reported beside it and
used for nothing. Variants:
- ridge: today's part without content (items and an intercept, one L2);
- content: today's part with content (weight chosen among selection/linked.py's grid);
- dropout: the ridge with a penalty that grows with each feature's frequency, lambda + p / (1 - p) * G_ii (the
  penalty of training with input dropout p; Steck's EDLAE, 2020), on items and content;
- expanded: each person's source items also read through an EASE over every person's source rows (people who are
  on the sources but not on the target teach which source items go together), beside them with weight alpha;
- smoothed: the same columns as items only, each person's row x + alpha x B (B that EASE);
- lowrank: the ridge's map cut to its top `rank` directions of fitted target rows (reduced-rank ridge regression:
  ~1,000 people map ~1,000 source items to ~1,000 target items, so a full-rank map may be mostly noise);
- cross_ease: the issue's goal base (the joint EASE with its newcomers' L2), always run, and its final fit on
  train + valid rows (cross_ease_with_valid);
- combined: content, expansion and dropout as each chose, the L2 chosen again; blend: its per-person z-scores and
  cross_ease's, mixed with weight gamma;
- and, for every ridge variant, its final fit on train + valid rows instead of train (test_with_valid).
The report is printed and written to DIR/newcomers.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from transfer_rec.benchmark_linked import CONTENDER_NEW_L2, World
from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.linked import binary, content_profiles, ease_target_columns, joint_rows
from transfer_rec.recommender.short_history import zscore
from transfer_rec.selection.linked import CONTENT_WEIGHTS, NEW_L2

K = 10
DROPOUT = (0.0, 0.1, 0.25, 0.5)
ALPHA = (0.0, 0.5, 1.0, 2.0)
EXPAND_L2 = (200.0, 1000.0)
GAMMA = (0.0, 0.25, 0.5, 0.75, 1.0)
RANKS = (16, 32, 64, 128, 256)
VARIANTS = ("ridge", "content", "dropout", "expanded", "smoothed", "lowrank", "cross_ease", "combined")

Scorer = Callable[[np.ndarray, sp.csr_matrix, np.ndarray], np.ndarray]


def ridge(features: np.ndarray, target: sp.csr_matrix, l2: float, dropout: float) -> np.ndarray:
    """[1 | features] -> target rows; penalty l2 everywhere plus the dropout term on the features."""
    x = np.hstack([np.ones((features.shape[0], 1)), features])
    gram = x.T @ x
    penalty = np.full(gram.shape[0], l2)
    if dropout > 0:
        penalty[1:] += dropout / (1 - dropout) * np.diag(gram)[1:]
    gram[np.diag_indices_from(gram)] += penalty
    return np.linalg.solve(gram, np.asarray((binary(target).T @ x).T))


def reduced_rank(weights: np.ndarray, features: np.ndarray, rank: int) -> np.ndarray:
    """The map restricted to the top `rank` right singular directions of its fitted rows (centred); the intercept
    keeps the mean fitted row."""
    fitted = apply(weights, features)
    mean = fitted.mean(axis=0)
    _, _, vt = np.linalg.svd(fitted - mean, full_matrices=False)
    keep = vt[:rank].T @ vt[:rank]
    out = weights @ keep
    out[0] += mean - mean @ keep
    return out


def apply(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    return weights[0] + features @ weights[1:]


def run(
    folder: Path,
    seed: int,
    alphas: tuple[float, ...] = ALPHA,
    expand_l2s: tuple[float, ...] = EXPAND_L2,
    variants: tuple[str, ...] = VARIANTS,
) -> dict:
    world = World(folder / "platforms.yaml", {s: str(folder / f"target_{s}.tsv") for s in ("train", "valid", "test")})
    train, valid, test = (binary(world.splits[s]) for s in ("train", "valid", "test"))
    n_target = train.shape[1]
    known = binary(train + valid)
    has_target = np.diff(train.indptr) > 0
    simulated = np.flatnonzero(has_target & (world.linked_sources > 0))
    fold = np.random.default_rng(seed).integers(0, 2, len(simulated))
    newcomers = np.flatnonzero((np.diff(test.indptr) > 0) & ~has_target & (np.diff(valid.indptr) == 0))
    all_sources = {n: 1.0 for n in world.sources}
    items = joint_rows(world.sources, all_sources)
    n_source = items.shape[1]
    vectors = world.content(folder / ".content-cache")
    profiles = content_profiles(world.sources, all_sources, vectors)
    # every person's source rows (target rows never enter): which source items go together
    expansions = {l2: ease_target_columns(items, n_source, l2) for l2 in expand_l2s}

    def features(people: np.ndarray, content: float, alpha: float, expand_l2: float, smooth: float = 0.0) -> np.ndarray:
        x = items[people].toarray()
        if smooth > 0:  # the same columns, each person's items read through the expansion too
            x = x + smooth * (x @ expansions[expand_l2])
        parts = [x]
        if alpha > 0:
            parts.append(alpha * (x @ expansions[expand_l2]))
        if content > 0 and profiles is not None:
            parts.append(content * profiles[people])
        return np.hstack(parts)

    def ridge_scorer(
        content: float,
        alpha: float,
        expand_l2: float,
        l2: float,
        dropout: float,
        smooth: float = 0.0,
        rank: int = 0,
    ) -> Scorer:
        def score(fit_rows: np.ndarray, fit_target: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
            x = features(fit_rows, content, alpha, expand_l2, smooth)
            w = ridge(x, fit_target, l2, dropout)
            if rank:
                w = reduced_rank(w, x, rank)
            return apply(w, features(rows, content, alpha, expand_l2, smooth))

        return score

    def cross_ease_scorer(l2: float) -> Scorer:
        def score(fit_rows: np.ndarray, fit_target: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
            # all people's source rows, the target rows only of the fit's people
            keep = np.zeros(train.shape[0])
            keep[fit_rows] = 1
            tail = binary(sp.diags(keep) @ fit_target)
            fit = joint_rows(world.sources, all_sources, tail)
            w = ease_target_columns(fit, n_target, l2)
            scores = np.asarray(items[rows] @ w[:n_source])
            popular = np.asarray(tail.sum(axis=0)).ravel()
            off = np.diff(items[rows].indptr) == 0
            scores[off] = popular
            return scores

        return score

    def simulated_scores(scorer: Scorer, full_rows: bool) -> np.ndarray:
        out = np.zeros((len(simulated), n_target))
        for f in (0, 1):
            held = fold == f
            fit_rows = np.setdiff1d(np.flatnonzero(has_target), simulated[held])
            target = train if full_rows else train[fit_rows]
            out[held] = scorer(fit_rows, target, simulated[held])
        return out

    def ndcg(scores: np.ndarray, relevant: sp.csr_matrix) -> float:
        return float(per_user_metrics(top_k(scores, K), relevant, K)["ndcg"].mean())

    def test_scores(scorer: Scorer, full_rows: bool, with_valid: bool = False) -> np.ndarray:
        target = binary(train + valid) if with_valid else train
        fit_rows = np.flatnonzero(np.diff(target.indptr) > 0)
        return scorer(fit_rows, target if full_rows else target[fit_rows], newcomers)

    report: dict = {"world": str(folder), "newcomers": int(len(newcomers)), "simulated": int(len(simulated))}

    def best_of(name: str, grid: list[dict], make: Callable[..., Scorer], full_rows: bool = False) -> dict:
        trials = []
        for setting in grid:
            trials.append((ndcg(simulated_scores(make(**setting), full_rows), known[simulated]), setting))
        score, setting = max(trials, key=lambda t: t[0])
        chosen = make(**setting)
        result = {
            "simulated": score,
            "setting": setting,
            "test": ndcg(test_scores(chosen, full_rows), test[newcomers]),
        }
        report[name] = result
        print(name, json.dumps(result), flush=True)
        return result

    base = {"content": 0.0, "alpha": 0.0, "expand_l2": expand_l2s[0], "dropout": 0.0}
    ridge_l2 = (10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
    x = best_of("cross_ease", [{"l2": l2} for l2 in CONTENDER_NEW_L2], cross_ease_scorer, full_rows=True)
    report["cross_ease_with_valid"] = {
        "test": ndcg(test_scores(cross_ease_scorer(**x["setting"]), True, with_valid=True), test[newcomers])
    }
    grids = {
        "ridge": [{**base, "l2": l2} for l2 in NEW_L2],
        "content": [{**base, "content": c, "l2": l2} for c in CONTENT_WEIGHTS for l2 in NEW_L2],
        "dropout": [{**base, "dropout": p, "l2": l2} for p in DROPOUT for l2 in (10.0, 50.0, 200.0, 500.0)],
        "expanded": [
            {**base, "alpha": a, "expand_l2": e, "l2": l2} for a in alphas for e in expand_l2s for l2 in NEW_L2
        ],
        "smoothed": [
            {**base, "smooth": a, "expand_l2": e, "l2": l2} for a in alphas for e in expand_l2s for l2 in ridge_l2
        ],
        "lowrank": [{**base, "rank": r, "l2": l2} for r in RANKS for l2 in ridge_l2],
    }
    for name, grid in grids.items():
        if name in variants:
            best_of(name, grid, ridge_scorer)
    if "combined" in variants and {"content", "expanded", "dropout"} <= set(report):
        # everything the single variants chose, together
        combined = {
            "content": report["content"]["setting"]["content"],
            "alpha": report["expanded"]["setting"]["alpha"],
            "expand_l2": report["expanded"]["setting"]["expand_l2"],
            "dropout": report["dropout"]["setting"]["dropout"],
        }
        c = best_of("combined", [{**combined, "l2": l2} for l2 in ridge_l2], ridge_scorer)
        ours_sim = simulated_scores(ridge_scorer(**c["setting"]), False)
        x_sim = simulated_scores(cross_ease_scorer(**x["setting"]), True)
        gamma = max(GAMMA, key=lambda g: ndcg(g * zscore(x_sim) + (1 - g) * zscore(ours_sim), known[simulated]))
        ours_test = test_scores(ridge_scorer(**c["setting"]), False)
        x_test = test_scores(cross_ease_scorer(**x["setting"]), True)
        blended = gamma * zscore(x_test) + (1 - gamma) * zscore(ours_test)
        report["blend"] = {"gamma": gamma, "test": ndcg(blended, test[newcomers])}
    # each chosen variant's final fit on train + valid rows instead of train
    for name in [n for n in grids if n in report]:
        chosen = ridge_scorer(**report[name]["setting"])
        report[name]["test_with_valid"] = ndcg(test_scores(chosen, False, with_valid=True), test[newcomers])
    for result in report.values():
        if isinstance(result, dict) and "test" in result:
            result["ratio_to_cross_ease"] = result["test"] / x["test"]
    print(json.dumps({k: v for k, v in report.items() if isinstance(v, dict)}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHA))
    parser.add_argument("--expand-l2s", type=float, nargs="+", default=list(EXPAND_L2))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    report = run(args.world, args.seed, tuple(args.alphas), tuple(args.expand_l2s), tuple(args.variants))
    (args.world / "newcomers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
