"""Fine-tuning strategies side by side: full fine-tuning, a frozen encoder, and how much source data is replayed.

    python -m bench.strategies --seeds 2022 2023 2024 --out DIR

On the benchmark protocol's splits (the same as `python -m bench.protocol`), the source is pretrained once per
split and every variant is fine-tuned from that same pretrained model, so the variants differ only in how
they fine-tune. Each is scored as the recommender alone, without short-history parts (those touch only histories
shorter than warm_min_history), on the protocol's test items. Writes DIR/strategies.json and prints the mean per
variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from transfer_rec.config import PipelineConfig, load_config
from transfer_rec.manifests import FeatureSet
from transfer_rec.metrics.ranking import METRICS, mean_metrics
from transfer_rec.runtime.threads import use_torch_threads
from transfer_rec.stages.evaluate import held_out_metrics
from transfer_rec.stages.features import PlatformData
from transfer_rec.stages.train import fit_target, new_model, train_history, with_settings, with_training

log = logging.getLogger("bench.strategies")

# name -> changes to the configured training settings (config/pipeline.yaml, training:)
VARIANTS: dict[str, dict[str, Any]] = {
    "full, configured replay": {},
    "freeze_encoder": {"strategy": "freeze_encoder"},
    "full, no replay": {"source_replay": 0.0},
    "full, replay 0.5": {"source_replay": 0.5},
}


def compare(
    features: FeatureSet,
    config: PipelineConfig,
    source: str,
    target: str,
    variants: dict[str, dict[str, Any]] = VARIANTS,
) -> dict[str, Any]:
    """Pretrain on `source` once, fine-tune every variant on `target` from it; held-out metrics per variant."""
    use_torch_threads(config.runtime.torch_threads)
    data = PlatformData.of(features, target)
    started = time.perf_counter()
    pretrained = new_model(features.n_items, config)
    pretrained.pretrain(PlatformData.of(features, source).matrix(rating_weight=config.training.rating_weight))
    report: dict[str, Any] = {"pretrain_seconds": time.perf_counter() - started, "variants": {}}
    for name, update in variants.items():
        variant = with_training(config, **update)
        started = time.perf_counter()
        model, history, _ = fit_target(features, target, variant, with_settings(pretrained.state(), variant))
        seconds = time.perf_counter() - started
        scores = model.score(train_history(data, variant))
        report["variants"][name] = {
            "strategy": model.config.strategy,
            "source_replay": model.config.source_replay,
            "metrics": mean_metrics(held_out_metrics(data, {name: scores}, config.evaluation.k)[name]),
            "valid_ndcg": model.valid_ndcg,
            "encoder_valid_ndcg": [e["valid_ndcg"] for e in history if e["stage"] == "finetune"],
            "epochs": sum(e["stage"] == "finetune" for e in history),
            "finetune_seconds": seconds,
        }
        log.info("%s: %s", name, report["variants"][name])
    return report


def run(seeds: list[int], out: Path, config: PipelineConfig) -> list[dict[str, Any]]:
    from bench.protocol import protocol_splits
    from transfer_rec.benchmark import SOURCE, TARGET, features_from_files

    reports = []
    for seed, args, seeded in protocol_splits(seeds, out, config):
        report = compare(features_from_files(args, Path(args.out) / "features", seeded), seeded, SOURCE, TARGET)
        reports.append({"seed": seed, **report})
        (out / "strategies.json").write_text(json.dumps(reports, indent=2, default=str))
    return reports


def print_table(reports: list[dict[str, Any]]) -> None:
    print(f"\nFine-tuning strategies, recommender only, mean of seeds {[r['seed'] for r in reports]}")
    print(f"{'variant':<26}{'NDCG@10':>9}{'Recall':>9}{'Hit':>9}{'MRR':>9}{'Prec':>9}{'epochs':>8}{'seconds':>9}")
    for name in reports[0]["variants"]:
        rows = [r["variants"][name] for r in reports]
        means = [np.mean([row["metrics"][m] for row in rows]) for m in METRICS]
        print(
            f"{name:<26}"
            + "".join(f"{v:>9.4f}" for v in means)
            + f"{np.mean([row['epochs'] for row in rows]):>8.1f}"
            + f"{np.mean([row['finetune_seconds'] for row in rows]):>9.1f}"
        )
    print(f"pretraining (shared by the variants): {np.mean([r['pretrain_seconds'] for r in reports]):.1f} s per seed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.strategies", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2022, 2023, 2024])
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="pipeline config (default: config/pipeline.yaml)")
    args = parser.parse_args(argv)
    from bench.protocol import protocol_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print_table(run(args.seeds, Path(args.out), protocol_config(load_config(args.config))))


if __name__ == "__main__":
    main()
