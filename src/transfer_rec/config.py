"""The one typed configuration of the pipeline, loaded from config/pipeline.yaml and overridable by DAG params."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HOME_ENV = "TRANSFER_REC_HOME"


def project_root() -> Path:
    """The project folder (config/, great_expectations/, var/): $TRANSFER_REC_HOME, else the source checkout this
    package is installed from (editable), else the working directory (an installed package, as in the image)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and (checkout / "config").is_dir():
        return checkout
    return Path.cwd().resolve()


REPO_ROOT = project_root()
DEFAULT_CONFIG = REPO_ROOT / "config" / "pipeline.yaml"

TABLES = ("interactions", "users", "items")
# The profile columns unification reads through a platform's value maps.
PROFILE_MAPPED = frozenset({"age", "gender", "occupation"})
# The unified columns a platform's native columns may map onto, per table (schema/unified.py holds the tables; the
# identity columns become link_id, consent a flag); tests/unit/test_config.py keeps the two in step.
MAPPABLE = {
    "interactions": frozenset({"user_id", "item_id", "rating", "timestamp"}),
    "users": frozenset({"user_id", "age", "gender", "occupation", "region", "email", "phone", "consent"}),
    "items": frozenset({"item_id", "title", "year", "genres"}),
}


class ConfigError(ValueError):
    """A config file that is not a valid pipeline config: the message names the file, each platform and field."""


def problems_of(error: ValidationError, platforms: Any = None) -> list[str]:
    """A validation error as one sentence per problem. A platform's problem is named by the platform (its entry in
    the `platforms` list as given, when that entry has a name), not by its position in the list."""
    sentences = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        message = str(problem["msg"]).removeprefix("Value error, ")
        where = ".".join(loc)
        if len(loc) >= 2 and loc[0] == "platforms" and loc[1].isdigit():
            index = int(loc[1])
            entry = platforms[index] if isinstance(platforms, list) and index < len(platforms) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            platform = f"platform {name}" if isinstance(name, str) and name else f"platforms entry #{index + 1}"
            where = ": ".join([platform, ".".join(loc[2:])] if loc[2:] else [platform])
            message = message.removeprefix(f"{platform}: ")  # a platform's own check names it already
        sentences.append(f"{where}: {message}" if where else message)
    return sentences


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PullConfig(_Strict):
    """How a platform's exports are pulled: the whole snapshot each run, or only the DAG run's data interval.

    Incremental: the `partitioned` tables' files live in one folder per day under the location, named by
    `partition` ({date} = YYYY-MM-DD), e.g. <location>/dt=2026-11-16/interactions.csv; a run pulls the days of its
    data interval [start, end), and a run without one (asset-triggered, or manual without a logical date) none:
    unification reads every partition landed so far. The other tables (profiles, catalogue) are pulled whole
    every run.
    """

    mode: Literal["snapshot", "incremental"] = "snapshot"
    partition: str = Field("dt={date}", pattern=r"^[A-Za-z0-9_=.-]*\{date\}[A-Za-z0-9_=.-]*$")
    # only the interactions come in partitions: unification reads a platform's profiles and catalogue whole
    partitioned: list[Literal["interactions"]] = ["interactions"]


class DriftConfig(_Strict):
    """Checks of a snapshot batch against the platform's previous validated batch (0 turns a check off)."""

    volume_factor: float = Field(5.0, ge=0)  # rows outside [previous / f, previous * f]: a volume anomaly
    rating_shift: float = Field(0.15, ge=0)  # mean rating moved by more than this share of the rating scale

    @field_validator("volume_factor")
    @classmethod
    def _a_factor(cls, factor: float) -> float:
        if 0 < factor < 1:  # [previous / f, previous * f] would be empty: every later batch refused
            raise ValueError(f"volume_factor {factor} must be 0 (off) or at least 1")
        return factor


class RulesConfig(_Strict):
    """Rules every batch meets as it came, checked by unification before it fills in or drops anything
    (schema/rules.py); a batch that breaks one is quarantined with the rule's name in the message."""

    # repeated (user, item) rows past this share of a file mean a broken export
    max_duplicate_share: float = Field(0.05, ge=0, le=1)
    # an id longer than this is not an id
    max_id_length: int = Field(256, ge=1)
    # interactions whose item the platform's items file lacks: refuse the batch, or fill the items in (no title or
    # genres; counted in the log). A platform without an items file always gets its items filled in.
    missing_items: Literal["refuse", "fill"] = "refuse"


class LinkedWorldConfig(_Strict):
    """An embedded family of platforms that share people, cut from MovieLens-1M (io/linked_world.py): the platforms
    that name the same `location` share one export folder, written once."""

    target: Literal["action", "family", "drama"]
    seed: int = 2022
    target_keep: float = Field(0.25, gt=0, le=1)  # share of the target's people it keeps (a small, young platform)
    source_drop: float = Field(0.3, ge=0, lt=1)  # share of each source's people it drops (some are on no source)


class PlatformConfig(_Strict):
    """One platform of the registry: where its exports live and how its native schema maps to the unified one."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    role: Literal["source", "target"]
    location: str
    # The embedded demo: a pkg://<package>/<folder> whose files fill the local `location` when it does not exist yet
    # (io/embedded.py; `transfer-rec init`). Pulls always read `location`.
    embedded: str | None = Field(None, pattern=r"^pkg://")
    # With `embedded`: the export folder is a linked world cut from that package folder's MovieLens-1M files.
    world: LinkedWorldConfig | None = None
    # A target's source platforms (default: every source). Platforms come in families: a target learns only from
    # its own family's sources, so another family's people and items never reach its model.
    sources: list[str] | None = None
    # A target's share of users held out whole as new to it (default: features.new_users).
    new_users: float | None = Field(None, ge=0, lt=1)
    # A target's own training settings over the `training` section, e.g. shorter fine-tuning on a small platform.
    training: dict[str, Any] = {}
    format: Literal["recbole", "csv", "tsv", "parquet", "jsonl"] = "recbole"
    delimiter: str | None = None
    files: dict[str, str]
    # validated on this scale; unified onto 1-5 (schema/unified.py RATING_SCALE), where min_rating and weights apply
    rating_scale: tuple[float, float] = (1.0, 5.0)
    columns: dict[str, dict[str, str]]
    value_maps: dict[str, str] = {}
    # Severity of duplicate (user, item, timestamp) rows in the raw export: "critical" stops the run, "warning" logs
    # them and unification de-duplicates.
    duplicate_interactions: Literal["critical", "warning"] = "critical"
    # User ids that hold an e-mail address or are a phone number written with its "+" are refused at validation
    # (rule opaque_user_id): an identity would be the model's key for that person. "allow" for a platform whose ids
    # only look like addresses: scoped opaque ids such as SAML's pairwise-id (`HTIDAJUMIWG...@idp.example.edu`); it
    # turns the phone check off too.
    e_mail_user_ids: Literal["refuse", "allow"] = "refuse"
    # Whether the users file lists every account ("complete": an account missing from it was deleted, and a model
    # holding it gives way as for a withdrawn consent) or only some ("partial": recently active ones, say).
    users_export: Literal["complete", "partial"] = "complete"
    pull: PullConfig = PullConfig()
    drift: DriftConfig = DriftConfig()

    @field_validator("files")
    @classmethod
    def _interactions_required(cls, files: dict[str, str]) -> dict[str, str]:
        unknown = set(files) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown table(s) {sorted(unknown)}; expected some of {TABLES}")
        for name in files.values():
            if "/" in name or name.startswith(".."):
                raise ValueError(f"file name {name!r} must be a plain name inside the platform's location")
        return files

    @model_validator(mode="after")
    def _names_an_address_keeps(self) -> PlatformConfig:
        if self.location.startswith(("s3://", "pkg://")):
            for name in self.files.values():
                if "#" in name or "?" in name:  # the file's s3:// or pkg:// address would end there
                    raise ValueError(
                        f"file name {name!r}: '#' and '?' cannot be part of a file name under an s3:// or pkg:// "
                        "location"
                    )
        return self

    @model_validator(mode="after")
    def _columns_map_ids(self) -> PlatformConfig:
        required = {"interactions": {"user_id", "item_id"}, "users": {"user_id"}, "items": {"item_id"}}
        for table in self.files:
            missing = required[table] - set(self.columns.get(table, {}).values())
            if missing:
                raise ValueError(f"platform {self.name}: columns.{table} maps no native column to {sorted(missing)}")
        for table, mapping in self.columns.items():
            if table not in MAPPABLE:
                raise ValueError(f"platform {self.name}: columns.{table}: unknown table; expected some of {TABLES}")
            unknown = sorted(set(mapping.values()) - MAPPABLE[table])
            if unknown:  # a mistyped name would be dropped at unification without a word
                raise ValueError(
                    f"platform {self.name}: columns.{table} maps onto {unknown}, not column(s) of the unified "
                    f"{table} table ({sorted(MAPPABLE[table])})"
                )
        low, high = self.rating_scale
        if low >= high:
            raise ValueError(f"platform {self.name}: rating_scale {list(self.rating_scale)} must be [lowest, highest]")
        unmapped = sorted(set(self.value_maps) - PROFILE_MAPPED)
        if unmapped:  # unification maps these columns only: another key would be ignored
            raise ValueError(
                f"platform {self.name}: value_maps for {unmapped}; value maps are for {sorted(PROFILE_MAPPED)}"
            )
        if any(name == "age_years" and column != "age" for column, name in self.value_maps.items()):
            raise ValueError(f"platform {self.name}: value map age_years is for the age column only")
        if self.world is not None and self.embedded is None:
            raise ValueError(f"platform {self.name}: `world` needs `embedded`, the package folder it is cut from")
        return self


class FeaturesConfig(_Strict):
    min_rating: float = 3
    min_interactions: int = Field(5, ge=1)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # share of each target's users held out whole, every interaction of theirs in test: people new to the target,
    # as a linked platform meets them (evaluation reports them as their own segment)
    new_users: float = Field(0.0, ge=0, lt=1)
    seed: int = 2022

    @field_validator("split")
    @classmethod
    def _sums_to_one(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(split) - 1.0) > 1e-6 or min(split) <= 0:
            raise ValueError(f"split {split} must be three positive shares summing to 1")
        return split


# Settings that shape the pretrained model, which the targets of one family share.
PRETRAIN_SETTINGS = frozenset(
    {
        "seed",
        "hidden",
        "input_dropout",
        "encoders",
        "learning_rate",
        "batch_size",
        "epochs_pretrain",
        "rating_weight",
        "softmax_items_max",
        "sampled_items",
    }
)


class TrainingConfig(_Strict):
    """Settings of the transfer recommender (recommender/transfer.py explains each part). These defaults are the ones
    the product ships with; config/pipeline.yaml overrides only what a deployment changes."""

    seed: int = 2022
    # item-item part: the source's co-occurrences, weighted by alpha, are a prior that the target's users refine
    alpha: float = Field(0.5, ge=0)
    lam: float = Field(300.0, gt=0)  # L2 regulariser of the item-item solve
    drop_p: float = Field(0.25, ge=0, lt=1)  # dropout-equivalent regulariser of the item-item solve
    # more (alpha, lam, drop_p) settings solved next to the one above in fine-tuning (item_combine: how they are used)
    # each (alpha, lam, drop_p) bounded as the three above: drop_p 1 divides by zero, lam 0 inverts a singular Gram
    item_grid: list[
        tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(ge=0, lt=1)]]
    ] = [(0.5, 100.0, 0.5), (0.3, 300.0, 0.25), (0.7, 100.0, 0.5)]
    # mean: the item-item part is the mean of all the settings' weights; best: the one best on valid. Valid tells
    # these settings apart by less than its own noise, so the mean avoids a choice it cannot make well.
    item_combine: Literal["best", "mean"] = "mean"
    # Up to item_dense_max items (those the target and its sources have) the item-item weights are solved exactly
    # (memory ~ items^2 x 8 bytes per copy, time ~ items^3); past it each item is regressed on its item_neighbours
    # most co-occurring items only (memory ~ items x neighbours; recommender/item_item.py, docs/model.md), and only
    # the configured (alpha, lam, drop_p) is solved, not item_grid (each such solve takes minutes).
    item_dense_max: int = Field(10000, ge=0)
    item_neighbours: int = Field(400, ge=1)
    # history encoder (Mult-DAE): pretrained on the sources, fine-tuned per target with early stopping
    hidden: int = Field(600, ge=2, le=4096)
    input_dropout: float = Field(0.5, ge=0, lt=1)
    # independent encoders trained side by side (own weights and dropout masks), their standardised scores averaged
    encoders: int = Field(2, ge=1, le=8)
    # Past softmax_items_max items the encoder's loss normalises over each history's own items and sampled_items items
    # drawn uniformly per minibatch (importance-weighted), not over every item: its cost per minibatch then grows with
    # the sample, not the catalogue (recommender/transfer.py, docs/model.md).
    softmax_items_max: int = Field(10000, ge=0)
    sampled_items: int = Field(1000, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    epochs_pretrain: int = Field(15, ge=0, le=500)
    epochs_finetune: int = Field(80, ge=1, le=500)
    patience: int = Field(8, ge=1)
    # Every choice on the target's validation split (epochs, sources, item-item settings, beta, kernel, EASE's L2) is
    # judged by at most this many of its users, a seeded sample past it: each judgement scores every judge over the
    # target's items (recommender/transfer.py; docs/model.md). Smaller targets are judged by all their users.
    valid_users_max: int = Field(5000, ge=1)
    source_replay: float = Field(0.15, ge=0, le=1)  # share of source users replayed in every fine-tuning epoch
    strategy: Literal["full", "freeze_encoder"] = "full"  # freeze_encoder: only the output layer adapts
    # the encoder's weight next to the item-item part, chosen on valid among these
    beta_grid: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] = [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.5,
        2.0,
        3.0,
        4.0,
        6.0,
        8.0,
    ]
    # an interaction counts 1 + rating_weight * (rating - 4) in the item-item part's histories (ratings 3/4/5 count
    # 0.75/1/1.25 at 0.25; at least 0.1); 0 gives binary histories. The encoder reads only which items.
    rating_weight: float = Field(0.25, ge=0, le=1)
    # user-kernel part (recommender/kernel.py): ridge settings and blend weights tried on valid (weight 0: off);
    # an empty list leaves the part out. Its basis is at most kernel_max_users training users (a seeded subset).
    kernel_lams: list[Annotated[float, Field(gt=0)]] = [0.1, 0.3]
    kernel_weights: list[Annotated[float, Field(ge=0)]] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    kernel_max_users: int = Field(5000, ge=1, le=50000)
    # ... and at most kernel_cells_max / candidates of them: a known user's request multiplies their kernel row by the
    # basis users x candidates dual weights (with 2,000 x 16,000 a known user's request was ~6 ms slower than a new
    # user's, 12 ms at p99; docs/results/2026-12-04-known-user-latency.md), and the fit solves for them.
    kernel_cells_max: int = Field(10_000_000, ge=1)
    # two regimes by history length: from this many items on, the kernel part (if chosen) serves a history; shorter
    # ones get the short-history parts instead (the kernel part hurts histories of a few items)
    warm_min_history: int = Field(6, ge=0)
    # the linked part (recommender/linked.py) solves densely over the kept sources' and the target's items together:
    # memory ~ items^2 x 8 bytes per copy (12,000 items: 1.1 GiB). Past this many it is left out, with the reason.
    linked_max_items: int = Field(12000, ge=1)


class ShortHistoryConfig(_Strict):
    """The recommender's short-history parts, for users with no or few items on the target (recommender/
    short_history.py): a profile prior learned from source and target users, its co-occurrence update by the
    history, what users take after their first items (`position_shift`, a correction of the prior by history
    length), and item content. Their weights are chosen on the target's valid split (selection/short_history.py);
    `profile_prior: false` and no content leave the model without them."""

    profile_prior: bool = True
    cooccurrence: bool = True
    position_shift: bool = True
    content: list[Literal["genres", "year", "title"]] = []
    # the profile prior's fit: full-batch Adam over the (platform, profile) cells, L2 on the demographic weights
    prior_l2: float = Field(1e-4, ge=0)
    prior_learning_rate: float = Field(0.1, gt=0)
    prior_steps: int = Field(150, ge=1, le=10000)
    # The weights are a handful of scalars, chosen on simulated short histories of at most this many users with
    # valid items (a seeded sample past it; never more than training.valid_users_max): every grid point costs
    # users x candidates per simulated length, and the source share's cross-fitting runs the grids six times more.
    simulated_users_max: int = Field(2000, ge=1)
    # Up to lift_dense_max items (the whole item index) the co-occurrence lift is a dense items x items float32 matrix
    # (1.6 GB at 20,000 items, a copy per fit and mix); past it each item keeps only its lift_neighbours largest
    # lifts (memory items x neighbours; recommender/short_history.py, pruned_lift).
    lift_dense_max: int = Field(20000, ge=0)
    lift_neighbours: int = Field(1000, ge=1)


class EvaluationConfig(_Strict):
    k: int = Field(10, ge=1, le=1000)
    # Retention's next-period hold-out: each target user's last share of interactions by timestamp
    # (docs/evaluation.md, Retention).
    time_holdout: float = Field(0.1, gt=0, lt=1)
    # Users with at most this many history items count as new users in the segments and in `retention_new`.
    new_user_max_history: int = Field(20, ge=1)
    # The cold-start curve (a report, not judged by the gate) follows a seeded sample of this many test users past
    # it: it scores every contender at five history lengths, two thirds of a large target's evaluation, and past a
    # few thousand users its CIs narrow less than its lengths differ.
    cold_start_users_max: int = Field(5000, ge=1)


class TargetFloors(_Strict):
    min_ndcg: float | None = Field(None, ge=0, le=1)
    min_retention: float | None = Field(None, ge=0, le=1)


class GateConfig(_Strict):
    metric: Literal["ndcg", "recall", "hit", "mrr", "precision"] = "ndcg"
    min_ndcg: float = Field(0.05, ge=0, le=1)
    min_retention: float = Field(0.2, ge=0, le=1)
    ndcg_margin: float = Field(0.005, ge=0, le=1)
    retention_margin: float = Field(0.01, ge=0, le=1)
    # Candidate vs champion is judged on the same users by a paired bootstrap: the one-sided lower confidence
    # bound of the mean per-user difference must not fall below -margin.
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_samples: int = Field(1000, ge=100, le=100000)
    # Floors per target platform (min_ndcg, min_retention), over the ones above: what a good model reaches differs by
    # platform (on MovieLens-1M as the target no contender reached the default retention floor).
    targets: dict[str, TargetFloors] = {}

    def for_target(self, target: str) -> GateConfig:
        """This gate with the target's own floors, if it has any."""
        floors = self.targets.get(target)
        if floors is None:
            return self
        return self.model_copy(update=floors.model_dump(exclude_none=True))


class PublishConfig(_Strict):
    k: int = Field(10, ge=1, le=1000)


class ScheduleConfig(_Strict):
    """When the training DAG runs by itself, and how often each platform's ingest DAG looks for new data."""

    # A cron expression or preset (@daily, @weekly, ...), in UTC; null: manual triggers only.
    training: str | None = "@weekly"
    # Also run when a platform's ingest DAG announces a new validated batch (its Airflow Asset).
    on_new_data: bool = True
    # How often each transfer_rec_ingest_<platform> DAG pulls and validates; null: manual triggers only.
    ingest: str | None = "@daily"


# Each stage task's time limit in minutes (runtime.stage_timeout_minutes overrides some of them).
STAGE_TIMEOUTS = {
    "plan": 10,
    "select_targets": 10,
    "pull": 30,
    "validate": 30,
    "unify": 30,
    "check_inputs": 10,
    "build_features": 30,
    "pretrain": 120,
    "finetune": 120,
    "evaluate": 60,
    "promote": 15,
    "publish": 30,
    "summarize": 10,
}


class RuntimeConfig(_Strict):
    """How a stage uses the machine it runs on."""

    # torch's intra-op threads for training and scoring; null: the CPUs this process may run on
    torch_threads: int | None = Field(None, ge=1, le=256)
    # where the recommender's encoder trains: "cpu", "cuda", "cuda:<n>" or "mps"; a GPU configured but absent here
    # falls back to the CPU with a warning (recommender/transfer.py resolve_device)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    # worker processes for parallel ingest work (validation partitions, platforms unified side by side); null: the
    # CPUs this process may run on ($TRANSFER_REC_WORKERS overrides)
    workers: int | None = Field(None, ge=1, le=256)
    # Each stage's time limit in minutes (Airflow's execution_timeout): a stage past it is stopped (a Spark driver it
    # waits on is ended, its workers killed, its partial output discarded) and fails with Airflow's timeout. The
    # whole pipeline takes 5 to 10 minutes on the embedded platforms on 2 cores (docs/reliability.md); the limits
    # leave room for platforms ~20x larger.
    # The config lists the stages it changes; the others keep these.
    stage_timeout_minutes: dict[str, int] = dict(STAGE_TIMEOUTS)

    @field_validator("stage_timeout_minutes")
    @classmethod
    def _over_the_defaults(cls, given: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(given) - set(STAGE_TIMEOUTS))
        if unknown:
            raise ValueError(
                f"stage_timeout_minutes: unknown stage(s) {unknown}; the stages are {list(STAGE_TIMEOUTS)}"
            )
        bad = {stage: minutes for stage, minutes in given.items() if minutes < 1}
        if bad:  # Airflow takes a zero timeout as none at all
            raise ValueError(f"stage_timeout_minutes: {bad}: a stage's limit is at least 1 minute")
        return {**STAGE_TIMEOUTS, **given}

    def stage_timeout(self, stage: str) -> int:
        """A stage's limit in minutes (a task that is no stage of the table, such as the ingest DAG's, gets the
        longest)."""
        return self.stage_timeout_minutes.get(stage, max(self.stage_timeout_minutes.values()))


SPARK_MASTER_ENV = "TRANSFER_REC_SPARK_MASTER"


class SparkConfig(_Strict):
    """Where the ingest stages run when `engine` is spark (the embedded default is pandas, in the task's process)."""

    # local[N] runs Spark in the task's own JVM with N threads; spark://host:7077 submits to a standalone cluster
    # (the compose stack's). $TRANSFER_REC_SPARK_MASTER overrides it, so one config serves a laptop and a cluster.
    master: str = "local[*]"
    # Spark settings passed as they are, e.g. spark.driver.memory or spark.executor.memory
    conf: dict[str, str] = {}

    @field_validator("master")
    @classmethod
    def _known_master(cls, master: str) -> str:
        return check_spark_master(master)  # the error's location names the field

    def master_url(self) -> str:
        from_env = os.environ.get(SPARK_MASTER_ENV)
        return check_spark_master(from_env, f"${SPARK_MASTER_ENV}") if from_env else self.master


# The master URLs Spark itself accepts (local threads, a standalone cluster, YARN, Kubernetes): anything else would
# only fail when the first ingest task starts its session, minutes into a run.
SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?|spark://[^/\s:,]+:\d+(,[^/\s:,]+:\d+)*|yarn|k8s://\S+"
)


def check_spark_master(master: str, where: str = "") -> str:
    if not SPARK_MASTER.fullmatch(master):
        raise ValueError(
            f"{f'{where} ' if where else ''}{master!r} is not a Spark master URL: local, local[N], local[*], "
            "spark://host:7077, yarn or k8s://..."
        )
    return master


# The built-in value map `age_years`: ages in years cut into the MovieLens-1M age groups (each bin's lower bound),
# labelled in order by vocabularies.age when it is given.
AGE_BINS = [0, 18, 25, 35, 45, 50, 56, 200]


class PipelineConfig(_Strict):
    platforms: list[PlatformConfig]
    # what validate, unify and features run on: pandas in the task's process (with forked workers), or Apache Spark
    # (`spark`); both give the same verdicts, unified tables and splits (tests/data/test_spark_engine.py)
    engine: Literal["pandas", "spark"] = "pandas"
    spark: SparkConfig = SparkConfig()
    vocabularies: dict[str, list[str]] = {}
    value_maps: dict[str, dict[str, str]] = {}
    features: FeaturesConfig = FeaturesConfig()
    rules: RulesConfig = RulesConfig()
    training: TrainingConfig = TrainingConfig()
    short_history: ShortHistoryConfig = ShortHistoryConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    publish: PublishConfig = PublishConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Where platform exports may be read from: URI prefixes (pkg://, s3://bucket/) and local folders (relative to
    # the working directory). A location outside all of them is refused, `..` tricks and symlinks included.
    allowed_locations: list[str] = ["pkg://", "s3://", "exports"]

    @model_validator(mode="after")
    def _locations_allowed(self) -> PipelineConfig:
        for p in self.platforms:
            if not location_allowed(p.location, self.allowed_locations):
                raise ValueError(
                    f"platform {p.name}: location {p.location!r} is outside the allowed locations "
                    f"{self.allowed_locations} (rule: allowed_locations)"
                )
        return self

    @model_validator(mode="after")
    def _schedules_apart(self) -> PipelineConfig:
        incremental = [p.name for p in self.platforms if p.pull.mode == "incremental"]
        s = self.schedule
        if incremental and s.training and s.ingest and _cron(s.training) == _cron(s.ingest):
            # both DAGs would pull the same interval of these platforms at the same moment, into one batch folder
            raise ValueError(
                f"schedule: training ({s.training!r}) and ingest ({s.ingest!r}) run at the same times: the training "
                f"DAG and the ingest DAGs would pull the same days of {incremental} at once; give them different times"
            )
        return self

    @model_validator(mode="after")
    def _sources_and_targets(self) -> PipelineConfig:
        names = [p.name for p in self.platforms]
        if len(set(names)) != len(names):
            raise ValueError(f"platform names must be unique, got {names}")
        for p in self.platforms:
            if "interactions" not in p.files:
                raise ValueError(f"platform {p.name}: a platform must export an interactions file")
        if not self.sources:
            raise ValueError("at least one platform must have role 'source'")
        if not self.targets:
            raise ValueError("at least one platform must have role 'target'")
        source_names = {p.name for p in self.sources}
        target_names = sorted(p.name for p in self.targets)
        unknown = sorted(set(self.gate.targets) - set(target_names))
        if unknown:  # floors are looked up by target: any other name would be ignored without a word
            raise ValueError(f"gate.targets: {unknown} name no target platform (the targets: {target_names})")
        for p in self.platforms:
            if p.role == "source" and (p.sources is not None or p.new_users is not None or p.training):
                raise ValueError(
                    f"platform {p.name}: `sources`, `new_users` and `training` are settings of a target platform"
                )
            if p.training:
                try:
                    TrainingConfig.model_validate({**self.training.model_dump(), **p.training})
                except ValidationError as error:
                    raise ValueError(f"platform {p.name}: training: {'; '.join(problems_of(error))}") from error
            if p.sources is not None and (not p.sources or set(p.sources) - source_names):
                raise ValueError(
                    f"platform {p.name}: sources {p.sources} must name one or more source platforms of the config "
                    f"(sources: {sorted(source_names)})"
                )
            sharing = [q for q in self.platforms if q.world is not None and q.location == p.location]
            if p.world is not None and any(q.world != p.world or q.embedded != p.embedded for q in sharing):
                raise ValueError(
                    f"platform {p.name}: the platforms at {p.location!r} share one linked world export and must "
                    "give the same `embedded` and `world`"
                )
            for column, map_name in p.value_maps.items():
                if map_name != "age_years" and map_name not in self.value_maps:
                    raise ValueError(f"platform {p.name}: value map {map_name!r} for {column!r} is not defined")
                outside = sorted(
                    set(self.value_maps.get(map_name, {}).values()) - set(self.vocabularies.get(column) or [])
                )
                if self.vocabularies.get(column) and outside:  # a config mistake, not the data's: said at load
                    raise ValueError(
                        f"platform {p.name}: value map {map_name!r} for {column!r} maps onto {outside}, "
                        f"outside vocabularies.{column}"
                    )
                labels = self.vocabularies.get("age", [])
                if map_name == "age_years" and labels and len(set(labels)) != len(AGE_BINS) - 1:
                    raise ValueError(
                        f"platform {p.name}: value map age_years for {column!r} cuts ages at {AGE_BINS[1:-1]}, "
                        f"which needs {len(AGE_BINS) - 1} distinct labels in vocabularies.age, not {labels}"
                    )
        # after each target's own settings are known to be valid: compare what each would pretrain with
        for members in self.source_families([t.name for t in self.targets]).values():
            shaped = {tuple(getattr(self.training_of(t), k) for k in sorted(PRETRAIN_SETTINGS)) for t in members}
            if len(shaped) > 1:
                raise ValueError(
                    f"targets {members} share one pretrained model and must give the same {sorted(PRETRAIN_SETTINGS)} "
                    "in their `training`"
                )
        return self

    @property
    def sources(self) -> list[PlatformConfig]:
        """The source platforms: every target learns from all of them (each one's prior kept only where it helps)."""
        return [p for p in self.platforms if p.role == "source"]

    @property
    def targets(self) -> list[PlatformConfig]:
        return [p for p in self.platforms if p.role == "target"]

    def sources_of(self, target: str) -> list[PlatformConfig]:
        """The source platforms a target learns from (its family's; every source unless it names them)."""
        chosen = self.platform(target).sources
        return [p for p in self.sources if chosen is None or p.name in chosen]

    def pretraining_of(self, targets: list[str]) -> TrainingConfig:
        """The settings a family's shared model is pretrained with: its targets' (they agree on PRETRAIN_SETTINGS)."""
        return self.training_of(targets[0])

    def source_families(self, targets: list[str]) -> dict[tuple[str, ...], list[str]]:
        """The targets grouped by the sources they learn from: one pretrained model per group."""
        families: dict[tuple[str, ...], list[str]] = {}
        for target in targets:
            families.setdefault(tuple(p.name for p in self.sources_of(target)), []).append(target)
        return families

    def training_of(self, target: str) -> TrainingConfig:
        """The training settings a target is fine-tuned with: the `training` section and the target's own."""
        overrides = self.platform(target).training
        if not overrides:
            return self.training
        return TrainingConfig.model_validate({**self.training.model_dump(), **overrides})

    def for_target(self, target: str) -> PipelineConfig:
        """This config as one target's fine-tuning sees it (its own training settings in `training`)."""
        return self.model_copy(update={"training": self.training_of(target)})

    def family(self, target: str) -> PipelineConfig:
        """This config with only the target and its sources: a harness that measures one family (the MovieLens
        protocol) neither pays for nor is changed by the others' platforms."""
        keep = {target, *(p.name for p in self.sources_of(target))}
        return self.model_copy(update={"platforms": [p for p in self.platforms if p.name in keep]})

    def new_users_share(self, target: str) -> float:
        share = self.platform(target).new_users
        return self.features.new_users if share is None else share

    def platform(self, name: str) -> PlatformConfig:
        for p in self.platforms:
            if p.name == name:
                return p
        raise KeyError(f"no platform named {name!r} in the config (known: {[p.name for p in self.platforms]})")


# Airflow's cron presets as the expressions they stand for (one time written two ways is one time)
CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def _cron(expression: str) -> str:
    return CRON_PRESETS.get(expression.strip(), " ".join(expression.split()))


def location_allowed(location: str, allowed: list[str]) -> bool:
    """Whether a platform location lies under one of the allowed prefixes (URIs) or folders (local paths)."""
    scheme = location.split("://", 1)[0] if "://" in location else "file"
    if scheme not in ("file", "pkg", "s3"):
        return False
    if scheme != "file":
        if ".." in location.split("://", 1)[1].split("/"):
            return False
        return any("://" in root and location.startswith(root) for root in allowed)
    if location.startswith("file://") and not location.startswith(("file:///", "file://localhost/")):
        return False  # file://exports/x is the absolute /x to every reader (its first part a host name)
    path = Path(os.path.realpath(location.removeprefix("file://localhost").removeprefix("file://")))
    roots = [
        Path(os.path.realpath(root.removeprefix("file://")))
        for root in allowed
        if "://" not in root or root.startswith("file://")
    ]
    return any(path == root or path.is_relative_to(root) for root in roots)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load the YAML config (default: $TRANSFER_REC_CONFIG or config/pipeline.yaml), apply overrides, validate.
    Raises ConfigError naming the file and each problem's platform and field."""
    path = Path(path or os.environ.get("TRANSFER_REC_CONFIG") or DEFAULT_CONFIG)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config {path} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:  # its message names the line and column
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected settings by name (platforms:, training:, ...), not a list or value")
    if overrides:
        raw = _deep_merge(raw, overrides)
        # a run's training override (a DAG run's params) is for every target, over a target's own setting
        for platform in raw.get("platforms") or []:
            own = platform.get("training") if isinstance(platform, dict) else None
            if own:
                platform["training"] = {k: v for k, v in own.items() if k not in overrides.get("training", {})}
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        platforms = raw.get("platforms") if isinstance(raw, dict) else None
        problems = problems_of(error, platforms)
        head = f"config {path} is not valid ({len(problems)} problem{'s' * (len(problems) > 1)}):"
        raise ConfigError("\n  ".join([head, *problems])) from None
    if config.engine == "spark":
        try:  # the environment's master (the one a task would use) is refused now, not when Spark starts
            config.spark.master_url()
        except ValueError as error:
            raise ConfigError(f"config {path}: {error}") from None
    return config
