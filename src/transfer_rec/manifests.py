"""What one stage hands the next: small, typed manifests (paths, row counts, hashes, run ids), never data or models.

Between Airflow tasks they travel as XCom in their JSON form (`model_dump(mode="json")`) and are validated back into
these types by the stage facade (stages/pipeline.py). Big reports stay in the state folder and MLflow; a manifest
names them by path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Manifest(BaseModel):
    # registry versions come back from MLflow as ints or strings depending on the call; a manifest holds strings
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RunPlan(Manifest):
    """A pipeline run as every task sees it: config overrides from the run's params, targets, the MLflow parent."""

    run_key: str
    overrides: dict[str, Any] = {}
    platforms: list[str]
    targets: list[str]
    parent_run_id: str
    experiment_id: str | None = None
    gate_override: str = "none"
    dry_run: bool = False
    force: bool = False
    interval: list[str] | None = None


class PulledFile(Manifest):
    table: str
    file: str
    source_uri: str
    size: int
    sha256: str
    rows: int


class PulledBatch(Manifest):
    """A platform's export files as they landed under landing/<platform>/<batch_id>/."""

    platform: str
    role: str
    mode: str
    batch_id: str
    batch_dir: str
    interval: list[str] | None = None
    pulled_at: str
    files: list[PulledFile]

    def interaction_rows(self) -> int:
        return sum(f.rows for f in self.files if f.table == "interactions")


class TableCheck(Manifest):
    table: str
    rows: int
    expectations: int
    failed: int
    rating_mean: float | None = None


class ValidationSummary(Manifest):
    """One batch's verdict (also written as validation.json beside the batch, or into quarantine)."""

    platform: str
    batch_id: str
    success: bool
    tables: dict[str, TableCheck] = {}
    critical: list[str] = []
    warnings: list[str] = []
    data_docs: str


class ValidatedBatch(PulledBatch):
    validation: ValidationSummary

    def interaction_rows(self) -> int:
        """The interaction rows validation read (a pull counts lines, which a quoted line break or blank lines
        throw off); the pull's count where validation read no interactions table."""
        read = [t.rows for t in self.validation.tables.values() if t.table == "interactions"]
        return sum(read) if read else super().interaction_rows()


class UnifiedVersion(Manifest):
    """A version of the unified tables (interactions, users, items) and what each platform contributed."""

    dir: str
    current: str
    platforms: dict[str, dict[str, Any]]
    batches: dict[str, str]
    hashes: dict[str, dict[str, str]]
    validation: dict[str, Any]
    # platforms whose users file lists only some accounts (users_export: partial): absence there is no deletion
    partial_users: list[str] = []

    def interaction_rows(self) -> dict[str, int]:
        """The version's interaction rows per platform (what unify wrote for each: its `rows_out`)."""
        return {name: int(counts.get("rows_out", 0)) for name, counts in self.platforms.items()}


class FeatureSet(Manifest):
    """Training sets: the sources' interactions, each target's seeded train/valid/test split, the item index."""

    dir: str
    run_key: str
    seed: int
    n_items: int
    platforms: dict[str, dict[str, Any]]
    unified: str | None = None


class PretrainedFamily(Manifest):
    """The model pretrained on one family's sources, for the targets that learn from them."""

    sources: list[str]
    targets: list[str]
    checkpoint: str
    run_id: str
    epochs: int
    users: int
    seconds: float


class Pretrained(Manifest):
    """One pretrained model per family of sources (config: a target's `sources`)."""

    families: list[PretrainedFamily]
    # the MLflow run an operator opens from the pretrain task: the first family's
    run_id: str

    def of(self, target: str) -> PretrainedFamily:
        for family in self.families:
            if target in family.targets:
                return family
        raise KeyError(f"target {target}: no pretrained model of its sources in this run")


class Candidate(Manifest):
    """A fine-tuned model for one target (logged to MLflow) and the baselines fitted on the same split."""

    target: str
    bundle: str
    baselines: str
    run_id: str
    model_uri: str
    valid_ndcg: float
    epochs: int


class Evaluation(Manifest):
    """Every contender on the same held-out users; the whole report is `report` (evaluation.json)."""

    target: str
    k: int
    test_users: int
    retention_users: int
    # test users new to the target (every interaction of theirs held out): the gate judges them apart when enough
    new_to_target_users: int | None = None  # None: an evaluation from before the count (judged as then)
    metrics: dict[str, dict[str, float | None]]
    paired_vs_champion: dict[str, float] | None = None
    champion_version: str | None = None
    same_as_champion: bool = False
    # accounts the champion holds whose people have since withheld consent (the gate then requires its replacement)
    champion_withdrawn: int = 0
    # the champion's version and why it could not be loaded, when it could not: the candidate was compared with
    # nothing, and the gate leaves the decision to an operator (gate_override)
    champion_unloadable: str | None = None
    report: str
    candidate: Candidate
    run_id: str | None = None  # the evaluation's MLflow run (nested under the candidate's); None in older manifests


class Decision(Manifest):
    target: str
    model: str
    version: str
    promoted: bool
    previous_champion: str | None = None
    reasons: list[str]


class Published(Manifest):
    target: str
    published: bool
    reason: str | None = None
    path: str | None = None
    users: int | None = None
    opted_out_users: int | None = None
    # consenting users training left out (fewer positives than features.min_interactions): ranked from what they have
    short_history_users: int | None = None
    rows: int | None = None
    model_version: str | None = None


class IngestResult(Manifest):
    """An ingest DAG's verdict on a landed batch: new data to announce, or the same data again."""

    platform: str
    batch_id: str
    new: bool
    same_as: str | None = None
    rows: dict[str, int] = {}
    warnings: int = 0
