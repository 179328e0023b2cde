"""The side-by-side benchmark: any library's split of a source and a target, run through the stage code the DAG
runs (no Airflow), so our numbers can be set beside another library's on identical data.

    transfer-rec benchmark --source FILE --target-train FILE --target-valid FILE --target-test FILE \\
        [--source-users FILE --source-items FILE --target-users FILE --target-items FILE] --out DIR

writes DIR/recommendations.tsv (user_id, item_id, rank: top 10 per test user, train and valid items excluded) and
DIR/metrics.json. Interaction files are TSV with a header: user_id, item_id, rating, timestamp; they are taken as
given (already filtered to implicit feedback); target valid is used only for early stopping and selection, and test
users are scored from their target train history. The MovieLens protocol (bench/protocol.py, `make bench`) runs
this on its seeded splits.
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

from transfer_rec.config import PipelineConfig, PlatformConfig, load_config
from transfer_rec.io.embedded import export_all
from transfer_rec.io.formats import read_table
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import write_files_atomic
from transfer_rec.manifests import FeatureSet, UnifiedVersion
from transfer_rec.metrics.ranking import METRICS, mean_metrics, recommendation_rows, top_k
from transfer_rec.metrics.segments import group_summary
from transfer_rec.runtime.threads import use_torch_threads
from transfer_rec.stages.evaluate import baseline_scorers, held_out_item_segments, held_out_metrics
from transfer_rec.stages.features import PlatformData
from transfer_rec.stages.pipeline import engine_stage, raw_engine
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.train import fit_baselines, fit_short_history_parts, fit_target, new_model, train_history
from transfer_rec.stages.unify import unified_item_columns, unified_profiles
from transfer_rec.stages.validate import validate_batch

log = logging.getLogger("transfer_rec.benchmark")

SOURCE, TARGET = "source", "target"
K = 10

INTERACTION_KEYS = ("user_id", "item_id")


def ingest_all(config: PipelineConfig, layout: StateLayout, batch_id: str) -> UnifiedVersion:
    """Pull, validate and unify every platform with the stage code the DAG runs, without Airflow (the benchmarks'
    data path); the embedded platforms' exports are filled first when needed."""
    export_all(config)
    engine = raw_engine(config)
    validated = [validate_batch(pull_platform(p, layout, batch_id), p, layout, engine=engine) for p in config.platforms]
    return engine_stage(config, "unify").unify(validated, config, layout)


def _read(path: str | Path, required: tuple[str, ...] = INTERACTION_KEYS) -> pd.DataFrame:
    """A TSV with a header (RecBole's `name:type` header cells are accepted); names the file if a column is missing."""
    frame = read_table(Path(path), "recbole")
    missing = set(required) - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing column(s) {sorted(missing)} (need {', '.join(required)})")
    return frame


def read_described(
    path: str | Path | None, platform: PlatformConfig, table: str, config: PipelineConfig
) -> pd.DataFrame | None:
    """A users or items file in the unified columns and vocabularies, read the way unification reads the
    platform's own export (its column names and value maps in the config), so native MovieLens files and files
    already unified (export_split) give the same profiles and item descriptions. A profile value that the platform's
    value map does not know is read as unknown, with a warning naming the file and column."""
    if not path:
        return None
    frame = _read(path, ("user_id",) if table == "users" else ("item_id",))
    frame = frame.rename(
        columns={k: v for k, v in platform.columns.get(table, {}).items() if k in frame and v not in frame}
    )
    if table == "items":
        return unified_item_columns(frame)
    profiles = unified_profiles(frame, platform, config, keep_unified=True, file=path)
    return pd.concat([frame[["user_id"]], profiles], axis=1)


def features_from_files(args: argparse.Namespace, folder: Path, config: PipelineConfig) -> FeatureSet:
    """Lay the given split out as a features folder, exactly as the pipeline's features stage writes one. Users and
    items files are read as the config's source and first target platform export them (read_described)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        SOURCE: {"train": _read(args.source)},
        TARGET: {"train": _read(args.target_train), "valid": _read(args.target_valid), "test": _read(args.target_test)},
    }
    item_ids = np.sort(pd.unique(pd.concat([f["item_id"] for p in parts.values() for f in p.values()])))
    index = pd.DataFrame({"item_id": item_ids, "item_idx": np.arange(len(item_ids))})
    platforms = {SOURCE: config.sources[0], TARGET: config.targets[0]}
    item_tables = [
        t
        for t in (
            read_described(args.source_items, platforms[SOURCE], "items", config),
            read_described(args.target_items, platforms[TARGET], "items", config),
        )
        if t is not None
    ]
    items = index
    if item_tables:
        # The first file that describes an item wins (source first, as in unification).
        described = pd.concat(item_tables, ignore_index=True).drop_duplicates("item_id")
        items = index.merge(described, on="item_id", how="left")
    items.to_parquet(folder / "items.parquet", index=False)
    for platform, splits in parts.items():
        # repeats within a split only: an item of a user's test split that they also had in train stays a test item
        # (masked like the rest of train, as the protocol does), so no test user loses their test rows
        frame = pd.concat(
            [f.drop_duplicates(["user_id", "item_id"]).assign(split=s) for s, f in splits.items()], ignore_index=True
        ).merge(index, on="item_id")
        frame.assign(platform=platform).to_parquet(folder / f"{platform}.interactions.parquet", index=False)
        users_path = args.source_users if platform == SOURCE else args.target_users
        users = read_described(users_path, platforms[platform], "users", config)
        if users is None:
            users = pd.DataFrame({"user_id": frame["user_id"].unique()})
        users.assign(platform=platform).to_parquet(folder / f"{platform}.users.parquet", index=False)
    manifest = FeatureSet(
        dir=str(folder), run_key="benchmark", seed=config.features.seed, n_items=int(len(item_ids)), platforms={}
    )
    (folder / "manifest.json").write_text(json.dumps(manifest.to_xcom()))
    return manifest


def run_files(args: argparse.Namespace, config: PipelineConfig) -> dict[str, Any]:
    """Fit transfer and baselines on one split; write recommendations.tsv and metrics.json under args.out."""
    use_torch_threads(config.runtime.torch_threads)
    out = Path(args.out)
    features = features_from_files(args, out / "features", config)
    source = PlatformData.of(features, SOURCE)
    target = PlatformData.of(features, TARGET)
    cache_dir = StateLayout.from_env().root / "cache" / "embeddings"
    started = time.perf_counter()
    model = new_model(features.n_items, config)
    model.pretrain(source.matrix(rating_weight=config.training.rating_weight), log=lambda e: log.info("%s", e))
    pretrain_seconds = time.perf_counter() - started
    transfer, history, _ = fit_target(features, TARGET, config, model)
    # the short-history parts the pipeline's fine-tune gives the served model (config `short_history`)
    fit_short_history_parts(transfer, features, target, config, with_source=True, cache_dir=cache_dir, sources=[SOURCE])
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    weighted = train_history(target, config)
    scores = {"transfer": transfer.score(weighted, target.profiles())}
    score_seconds = time.perf_counter() - started
    baselines = fit_baselines(features, TARGET, config, cache_dir=None)
    train = target.matrix("train")
    scores.update(
        {
            name: score(weighted if name == "target_only" else train, np.arange(len(target.user_ids)))
            for name, score in baseline_scorers(baselines, target.profiles()).items()
        }
    )
    fitted = dict(baselines.info)
    per_user = held_out_metrics(target, scores, K)
    metrics = {name: mean_metrics(values) for name, values in per_user.items()}

    test_users = np.flatnonzero(np.diff(target.matrix("test").indptr) > 0)
    # users new to the target (no train or valid row) apart from warm ones: a new user's test set is their whole
    # target history, so the two are on different scales (the rows of per_user are test_users, in order)
    new = np.diff(target.matrix("train", "valid").indptr)[test_users] == 0
    groups = {
        name: {
            group: group_summary({m: v[mask] for m, v in values.items()})
            for group, mask in (("warm", ~new), ("new", new))
        }
        for name, values in per_user.items()
    }
    ranked = top_k(
        scores["transfer"][test_users], K, target.matrix("train", "valid")[test_users], target.item_mask(), fill=False
    )
    items = pd.read_parquet(Path(features.dir) / "items.parquet").sort_values("item_idx")["item_id"].to_numpy()
    recs = recommendation_rows(target.user_ids[test_users], items, ranked)
    report = {
        "k": K,
        "test_users": int(len(test_users)),
        "metrics": metrics,
        "users": groups,
        "item_segments": held_out_item_segments(target, source.matrix(), scores, K),
        "seconds": {
            "pretrain": pretrain_seconds,
            "pretrain_and_finetune": fit_seconds,
            "score_all_target_users": score_seconds,
            **fitted,
        },
        "finetune_epochs": len(history),
        "config": {**config.training.model_dump(), "k": config.evaluation.k},
    }
    write_files_atomic(
        out,
        {
            "recommendations.tsv": recs.to_csv(sep="\t", index=False),
            "metrics.json": json.dumps(report, indent=2, default=str),
        },
    )
    return report


def print_table(reports: list[dict[str, Any]], title: str) -> None:
    """Mean metrics over the reports (seeds or one split), the item segments and the fit times."""
    names = list(reports[0]["metrics"])
    print(f"\n{title}")
    print(f"{'model':<28}{'NDCG@10':>9}{'Recall':>9}{'Hit':>9}{'MRR':>9}{'Prec':>9}{'NDCG sd':>9}")
    for name in names:
        values = {m: np.mean([r["metrics"][name][m] for r in reports]) for m in METRICS}
        sd = np.std([r["metrics"][name]["ndcg"] for r in reports])
        print(f"{'transfer-rec ' + name:<28}" + "".join(f"{values[m]:>9.4f}" for m in METRICS) + f"{sd:>9.4f}")


def print_details(reports: list[dict[str, Any]]) -> None:
    names = list(reports[0]["metrics"])
    segments = list(reports[0]["item_segments"][names[0]])
    print("\nShare of test interactions found in the top 10, by item segment (test interactions per split in brackets)")
    print(f"{'model':<28}" + "".join(f"{name:>22}" for name in segments))
    for name in names:
        cells = [
            f"{np.mean([r['item_segments'][name][seg]['found'] for r in reports]):.4f} "
            f"({np.mean([r['item_segments'][name][seg]['relevant'] for r in reports]):.0f})"
            for seg in segments
        ]
        print(f"{'transfer-rec ' + name:<28}" + "".join(f"{c:>22}" for c in cells))
    new = [r["users"][names[0]]["new"]["users"] for r in reports if "users" in r]
    if new and max(new):
        print("\nNDCG@10 of warm users and of users new to the target (mean per split; users in brackets)")
        for name in names:
            cells = [
                f"{np.nanmean([r['users'][name][g].get('ndcg', np.nan) for r in reports]):.4f} "
                f"({np.mean([r['users'][name][g]['users'] for r in reports]):.0f})"
                for g in ("warm", "new")
            ]
            print(f"{'transfer-rec ' + name:<28}" + "".join(f"{c:>22}" for c in cells))
    fit = np.mean([r["seconds"]["pretrain_and_finetune"] for r in reports])
    score = np.mean([r["seconds"]["score_all_target_users"] for r in reports])
    print(f"\ntransfer: pretrain + fine-tune {fit:.1f} s, scoring all target users {score:.2f} s (mean per split)")


# the arguments that name a file the benchmark reads (argparse's names of the --flags)
FILE_ARGUMENTS = (
    "source",
    "target_train",
    "target_valid",
    "target_test",
    "source_users",
    "source_items",
    "target_users",
    "target_items",
    "platforms",
)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """`transfer-rec benchmark`: one split from files; with --platforms, a world of several linked platforms."""
    absent = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in FILE_ARGUMENTS
        if getattr(args, name, None) and (not Path(getattr(args, name)).exists() or Path(getattr(args, name)).is_dir())
    ]  # a pipe (--target-test <(zcat ...)) is read like a file
    if absent:  # said before minutes of fitting, not as a traceback from the reader
        parser.error(f"no such file: {'; '.join(absent)}")
    if getattr(args, "platforms", None):
        from transfer_rec import benchmark_linked

        if args.source:
            parser.error("--platforms names the sources itself: leave out --source")
        required = ("target_train", "target_valid", "target_test")
        missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(args, r)]
        if missing:
            parser.error(f"the benchmark needs {', '.join(missing)}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        report = benchmark_linked.run_platforms(args, load_config(args.config))
        benchmark_linked.print_report(report)
        return report
    required = ("source", "target_train", "target_valid", "target_test")
    missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(args, r)]
    if missing:
        parser.error(f"the benchmark needs {', '.join(missing)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(args.config)
    report = run_files(args, config)
    report["seed"] = config.training.seed
    print_table([report], f"{args.target_test}: full ranking, K={K}")
    print_details([report])
    return report
