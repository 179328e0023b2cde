"""A learned re-ranker for newcomers on linked worlds: does a non-linear read of several models' scores carry over
where every linear map of the same people did not (docs/results/2026-12-06-linked-newcomers.md)?

    python -m bench.linked_rerank --world DIR [--seed 0] [--folds 5] [--candidates 150]

DIR is a world of bench/linked_world.py. The newcomers' models below are cross-fitted on simulated newcomers
(people with a target history and a source history, their target rows withheld, `folds` seeded folds), so every
simulated person's scores come from models that never saw their target rows, as a test newcomer's do:
- ridge: the product's newcomers' part (items, content profile and an intercept to known target rows; content
  weight and L2 chosen on the same simulated newcomers as selection/linked.py chooses them);
- cross_ease: the issue's contender, the joint EASE with its newcomers' L2 (chosen the same way), fitted on known
  target rows like the ridge; its fit on train rows only (the goal's base) is reported too;
- knn: the people most like this person on the sources (cosine of their source rows), their target rows summed by
  similarity;
- content: cosine of the person's content profile and the target item's content vector;
- popularity of the item on the target.
A gradient-boosted classifier (scikit-learn's histogram GBDT) reads, for each of a person's `candidates` best items
by the ridge, those scores, their ranks and z-scores within the person, and the person's source activity, and
re-ranks the candidates. It is itself judged by a second cross-fit over the simulated people (trained on the other
folds' candidates), and then trained on all of them and applied to the test newcomers, whose items are used for
nothing but the reported NDCG@10. The report is printed and written to DIR/rerank.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier

from transfer_rec.benchmark_linked import CONTENDER_NEW_L2, World, platform_table
from transfer_rec.metrics.ranking import per_user_metrics, top_k
from transfer_rec.recommender.content import CONTENT_PARTS, content_vectors
from transfer_rec.recommender.linked import (
    binary,
    content_profiles,
    ease_target_columns,
    joint_rows,
    newcomer_features,
    ridge_map,
    ridge_scores,
)
from transfer_rec.recommender.short_history import zscore
from transfer_rec.selection.linked import CONTENT_WEIGHTS, NEW_L2

K = 10
NEIGHBOURS = 100

# fit_rows (people whose known target rows the model learns from) -> scores of `rows` over the target's items
Model = Callable[[np.ndarray, np.ndarray], np.ndarray]


def item_vectors(world: World, cache: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Content vectors of every source's items and of the target's, in one vocabulary (World.content's parts)."""
    frames = []
    for p, items in [*((p, world.items[p.name]) for p in world.source_configs), (world.target, world.target_items)]:
        described = platform_table(p, world.base, "items").astype({"item_id": str}).drop_duplicates("item_id")
        frame = described.set_index("item_id").reindex(items).rename_axis("item_id").reset_index()
        frames.append(frame.assign(source=p.name))
    items = pd.concat(frames, ignore_index=True)
    genres = items["genres"].fillna("").astype(str).str.replace("|", " ", regex=False).str.split()
    items = items.assign(item_idx=np.arange(len(items)), genres=genres.str.join("|"))
    vectors = content_vectors(items, CONTENT_PARTS, cache)
    source = {name: vectors[(items["source"] == name).to_numpy()] for name in world.sources}
    return source, vectors[(items["source"] == world.target.name).to_numpy()]


def per_person(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z-score, rank from 0 = best) of each item within each person's row."""
    z = zscore(scores)
    rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    return z, rank


def ndcg(scores: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    return per_user_metrics(top_k(scores, K), relevant, K)["ndcg"]


def run(folder: Path, seed: int, folds: int, candidates: int) -> dict:
    started = time.time()
    world = World(folder / "platforms.yaml", {s: str(folder / f"target_{s}.tsv") for s in ("train", "valid", "test")})
    train, valid, test = (binary(world.splits[s]) for s in ("train", "valid", "test"))
    known = binary(train + valid)
    n_target = train.shape[1]
    has_target = np.diff(known.indptr) > 0
    simulated = np.flatnonzero((np.diff(train.indptr) > 0) & (world.linked_sources > 0))
    fold = np.random.default_rng(seed).integers(0, folds, len(simulated))
    newcomers = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(known.indptr) == 0))
    all_sources = {n: 1.0 for n in world.sources}
    source_rows = joint_rows(world.sources, all_sources)
    n_source = source_rows.shape[1]
    vectors, target_vectors = item_vectors(world, folder / ".content-cache")
    profiles = content_profiles(world.sources, all_sources, vectors)

    def cross_fit(model: Model) -> np.ndarray:
        """Every simulated person's scores from a model fitted without their target rows."""
        out = np.zeros((len(simulated), n_target), dtype=np.float32)
        for f in range(folds):
            held = simulated[fold == f]
            out[fold == f] = model(np.setdiff1d(np.flatnonzero(has_target), held), held)
        return out

    def on_test(model: Model) -> np.ndarray:
        return model(np.flatnonzero(has_target), newcomers)

    def ridge(content: float, l2: float) -> Model:
        def model(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
            sources = {n: m[fit_rows] for n, m in world.sources.items()}
            mapping = ridge_map(newcomer_features(sources, all_sources, vectors, content), known[fit_rows], l2)
            held = newcomer_features({n: m[rows] for n, m in world.sources.items()}, all_sources, vectors, content)
            return ridge_scores(mapping, held, len(rows))

        return model

    def cross_ease(l2: float, learn: sp.csr_matrix = known) -> Model:
        def model(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
            keep = np.zeros(train.shape[0])
            keep[fit_rows] = 1
            tail = binary(sp.diags(keep) @ learn)
            w = ease_target_columns(joint_rows(world.sources, all_sources, tail), n_target, l2)
            return off_source(np.asarray(source_rows[rows] @ w[:n_source]), fit_rows, rows)

        return model

    def off_source(scores: np.ndarray, fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """People with no source history get the target's popularity (as the contender does)."""
        off = np.diff(source_rows[rows].indptr) == 0
        scores[off] = np.asarray(known[fit_rows].sum(axis=0)).ravel()
        return scores

    normalised = sp.diags(1 / np.sqrt(np.maximum(np.diff(source_rows.indptr), 1))) @ source_rows

    def knn(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        similarity = np.asarray((normalised[rows] @ normalised[fit_rows].T).todense())
        if similarity.shape[1] > NEIGHBOURS:
            cut = np.partition(similarity, -NEIGHBOURS, axis=1)[:, -NEIGHBOURS][:, None]
            similarity = np.where(similarity >= cut, similarity, 0.0)
        return off_source(np.asarray(sp.csr_matrix(similarity) @ known[fit_rows].toarray()), fit_rows, rows)

    def popularity(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        counts = np.asarray(known[fit_rows].sum(axis=0)).ravel()
        return np.tile(np.log1p(counts), (len(rows), 1))

    def content(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return profiles[rows] @ target_vectors.T

    report: dict = {"world": str(folder), "newcomers": int(len(newcomers)), "simulated": int(len(simulated))}

    def choose(name: str, grid: list[dict], make: Callable[..., Model]) -> tuple[np.ndarray, np.ndarray]:
        trials = [(float(ndcg(cross_fit(make(**g)), known[simulated]).mean()), g) for g in grid]
        score, setting = max(trials, key=lambda t: t[0])
        sim, tst = cross_fit(make(**setting)), on_test(make(**setting))
        report[name] = {"setting": setting, "simulated": score, "test": float(ndcg(tst, test[newcomers]).mean())}
        print(name, json.dumps(report[name]), flush=True)
        return sim, tst

    ridge_grid = [{"content": c, "l2": l2} for c in (0.0, *CONTENT_WEIGHTS) for l2 in NEW_L2]
    models = {
        "ridge": choose("ridge", ridge_grid, ridge),
        "cross_ease": choose("cross_ease", [{"l2": l2} for l2 in CONTENDER_NEW_L2], cross_ease),
        "knn": (cross_fit(knn), on_test(knn)),
        "content": (cross_fit(content), on_test(content)),
        "popularity": (cross_fit(popularity), on_test(popularity)),
    }
    # the goal's base as the issue defines it: the contender's final fit on train rows only
    on_train = on_test(cross_ease(report["cross_ease"]["setting"]["l2"], train))
    report["cross_ease"]["test_fit_on_train"] = float(ndcg(on_train, test[newcomers]).mean())
    for name in ("knn", "content", "popularity"):
        sim, tst = models[name]
        report[name] = {
            "simulated": float(ndcg(sim, known[simulated]).mean()),
            "test": float(ndcg(tst, test[newcomers]).mean()),
        }
        print(name, json.dumps(report[name]), flush=True)

    def table(which: int, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate item index per person, features per (person, candidate)) for the models' scores `which`
        (0: simulated, 1: test)."""
        base = models["ridge"][which]
        picked = np.argsort(-base, axis=1)[:, :candidates]
        columns = []
        for name in models:
            scores = models[name][which]
            z, rank = per_person(scores)
            take = np.take_along_axis
            columns += [take(scores, picked, 1), take(z, picked, 1), np.log1p(take(rank, picked, 1))]
        activity = np.diff(source_rows[people].indptr)
        on = world.linked_sources[people]
        columns += [np.repeat(np.log1p(activity)[:, None], candidates, 1), np.repeat(on[:, None], candidates, 1)]
        return picked, np.stack(columns, axis=-1).astype(np.float32)

    sim_picked, sim_x = table(0, simulated)
    test_picked, test_x = table(1, newcomers)
    sim_y = np.take_along_axis(known[simulated].toarray(), sim_picked, 1)
    report["candidate_recall"] = float(sim_y.sum() / max(known[simulated].sum(), 1))

    def rescored(base: np.ndarray, picked: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """The candidates by the re-ranker, above every other item (which keep the base order)."""
        out = np.asarray(base - base.max(axis=1, keepdims=True) - 1.0, dtype=np.float64)
        np.put_along_axis(out, picked, probability + 1.0, axis=1)
        return out

    def fit(x: np.ndarray, y: np.ndarray, setting: dict) -> HistGradientBoostingClassifier:
        clf = HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **setting)
        return clf.fit(x.reshape(-1, x.shape[-1]), y.reshape(-1))

    grid = [
        {"learning_rate": lr, "max_iter": it, "max_leaf_nodes": leaves, "l2_regularization": 1.0}
        for lr, it in ((0.05, 200), (0.1, 100))
        for leaves in (15, 31)
    ]
    trials = []
    for setting in grid:
        out = np.zeros((len(simulated), n_target))
        for f in range(folds):
            held = fold == f
            clf = fit(sim_x[~held], sim_y[~held], setting)
            probability = clf.predict_proba(sim_x[held].reshape(-1, sim_x.shape[-1]))[:, 1].reshape(-1, candidates)
            out[held] = rescored(models["ridge"][0][held], sim_picked[held], probability)
        score = float(ndcg(out, known[simulated]).mean())
        trials.append((score, setting))
        print("rerank", json.dumps({"setting": setting, "simulated": score}), flush=True)
    score, setting = max(trials, key=lambda t: t[0])
    clf = fit(sim_x, sim_y, setting)
    probability = clf.predict_proba(test_x.reshape(-1, test_x.shape[-1]))[:, 1].reshape(-1, candidates)
    final = ndcg(rescored(models["ridge"][1], test_picked, probability), test[newcomers])
    report["rerank"] = {"setting": setting, "simulated": score, "test": float(final.mean())}
    by_sources = {}
    for count in (0, 1, 2):
        chosen = world.linked_sources[newcomers] == count
        if chosen.any():
            by_sources[str(count)] = float(final[chosen].mean())
    report["rerank"]["test_by_sources"] = by_sources
    for name in ("ridge", "rerank"):
        report[name]["ratio_to_cross_ease"] = report[name]["test"] / report["cross_ease"]["test_fit_on_train"]
    report["seconds"] = time.time() - started
    print(json.dumps({k: v for k, v in report.items() if k in ("ridge", "cross_ease", "rerank")}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=150)
    args = parser.parse_args()
    report = run(args.world, args.seed, args.folds, args.candidates)
    (args.world / "rerank.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
