"""Stage 7, evaluate: the candidate, the current champion and the baselines on the same held-out target users."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tasks import tracking
from tasks.bundle import ModelBundle
from tasks.config import PipelineConfig
from tasks.features import PlatformData
from tasks.metrics import bootstrap_ci, evaluate_scores, mean_metrics, paired_lower_bound
from tasks.models.ease import EASE
from tasks.models.popularity import Popularity
from tasks.state import StateLayout

log = logging.getLogger(__name__)

EASE_L2_GRID = (100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)


def retention(per_user: dict[str, np.ndarray]) -> np.ndarray:
    """Per-user retention proxy: 1 when the user finds at least one relevant item in the top-K (see docs)."""
    return per_user["hit"]


def _ease(train, valid, candidates, k: int) -> tuple[EASE, float]:
    """EASE with its L2 strength chosen on the validation split."""
    best, best_ndcg = None, -1.0
    for l2 in EASE_L2_GRID:
        model = EASE(l2).fit(train)
        ndcg = float(np.mean(evaluate_scores(model.score(train), train, valid, k, candidates)["ndcg"]))
        if ndcg > best_ndcg:
            best, best_ndcg = model, ndcg
    return best, best.l2


def champion_bundle(target: str) -> tuple[ModelBundle | None, str | None]:
    """The registry's current champion for a target, if any, with its version."""
    client = mlflow.MlflowClient()
    name = tracking.registered_model_name(target)
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        return None, None
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    return model.unwrap_python_model().bundle, version.version


def _aligned_scores(bundle: ModelBundle, histories: list[list[str]], item_ids: np.ndarray) -> np.ndarray:
    """Scores of another model's bundle, re-indexed onto this run's items (items it does not know score -inf)."""
    scores = bundle.score(histories)
    position = pd.Series(np.arange(len(bundle.item_ids)), index=bundle.item_ids).reindex(item_ids)
    out = np.full((len(histories), len(item_ids)), -np.inf, dtype=np.float64)
    known = position.notna().to_numpy()
    out[:, known] = scores[:, position[known].astype(int).to_numpy()]
    return out


def baseline_scores(data: PlatformData, features: dict[str, Any], target: str, config: PipelineConfig,
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scores of the baselines, fitted on target train (valid only for their selection): the same model trained on
    the target alone, EASE and popularity."""
    from tasks.train import fit_target, train_history

    train, valid = data.matrix("train"), data.matrix("valid")
    started = time.perf_counter()
    target_only, _, _ = fit_target(features, target, config, pretrained=None)
    fitted = {"target_only_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    ease, l2 = _ease(train, valid, data.item_mask(), config.evaluation.k)
    fitted.update(ease_seconds=time.perf_counter() - started, ease_l2=l2)
    scores = {"target_only": target_only.score(train_history(data, config)), "ease": ease.score(train),
              "popularity": Popularity().fit(train).score(train)}
    return scores, fitted


def held_out_metrics(data: PlatformData, scores: dict[str, np.ndarray], k: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-user test metrics of every contender: train and valid items masked, target items only."""
    seen, test, candidates = data.matrix("train", "valid"), data.matrix("test"), data.item_mask()
    per_user = {name: evaluate_scores(s, seen, test, k, candidates) for name, s in scores.items()}
    for values in per_user.values():
        values["retention"] = retention(values)
    return per_user


def evaluate(target: str, features: dict[str, Any], candidate: dict[str, Any], config: PipelineConfig,
             layout: StateLayout, run_key: str) -> dict[str, Any]:
    """Test metrics (history = target train, train and valid items masked) for every contender; logged to MLflow."""
    from tasks.train import train_history

    k = config.evaluation.k
    data = PlatformData(Path(features["dir"]), target, features["n_items"])
    train = data.matrix("train")
    bundle = ModelBundle.load(Path(candidate["bundle"]))
    scores = {"candidate": bundle.model.score(train_history(data, config))}
    baselines, fitted = baseline_scores(data, features, target, config)
    scores.update(baselines)
    l2 = fitted["ease_l2"]
    tracking.configure(layout)
    champion, champion_version = champion_bundle(target)
    if champion is not None:
        item_ids = pd.read_parquet(Path(features["dir"]) / "items.parquet").sort_values("item_idx")["item_id"]
        histories = [[] for _ in data.user_ids]
        rows, cols = train.nonzero()
        for r, c in zip(rows, cols):
            histories[r].append(item_ids.iloc[c])
        scores["champion"] = _aligned_scores(champion, histories, item_ids.to_numpy())

    per_user = held_out_metrics(data, scores, k)
    metrics = {name: mean_metrics(values) for name, values in per_user.items()}
    report_dir = layout.reports / run_key / target
    report_dir.mkdir(parents=True, exist_ok=True)
    np.savez(report_dir / "per_user.npz", **{f"{n}.{m}": v for n, vals in per_user.items() for m, v in vals.items()})
    gate = config.gate
    intervals = {name: {m: bootstrap_ci(values[m], gate.bootstrap_samples, 0, gate.confidence)
                        for m in ("ndcg", "recall", "retention")} for name, values in per_user.items()}
    paired = None
    if "champion" in per_user:
        paired = {m: paired_lower_bound(per_user["candidate"][m], per_user["champion"][m], gate.bootstrap_samples, 0,
                                        gate.confidence) for m in ("ndcg", "retention")}
    report = {"target": target, "k": k, "test_users": int(len(per_user["candidate"]["ndcg"])),
              "metrics": metrics, "ci": intervals, "paired_vs_champion": paired,
              "champion_version": champion_version, "ease_l2": l2,
              "per_user": str(report_dir / "per_user.npz")}
    (report_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    with mlflow.start_run(run_id=candidate["run_id"]):
        for name, values in metrics.items():
            mlflow.log_metrics({f"test_{name}_{m}_at_{k}" if m != "retention" else f"test_{name}_retention": v
                                for m, v in values.items()})
        for m, (low, high) in intervals["candidate"].items():
            mlflow.log_metrics({f"test_candidate_{m}_ci_low": low, f"test_candidate_{m}_ci_high": high})
        mlflow.log_artifact(str(report_dir / "evaluation.json"))
    for name, values in metrics.items():
        log.info("%s %-12s NDCG@%d %.4f  Recall %.4f  Hit %.4f  MRR %.4f", target, name, k, values["ndcg"],
                 values["recall"], values["hit"], values["mrr"])
    return report
