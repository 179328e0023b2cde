"""Scale runs: a vectorised generator of large multi-platform exports, and the ingest benchmark on them.

Online-education platforms: learners take courses that have a topic and a difficulty. Courses live in a latent taste
space shared by every platform (the planted structure transfer learning can use); each platform sees part of the
catalogue, exports in its own native schema and format, and the smallest one has a cold-start cohort of learners
with one to three interactions.

    python -m bench.scale generate --interactions 20000000 --out DIR    # writes DIR/exports/* and DIR/pipeline.yaml
    python -m bench.scale ingest --config DIR/pipeline.yaml --state DIR/state   # pull + validate + unify, timed
    python -m bench.scale ingest --config DIR/pipeline.yaml --state DIR/spark --engine spark --features
    python -m bench.scale same DIR/state DIR/spark    # the two engines' unified tables and features, row for row
    python -m bench.scale fit --interactions 1000000 --items 5000 --out DIR     # pull to registered candidates

`make bench` runs generate + ingest on 20 M interactions (the generated data is kept and reused while its parameters
match). `make bench-scale INTERACTIONS=1000000 ITEMS=5000` runs `fit`: every stage of the pipeline from pull to the
registered candidates (plan, pull, validate, unify, features, pretrain, then fine-tune, evaluate and promote per
target), in a fresh process, each stage's wall seconds, CPU seconds (the process and its finished workers) and peak
memory of the process with its workers, written to DIR/fit.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

log = logging.getLogger("bench.scale")

TOPICS = ["math", "physics", "biology", "history", "art", "music", "coding", "languages", "economics", "law"]
LEVELS = ["intro", "intermediate", "advanced"]
OCCUPATIONS = ["student", "engineer", "teacher", "nurse", "retired", "other"]
START, SPAN = 1_672_531_200, 365 * 86_400  # 2023-01-01, one year of activity
CHUNK_USERS = 2_000


@dataclass(frozen=True)
class ScalePlatform:
    name: str
    role: str
    share: float  # share of all interactions
    catalogue_share: float  # share of the course catalogue it offers
    per_user: int  # mean interactions per learner
    fmt: str  # parquet | csv | jsonl
    columns: tuple[str, str, str, str]  # native (user, item, rating, timestamp)
    rating_scale: tuple[int, int]
    cold_cohort: float = 0.0  # share of learners with only 1-3 interactions


PLATFORMS = (
    ScalePlatform(
        "academy", "source", 0.90, 0.85, 60, "parquet", ("learner_id", "course_code", "stars", "event_time"), (1, 5)
    ),
    ScalePlatform("bootcamp", "target", 0.08, 0.45, 40, "csv", ("student", "course", "grade", "ts"), (1, 10)),
    ScalePlatform(
        "nightschool", "target", 0.02, 0.30, 25, "jsonl", ("uid", "class_id", "score", "time"), (0, 5), cold_cohort=0.3
    ),
)


# The recommender's settings this deployment changes (config `training:`): fewer passes over the data than the
# defaults, which are tuned on platforms of a few thousand users where an epoch is a few minibatches. At 10 M
# interactions a pretraining epoch is ~2.5 minutes and a fine-tuning epoch ~20 s on 2 cores
# (docs/results/2026-12-05-scale-fit-10m-time.md): the defaults' 15 pretraining epochs alone would take ~40 of the
# fit's 45 minutes. What the fewer passes cost in accuracy is not measured yet.
SCALE_TRAINING = {"encoders": 1, "epochs_pretrain": 2, "epochs_finetune": 10, "patience": 2, "source_replay": 0.05}


def generate(out: Path, interactions: int, n_items: int = 20_000, dim: int = 16, seed: int = 0) -> Path:
    """Write every platform's export files under out/exports/<platform>/ and the pipeline config out/pipeline.yaml."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    popularity = rng.normal(scale=0.7, size=n_items).astype(np.float32)
    topic = rng.integers(0, len(TOPICS), size=n_items)
    level = rng.integers(0, len(LEVELS), size=n_items)
    codes = np.array([f"C{i:06d}" for i in range(n_items)], dtype=object)
    entries = []
    for platform in PLATFORMS:
        folder = out / "exports" / platform.name
        folder.mkdir(parents=True, exist_ok=True)
        visible = np.sort(rng.choice(n_items, size=int(n_items * platform.catalogue_share), replace=False))
        n_users = max(1, int(interactions * platform.share / platform.per_user))
        written = _write_interactions(
            folder,
            platform,
            rng,
            items[visible],
            popularity[visible],
            codes[visible],
            n_users,
            int(interactions * platform.share),
        )
        _write_profiles(folder, platform, rng, n_users, codes[visible], topic[visible], level[visible])
        log.info("generated %s: %d learners, %d interactions", platform.name, n_users, written)
        entries.append(_config_entry(folder, platform))
    config = {
        "platforms": entries,
        "training": {"seed": 2022, **SCALE_TRAINING},
        "allowed_locations": [str(out / "exports")],
        "vocabularies": {
            "age": ["under-18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"],
            "occupation": ["student", "engineer", "educator", "healthcare", "retired", "other"],
        },
        "value_maps": {
            "scale_occupation": {
                "student": "student",
                "engineer": "engineer",
                "teacher": "educator",
                "nurse": "healthcare",
                "retired": "retired",
                "other": "other",
            }
        },
    }
    path = out / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _write_interactions(
    folder: Path,
    platform: ScalePlatform,
    rng: np.random.Generator,
    vectors: np.ndarray,
    popularity: np.ndarray,
    codes: np.ndarray,
    n_users: int,
    target_rows: int,
) -> int:
    """Sample each learner's courses without replacement from a softmax over taste + popularity (Gumbel top-k)."""
    ucol, icol, rcol, tcol = platform.columns
    low, high = platform.rating_scale
    path = folder / f"interactions.{_suffix(platform.fmt)}"
    writer = None
    written = 0
    max_n = min(len(codes), platform.per_user * 4)
    with open(path, "wb") as text:
        for start in range(0, n_users, CHUNK_USERS):
            users = min(CHUNK_USERS, n_users - start)
            taste = rng.normal(size=(users, vectors.shape[1])).astype(np.float32)
            counts = np.clip(rng.poisson(platform.per_user, size=users), 5, max_n)
            if platform.cold_cohort:
                cold = rng.random(users) < platform.cold_cohort
                counts[cold] = rng.integers(1, 4, size=int(cold.sum()))
            keys = taste @ vectors.T * (2.5 / np.sqrt(vectors.shape[1])) + popularity
            keys += rng.gumbel(size=keys.shape).astype(np.float32)
            top = np.argpartition(-keys, max_n - 1, axis=1)[:, :max_n]
            order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
            top = np.take_along_axis(top, order, axis=1)
            take = np.arange(max_n)[None, :] < counts[:, None]
            rows, cols = np.nonzero(take)
            item = top[rows, cols]
            affinity = np.einsum("ij,ij->i", taste[rows], vectors[item]) / np.sqrt(vectors.shape[1])
            stars = np.clip(
                np.round((low + high) / 2 + affinity * (high - low) / 4 + rng.normal(scale=0.5, size=len(rows))),
                low,
                high,
            ).astype(np.int64)
            frame = pd.DataFrame(
                {
                    ucol: np.char.add(platform.name[:2], (start + rows).astype(str)),
                    icol: codes[item],
                    rcol: stars,
                    tcol: START + rng.integers(0, SPAN, size=len(rows)),
                }
            )
            written += len(frame)
            if platform.fmt == "parquet":
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
            elif platform.fmt == "csv":
                text.write(frame.to_csv(sep=";", index=False, header=start == 0).encode())
            else:
                text.write(frame.to_json(orient="records", lines=True).encode())
            if written >= target_rows:
                break
    if writer:
        writer.close()
    return written


def _write_profiles(
    folder: Path,
    platform: ScalePlatform,
    rng: np.random.Generator,
    n_users: int,
    codes: np.ndarray,
    topic: np.ndarray,
    level: np.ndarray,
) -> None:
    users = pd.DataFrame(
        {
            "learner": np.char.add(platform.name[:2], np.arange(n_users).astype(str)),
            "age": rng.integers(15, 75, size=n_users),
            "occupation": rng.choice(OCCUPATIONS, size=n_users),
        }
    )
    catalogue = pd.DataFrame(
        {
            "code": codes,
            "name": [f"Course {c}" for c in codes],
            "topic": [TOPICS[t] for t in topic],
            "level": [LEVELS[v] for v in level],
        }
    )
    _write_table(users, folder / f"learners.{_suffix(platform.fmt)}", platform.fmt)
    _write_table(catalogue, folder / f"courses.{_suffix(platform.fmt)}", platform.fmt)


def _write_table(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, sep=";", index=False)
    else:
        frame.to_json(path, orient="records", lines=True)


def _suffix(fmt: str) -> str:
    return {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[fmt]


def _config_entry(folder: Path, platform: ScalePlatform) -> dict[str, Any]:
    ucol, icol, rcol, tcol = platform.columns
    suffix = _suffix(platform.fmt)
    return {
        "name": platform.name,
        "role": platform.role,
        "location": str(folder),
        "format": platform.fmt,
        **({"delimiter": ";"} if platform.fmt == "csv" else {}),
        "files": {
            "interactions": f"interactions.{suffix}",
            "users": f"learners.{suffix}",
            "items": f"courses.{suffix}",
        },
        "rating_scale": list(platform.rating_scale),
        "columns": {
            "interactions": {ucol: "user_id", icol: "item_id", rcol: "rating", tcol: "timestamp"},
            "users": {"learner": "user_id", "age": "age", "occupation": "occupation"},
            "items": {"code": "item_id", "name": "title", "topic": "genres"},
        },
        "value_maps": {"age": "age_years", "occupation": "scale_occupation"},
    }


@contextmanager
def _environment(**values: str):
    """Set environment variables for a block and restore the previous values after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ingest(config_path: Path, state: Path, engine: str = "pandas", features: bool = False) -> dict[str, Any]:
    """Pull, validate and unify every platform of a config, timed stage by stage (runs in this process); validate and
    unify on `engine` (spark: Spark in local mode on this machine's cores, the driver's memory from SPARK_DRIVER_MEMORY,
    default 8g); with `features`, the features stage too (timed apart from the total).

    The generated platforms' default suites go to a scratch GX context under `state`, not into the repo's reviewed
    one (unless TRANSFER_REC_GX_DIR names another).
    """
    import shutil

    from transfer_rec.config import REPO_ROOT, load_config

    gx_dir = Path(os.environ.get("TRANSFER_REC_GX_DIR") or state / "great_expectations")
    if not gx_dir.exists():
        shutil.copytree(REPO_ROOT / "great_expectations", gx_dir, ignore=shutil.ignore_patterns("uncommitted"))
    with _environment(
        TRANSFER_REC_CONFIG=str(config_path), TRANSFER_REC_STATE_DIR=str(state), TRANSFER_REC_GX_DIR=str(gx_dir)
    ):
        config = load_config(config_path)
        if engine == "spark":
            memory = os.environ.get("SPARK_DRIVER_MEMORY", "8g")
            spark = config.spark.model_copy(update={"conf": {"spark.driver.memory": memory, **config.spark.conf}})
            config = config.model_copy(update={"engine": "spark", "spark": spark})
        return _timed_ingest(config, features)


def _cpu_seconds() -> float:
    """CPU seconds of this process (since it started) and its finished workers."""
    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


def _descendants(pid: int) -> list[int]:
    """The process's children, their children and so on (every thread's children: a worker may be forked by any)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
                found += children
                stack += children
        except (OSError, ValueError):  # the process (or thread) ended meanwhile
            continue
    return found


def _tree_memory(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) bytes of the processes, from Linux /proc. PSS counts a page shared by n processes (the frames
    forked workers share with the parent) as 1/n in each, so its sum is the memory they use together; the RSS sum
    counts such pages once per process (an upper bound)."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss:", "Rss:")):
                    kib = int(line.split()[1]) * 1024
                    pss, rss = (pss + kib, rss) if line.startswith("Pss:") else (pss, rss + kib)
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    return pss, rss


def _own_peak_rss() -> int | None:
    """This process's peak resident memory since it was last reset (VmHWM), in bytes; None where Linux does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """Peak memory of this process and its workers while the block runs: this process's own peak from the kernel's
    high-water mark, reset when the block starts (exact, free), and, while worker processes run, the PSS of all of
    them sampled every `interval` seconds. Reading PSS walks every page of a process: sampled all the time, it cost
    the 10 M fit an eighth of its profile's samples (docs/results/2026-12-06-top-k.md), so a lone process is not
    sampled.
    Not nestable: entering resets the process's high-water mark, which an enclosing block's peak would lose."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.pss, self.rss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._reset = False

    def _sample(self) -> None:
        while not self._stop.is_set():
            workers = _descendants(os.getpid())
            if workers:
                pss, rss = _tree_memory([os.getpid(), *workers])
                self.pss, self.rss = max(self.pss, pss), max(self.rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        try:  # "5" resets the peak resident memory (VmHWM) to the current one (Linux proc(5), clear_refs)
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            log.warning("cannot reset this process's peak memory: a stage's peak includes the stages before it")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        own = _own_peak_rss() if self._reset else None
        if own is None:
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.pss, self.rss = max(self.pss, own), max(self.rss, own)


def _validate_concurrently(pulled: list[Any], config: Any, layout: Any) -> list[Any]:
    """Validate the platforms' batches at the same time, as the DAG's mapped validate tasks do: the largest here
    (its partitions go to worker processes), each other one in a forked process. Results in platform order."""
    from transfer_rec.runtime.workers import Forked
    from transfer_rec.stages.validate import validate_batch

    rows = [sum(f.rows for f in m.files) for m in pulled]
    largest = max(range(len(pulled)), key=rows.__getitem__)
    others = {
        i: Forked(validate_batch, m, config.platform(m.platform), layout) for i, m in enumerate(pulled) if i != largest
    }
    results: dict[int, Any] = {}
    error: BaseException | None = None
    try:
        results[largest] = validate_batch(pulled[largest], config.platform(pulled[largest].platform), layout)
    except BaseException as exc:
        error = exc
    for index, other in others.items():
        try:
            results[index] = other.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return [results[i] for i in range(len(pulled))]


def _timed_ingest(config: Any, features: bool = False) -> dict[str, Any]:
    from transfer_rec.io.state import StateLayout
    from transfer_rec.stages.pipeline import raw_engine
    from transfer_rec.stages.pull import pull_platform
    from transfer_rec.stages.validate import validate_batch

    if config.engine == "spark":
        from transfer_rec.spark.features import build_features
        from transfer_rec.spark.unify import unify
    else:
        from transfer_rec.stages.features import build_features
        from transfer_rec.stages.unify import unify

    layout = StateLayout.from_env()
    seconds: dict[str, float] = {}
    with PeakMemory() as memory:
        started = time.perf_counter()
        pulled = [pull_platform(p, layout, "scale") for p in config.platforms]
        seconds["pull"] = time.perf_counter() - started
        mark = time.perf_counter()
        if config.engine == "spark":  # one Spark session runs each batch's jobs on every core, one batch at a time
            engine = raw_engine(config)
            validated = [validate_batch(m, config.platform(m.platform), layout, engine=engine) for m in pulled]
        else:
            validated = _validate_concurrently(pulled, config, layout)
        seconds["validate"] = time.perf_counter() - mark
        mark = time.perf_counter()
        manifest = unify(validated, config, layout)
        seconds["unify"] = time.perf_counter() - mark
        total = time.perf_counter() - started
        if features:
            mark = time.perf_counter()
            built = build_features(manifest, config, layout, "scale")
            seconds["features"] = time.perf_counter() - mark
    rows = sum(m.interaction_rows() for m in pulled)
    return {
        "engine": config.engine,
        "rows": rows,
        # total: pull + validate + unify (features, when run, is timed apart)
        "seconds": {**seconds, "total": total},
        "rows_per_second": rows / total,
        # this process and its validation workers together (PSS, see PeakMemory), their RSS summed (counts
        # the pages workers share with this process twice), and this process alone
        "peak_memory_gib": memory.pss / 2**30,
        "peak_rss_sum_gib": memory.rss / 2**30,
        "peak_rss_main_process_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        # CPU seconds of this process (since it started, imports included) and its finished workers: less
        # sensitive to other jobs on the machine than wall time
        "cpu_seconds": _cpu_seconds(),
        "load_average": os.getloadavg(),
        "rows_out": {name: c["rows_out"] for name, c in manifest.platforms.items()},
        "unified": manifest.dir,
        **({"features": {name: c["interactions"] for name, c in built.platforms.items()}} if features else {}),
    }


SORT_KEYS = {
    "interactions": ["user_id", "item_id"],
    "users": ["user_id"],
    "items": ["item_id"],
    "links": ["link_id", "platform"],
    "item_ids": ["platform", "item_id"],
}


def same(first: Path, second: Path) -> dict[str, Any]:
    """Compare two ingest states (e.g. the pandas and the Spark engine's): every unified table and every file of
    the feature set, row for row after ordering by their keys (interactions platform by platform, to bound memory).
    Raises AssertionError at the first difference; returns the rows compared per table."""
    import pyarrow.dataset as ds

    compared: dict[str, int] = {}

    def check(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], what: str) -> None:
        a, b = (f.sort_values(keys, ignore_index=True).convert_dtypes() for f in (a, b))
        pd.testing.assert_frame_equal(b, a, obj=what)
        compared[what] = len(a)

    folders = [state / "lake" / "unified" / "current" for state in (first, second)]
    for table, keys in SORT_KEYS.items():
        if table != "interactions":
            check(*(pd.read_parquet(f / f"{table}.parquet") for f in folders), keys, f"unified {table}")
            continue
        datasets = [ds.dataset(f / "interactions.parquet") for f in folders]
        platforms = pd.unique(datasets[0].to_table(columns=["platform"]).column("platform").to_pandas())
        for platform in platforms:
            rows = [d.to_table(filter=ds.field("platform") == platform).to_pandas() for d in datasets]
            check(*rows, keys, f"unified interactions of {platform}")
    features = [state / "lake" / "features" / "scale" for state in (first, second)]
    if features[0].exists():
        for path in sorted(features[0].glob("*.parquet")):
            keys = ["item_id"] if path.name == "items.parquet" else SORT_KEYS[path.name.split(".")[1]]
            check(*(pd.read_parquet(f / path.name) for f in features), keys, f"features {path.name}")
    return compared


def fit(config_path: Path, state: Path) -> dict[str, Any]:
    """The pipeline from pull to registered candidates (the DAG's stages, in this process, through the same facade
    the DAG calls), each stage timed and its peak memory sampled; the mapped stages summed over targets."""
    import shutil

    from transfer_rec.config import REPO_ROOT
    from transfer_rec.stages import pipeline

    gx_dir = Path(os.environ.get("TRANSFER_REC_GX_DIR") or state / "great_expectations")
    if not gx_dir.exists():
        shutil.copytree(REPO_ROOT / "great_expectations", gx_dir, ignore=shutil.ignore_patterns("uncommitted"))
    stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(name: str):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        with PeakMemory() as memory:
            yield
        entry = stages.setdefault(name, {"wall_seconds": 0.0, "cpu_seconds": 0.0, "peak_memory_gib": 0.0})
        entry["wall_seconds"] += time.perf_counter() - wall
        entry["cpu_seconds"] += _cpu_seconds() - cpu
        entry["peak_memory_gib"] = max(entry["peak_memory_gib"], memory.pss / 2**30)
        log.info("%s: %.1f s wall, %.1f s CPU, peak %.2f GiB", name, *entry.values())

    env = {
        "TRANSFER_REC_CONFIG": str(config_path),
        "TRANSFER_REC_STATE_DIR": str(state),
        "TRANSFER_REC_GX_DIR": str(gx_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
    }
    started = time.perf_counter()
    with _environment(**env):
        with stage("plan"):
            run = pipeline.plan({"run_key": "scale"}, airflow_run_id="scale")
        with stage("pull"):
            pulled = [pipeline.pull(run, p) for p in run["platforms"]]
        with stage("validate"):
            validated = [pipeline.validate(run, p) for p in pulled]
        with stage("unify"):
            unified = pipeline.unify(run, validated)
        with stage("features"):
            features = pipeline.build_features(run, unified)
        with stage("pretrain"):
            pretrained = pipeline.pretrain(run, features)
        decisions, accuracy = {}, {}
        for target in run["targets"]:
            with stage("finetune"):
                candidate = pipeline.finetune(run, target, features, pretrained)
            with stage("evaluate"):
                evaluation = pipeline.evaluate(run, candidate, features)
            with stage("promote"):
                decisions[target] = pipeline.promote(run, evaluation)["version"]
            # what the settings cost or gain: each contender's test NDCG@k on the target's held-out users
            accuracy[target] = {name: m.get("ndcg") for name, m in evaluation["metrics"].items()}
    total = time.perf_counter() - started
    rows = sum(f.get("rows", 0) for p in pulled for f in p.get("files", []) if f.get("table") == "interactions")
    return {
        "stages": stages,
        "total": {
            "wall_seconds": total,
            "cpu_seconds": sum(s["cpu_seconds"] for s in stages.values()),
            "peak_memory_gib": max(s["peak_memory_gib"] for s in stages.values()),
        },
        "interaction_rows": rows,
        "registered_versions": decisions,
        "test_ndcg": accuracy,
        "load_average": os.getloadavg(),
    }


# A measuring process past this is stopped (with its workers) and the benchmark fails: it never hangs.
FRESH_PROCESS_HOURS = 6.0


def _fresh_process(arguments: list[str]) -> dict[str, Any]:
    """`python -m bench.scale <arguments>` in a fresh process (so its peak memory is its own) and its JSON result.
    Its logs pass through to stderr. Ctrl-C, SIGTERM or FRESH_PROCESS_HOURS stop its whole process group."""
    from transfer_rec.runtime.processes import stop_group
    from transfer_rec.runtime.signals import terminate_raises

    command = [sys.executable, "-m", "bench.scale", *arguments]
    with terminate_raises():
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=FRESH_PROCESS_HOURS * 3600)
        finally:
            if proc.poll() is None:
                stop_group(proc, grace=(5.0, 10.0))
    if proc.returncode != 0:
        raise SystemExit(f"bench.scale {arguments[0]} failed (exit {proc.returncode})")
    return json.loads(stdout)


def _bench_fit(interactions: int, items: int, out: Path) -> None:
    """Generate (unless the same data is there) and fit in a fresh process; write out/fit.json and print a summary."""
    marker = out / "generated.json"
    wanted = {"interactions": interactions, "items": items, "seed": 0, "platforms": [p.name for p in PLATFORMS]}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        generate(out, interactions, n_items=items)
        marker.write_text(json.dumps(wanted))
    state = out / "state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    result = {**wanted, **_fresh_process(["fit-run", "--config", str(out / "pipeline.yaml"), "--state", str(state)])}
    (out / "fit.json").write_text(json.dumps(result, indent=2))
    print(f"\nfit of {interactions:,} interactions, {items:,} items (pull to registered candidates, 2 cores):")
    for name, s in [*result["stages"].items(), ("total", result["total"])]:
        wall, cpu, peak = s["wall_seconds"], s["cpu_seconds"], s["peak_memory_gib"]
        print(f"  {name:<9} {wall:8.1f} s wall {cpu:8.1f} s CPU {peak:6.2f} GiB")
    for target, by_contender in result["test_ndcg"].items():
        print(
            f"  {target} test NDCG: "
            + ", ".join(f"{name} {v:.4f}" for name, v in by_contender.items() if v is not None)
        )
    print(f"  load average {' '.join(f'{x:.2f}' for x in result['load_average'])}; {out / 'fit.json'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the synthetic exports and their config")
    gen.add_argument("--interactions", type=int, default=20_000_000)
    gen.add_argument("--items", type=int, default=20_000, help="the catalogue all platforms draw from")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True)
    ing = sub.add_parser("ingest", help="pull + validate + unify a config, timed; prints JSON")
    ing.add_argument("--config", type=Path, required=True)
    ing.add_argument("--state", type=Path, required=True)
    ing.add_argument("--engine", choices=["pandas", "spark"], default="pandas")
    ing.add_argument("--features", action="store_true", help="also build the features (timed apart)")
    bench = sub.add_parser("bench", help="generate (unless already there) and ingest in a fresh process")
    bench.add_argument("--interactions", type=int, default=20_000_000)
    bench.add_argument("--out", type=Path, required=True)
    same_ = sub.add_parser("same", help="compare two ingest states' unified tables and features, row for row")
    same_.add_argument("first", type=Path)
    same_.add_argument("second", type=Path)
    fit_ = sub.add_parser("fit", help="generate (unless already there), then pull to registered candidates, timed")
    fit_.add_argument("--interactions", type=int, default=1_000_000)
    fit_.add_argument("--items", type=int, default=5_000)
    fit_.add_argument("--out", type=Path, required=True)
    fit_run = sub.add_parser("fit-run", help="(fit's fresh process) the timed stages of a config; prints JSON")
    fit_run.add_argument("--config", type=Path, required=True)
    fit_run.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    # logs to stderr: fit-run's stdout is its JSON result
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.command == "generate":
        print(generate(args.out, args.interactions, n_items=args.items, seed=args.seed))
    elif args.command == "ingest":
        print(json.dumps(ingest(args.config, args.state, args.engine, args.features), indent=2))
    elif args.command == "same":
        print(json.dumps(same(args.first, args.second), indent=2))
    elif args.command == "fit":
        _bench_fit(args.interactions, args.items, args.out)
    elif args.command == "fit-run":
        print(json.dumps(fit(args.config, args.state), indent=2))
    else:
        _bench(args.interactions, args.out)


def _bench(interactions: int, out: Path) -> None:
    marker = out / "generated.json"
    wanted = {"interactions": interactions, "seed": 0, "platforms": [p.name for p in PLATFORMS]}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        started = time.perf_counter()
        generate(out, interactions)
        marker.write_text(json.dumps(wanted))
        log.info("generated %d interactions in %.0f s", interactions, time.perf_counter() - started)
    state = out / "state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    # a fresh process, so peak memory is the ingest's own
    result = _fresh_process(["ingest", "--config", str(out / "pipeline.yaml"), "--state", str(state)])
    (out / "ingest.json").write_text(json.dumps(result, indent=2))
    s = result["seconds"]
    print(
        f"\ningest of {result['rows']:,} interactions (pull + validate + unify, 2 cores): {s['total']:.1f} s "
        f"(pull {s['pull']:.1f}, validate {s['validate']:.1f}, unify {s['unify']:.1f}), "
        f"{result['rows_per_second']:,.0f} rows/s, peak memory {result['peak_memory_gib']:.2f} GiB with its worker "
        f"processes (targets: >= 500,000 rows/s, < 8 GiB); load average "
        f"{' '.join(f'{x:.2f}' for x in result['load_average'])}"
    )


if __name__ == "__main__":
    main()
