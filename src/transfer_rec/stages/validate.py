"""Stage 2, validate: run the platform's Great Expectations suites on its landed batch; quarantine it on failure."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from transfer_rec.config import REPO_ROOT, PlatformConfig
from transfer_rec.io.formats import FormatError, read_table, to_numbers
from transfer_rec.io.state import StateLayout
from transfer_rec.io.storage import write_text_atomic
from transfer_rec.manifests import PulledBatch, TableCheck, ValidatedBatch, ValidationSummary
from transfer_rec.ops.data_docs import make_offline
from transfer_rec.ops.links import data_docs_page
from transfer_rec.runtime.workers import can_fork, forked_map, workers
from transfer_rec.schema import rules
from transfer_rec.schema.suites import (
    FORBIDDEN_COLUMN_MARKERS,
    NUMERIC_PATTERN,
    build_suite,
    native_column,
    suite_name,
)
from transfer_rec.schema.unified import IDENTITY_COLUMNS
from transfer_rec.stages.pull import VALIDATION_FILE

log = logging.getLogger(__name__)

DOCS_SITE = "transfer_rec"
NUMERIC_COLUMNS = ("rating", "timestamp")
# A table with more rows than this is validated in partitions of about this size, split by its user column so that
# every row of one user lands in the same partition: each partition gets every row-level expectation, uniqueness
# over keys that include the user column stays exact, and the expectations on the table as a whole (row count,
# means) run once on the whole table. Partitions run in parallel worker processes (TRANSFER_REC_WORKERS, default:
# the CPUs this process may use) and keep pandas' hash tables small enough to stay fast.
PARTITION_ROWS = 1_500_000
# Below this many rows in a batch, its checkpoints run in this process (forking workers would cost more).
PARALLEL_MIN_ROWS = 1_000_000
# Expectations whose verdict on a table is the conjunction of their verdicts on any partition of its rows (every
# partition has all the columns, so the table-schema ones hold alike), as long as `mostly` is not below 1.
ROW_LEVEL = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_column_to_exist",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_match_regex_list",
        "expect_column_values_to_not_match_regex_list",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_value_lengths_to_be_between",
        "expect_column_value_lengths_to_equal",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_match_strftime_format",
        "expect_column_values_to_be_dateutil_parseable",
        "expect_column_values_to_be_json_parseable",
        "expect_column_pair_values_to_be_equal",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_in_set",
        "expect_select_column_values_to_be_unique_within_record",
        "expect_multicolumn_sum_to_equal",
    }
)
# Uniqueness across rows: exact per partition only when the partition column is part of the key.
KEYED = {"expect_compound_columns_to_be_unique": "column_list", "expect_column_values_to_be_unique": "column"}
# Table-level expectations that read no column: on the whole table they need only its rows.
ROW_COUNT = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})


class DataValidationError(RuntimeError):
    """A batch failed a critical expectation; the message names platform, file, expectation and bad values."""


class BatchGone(LookupError):
    """A landed batch a task was given is no longer in landing (quarantined by an earlier try, or removed)."""


def require_landed(batch_dir: Path, platform: str, batch_id: str, layout: StateLayout) -> None:
    """Refuse, saying where it went, a batch whose folder has left landing: a task cleared in the UI after its batch
    was quarantined would otherwise fail on the first file it opens, naming only that file."""
    if batch_dir.is_dir():
        return
    moved = layout.quarantine / platform / batch_id
    where = f"it was quarantined to {moved} (its {VALIDATION_FILE} says why)" if moved.is_dir() else "it was removed"
    raise BatchGone(
        f"platform {platform}: batch {batch_id} is no longer in {batch_dir}: {where}; "
        "fix the export and start a new run (from pull): retrying this task cannot find it"
    )


def gx_context(root: Path | None = None):
    """The file-backed GX context (default: the repo's great_expectations/, or $TRANSFER_REC_GX_DIR)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = root or Path(os.environ.get("TRANSFER_REC_GX_DIR", REPO_ROOT / "great_expectations"))
    context = gx.get_context(mode="file", context_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def ensure_suites(context: Any, platform: PlatformConfig) -> list[str]:
    """Store the default suites for a platform's tables unless a reviewed one already exists; return their names."""
    names = []
    for table in platform.files:
        name = suite_name(platform.name, table)
        try:
            context.suites.get(name)
        except Exception:  # GX raises its own not-found error type here
            context.suites.add(build_suite(platform, table))
            log.info("created default expectation suite %s: review and commit it", name)
        names.append(name)
    return names


def _number_text(raw: pd.Series) -> np.ndarray:
    """Where a text column holds a number as the numeric pattern reads it. to_numeric reads " 4", "+4", "1e3", "0x10"
    and other scripts' digits as numbers, which the pattern check would then pass; Spark checks the text itself, so
    both engines refuse such a file alike."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(raw.array, pd.arrays.ArrowStringArray):
        text = pa.array(raw.array)
    else:
        text = pa.array(raw.astype(object).where(raw.notna(), None).map(str, na_action="ignore"), type=pa.string())
    # the pattern itself (~0.6 s per 20 M values): pyarrow's cast to int64, faster, also reads hex ("0x10" is 16)
    matched = pc.fill_null(pc.match_substring_regex(text, NUMERIC_PATTERN), False)
    return matched.to_numpy(zero_copy_only=False)


def _typed_batch(frame: pd.DataFrame, platform: PlatformConfig, table: str) -> pd.DataFrame:
    """Numeric native columns as numbers next to the raw text, so range checks run on numbers.

    Whole numbers stay int64 (GX's regex check then turns them into text with pyarrow's cast instead of one Python
    str() per value; "4" and "4.0" both match the numeric pattern), other numbers become float64."""
    typed = {}
    for native, unified in platform.columns.get(table, {}).items():
        if unified in NUMERIC_COLUMNS and native in frame:
            raw = frame[native]
            if isinstance(raw.dtype, pd.CategoricalDtype):
                raw = raw.astype(object).where(raw.notna(), None)
            numeric = to_numbers(raw)
            if numeric is not raw:
                numeric = numeric.where(_number_text(raw))
            if numeric is raw or numeric.notna().sum() == raw.notna().sum():
                # all numbers: a numeric column (fast checks)
                whole = numeric.dtype.kind == "i" or (numeric.dtype.kind == "u" and numeric.max() < 2**63)
                typed[native] = numeric.astype("int64" if whole else "float64")
                continue
            # Keep non-numeric text visible to the regex expectation, numbers to the range expectation.
            typed[native] = numeric.astype(object).where(numeric.notna(), raw)
    return frame.assign(**typed) if typed else frame


def _failure_line(platform: str, file: str, result: Any) -> str:
    config = result.expectation_config
    kwargs = {
        k: (f"<{len(v)} values>" if isinstance(v, (list, tuple, set)) and len(v) > 10 else v)
        for k, v in config.kwargs.items()
        if k not in ("batch_id", "result_format")
    }
    details = result.result or {}
    examples = details.get("partial_unexpected_list") or details.get("details", {}).get("mismatched") or ""
    if config.kwargs.get("column") == "link_id":  # what fails a hash's rule may be a raw identity: never shown
        examples = ["<withheld: identity column>"] if examples else ""
    count = details.get("unexpected_count")
    observed = details.get("observed_value")
    observed = observed.item() if hasattr(observed, "item") else observed  # numpy scalars print as plain numbers
    # no examples: an identity column's results keep none (withhold_identities)
    what = (
        (f"{count} unexpected value(s), e.g. {examples[:5]!r}" if examples else f"{count} unexpected value(s)")
        if count
        else f"observed {observed!r}"
    )
    raised = _raised(result.exception_info)
    if raised is not None:
        what = f"could not be evaluated: {raised}"
    return f"platform {platform}, file {file}: {config.type}({kwargs}) failed: {what}"


def _raised(info: dict[str, Any] | None) -> str | None:
    """The message of the error an expectation raised, if it raised: GX gives one dict, or one per metric it
    computed (a mean of a text column fails in its metric, and then read "observed None")."""
    if not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    return next((m for m in map(_raised, (v for v in info.values() if isinstance(v, dict))) if m is not None), None)


def expectation_key(config: Any) -> str:
    """An expectation configuration as text: the same for the same rule on the same columns, in any suite."""
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def _failed(results: list[Any]) -> list[Any]:
    """The failed expectations of one table's validation results (one result per partition when it was validated
    in partitions): one entry per expectation, its unexpected counts summed and its examples pooled."""
    merged: dict[str, Any] = {}
    for suite_result in results:
        for r in suite_result.results:
            if r.success:
                continue
            config = r.expectation_config
            key = expectation_key(config)
            if key not in merged:
                merged[key] = SimpleNamespace(
                    expectation_config=config, result=dict(r.result or {}), exception_info=r.exception_info
                )
                continue
            into, details = merged[key].result, r.result or {}
            if details.get("unexpected_count"):
                into["unexpected_count"] = (into.get("unexpected_count") or 0) + details["unexpected_count"]
                into["partial_unexpected_list"] = list(into.get("partial_unexpected_list") or []) + list(
                    details.get("partial_unexpected_list") or []
                )
    return list(merged.values())


# Expectations that read a column's values as numbers. A numeric native column that also holds text keeps that text
# where the pattern rule sees it; these run on the column's numbers instead (the text as null, which they skip).
READ_AS_NUMBERS = frozenset(
    {
        "expect_column_values_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_median_to_be_between",
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_sum_to_be_between",
        "expect_column_stdev_to_be_between",
        "expect_column_quantile_values_to_be_between",
    }
)


class Landed(NamedTuple):
    """One landed file as an engine holds it: its columns as read (numeric native columns as numbers where the
    engine can), the same with the `numeric` columns as numbers only (what is not a number null), and its rows."""

    raw: Any
    numbers: Any
    numeric: tuple[str, ...]
    rows: int
    # False when the engine found, while reading, that no user id holds an e-mail address or a phone number (no pass
    # to count them)
    may_hold_identities: bool = True


def by_reading(batches: list[Batch]) -> tuple[list[Batch], list[int]]:
    """Each batch of Landed frames as a batch of its expectations on the columns as read and, when some expectation
    reads a `numeric` column's values as numbers, a second one of those on the numbers; with each one's batch."""
    out: list[Batch] = []
    owners: list[int] = []
    for number, batch in enumerate(batches):
        landed: Landed = batch.frame
        as_numbers = [
            e
            for e in batch.expectations
            if e.configuration.type in READ_AS_NUMBERS and e.configuration.kwargs.get("column") in landed.numeric
        ]
        as_read = [e for e in batch.expectations if not any(e is n for n in as_numbers)]
        out.append(batch._replace(frame=landed.raw, expectations=as_read))
        owners.append(number)
        if as_numbers:
            out.append(batch._replace(name=f"{batch.name}.numbers", frame=landed.numbers, expectations=as_numbers))
            owners.append(number)
    return out, owners


def regroup(results: list[list[Any]], owners: list[int], count: int) -> list[list[Any]]:
    """`by_reading`'s batches' results as `count` lists, one per original batch."""
    grouped: list[list[Any]] = [[] for _ in range(count)]
    for owner, result in zip(owners, results):
        grouped[owner] += result
    return grouped


class RawEngine(Protocol):
    """How an engine reads a landed file and runs its expectations: `PandasRaw` here, `spark.validate.SparkRaw` on
    Spark. `read` returns the file as Landed frames of the engine or raises FormatError; `validate` runs each batch's
    expectations on its Landed frames through checkpoints of `scratch` and returns, per batch, its validation
    results stored in `scratch` (as `validate_frames` does)."""

    def read(self, path: Path, platform: PlatformConfig, table: str) -> Landed: ...

    def stats(self, frame: Landed, platform: PlatformConfig, table: str) -> dict[str, float]: ...

    def validate(self, scratch: Any, name: str, batches: list[Batch]) -> list[list[Any]]: ...

    def identity_ids(self, frame: Landed, column: str) -> int: ...


class PandasRaw:
    """The pandas engine: files read into memory whole, large ones validated in partitions by forked workers."""

    def read(self, path: Path, platform: PlatformConfig, table: str) -> Landed:
        # Id columns as categoricals: GX's null, uniqueness and fingerprint passes then work on integer codes.
        frame = read_table(path, platform.format, platform.delimiter, categorical=_id_columns(platform, table))
        typed = _typed_batch(frame, platform, table)
        # numeric columns that also hold text (a bad batch): their numbers apart, for the range and mean rules
        mixed = tuple(
            c
            for c in (native_column(platform, table, u) for u in NUMERIC_COLUMNS)
            if c and c in typed and typed[c].dtype == object
        )
        numbers = typed.assign(**{c: pd.to_numeric(typed[c], errors="coerce") for c in mixed}) if mixed else typed
        return Landed(typed, numbers, mixed, len(typed))

    def stats(self, frame: Landed, platform: PlatformConfig, table: str) -> dict[str, float]:
        return batch_stats(frame.raw, platform, table)

    def identity_ids(self, frame: Landed, column: str) -> int:
        """How many distinct values of `column` are e-mail addresses or phone numbers (rules.identity_ids)."""
        values = frame.raw[column]
        if isinstance(values.dtype, pd.CategoricalDtype):  # a Parquet dictionary's categories may name unused values
            return rules.identity_ids(pd.Series(values.cat.remove_unused_categories().cat.categories))
        return rules.identity_ids(pd.Series(values.dropna().unique()))

    def validate(self, scratch: Any, name: str, batches: list[Batch]) -> list[list[Any]]:
        split, owners = by_reading(batches)
        return regroup(validate_frames(scratch, scratch.data_sources.add_pandas(name), split), owners, len(batches))


def validate_batch(
    manifest: PulledBatch,
    platform: PlatformConfig,
    layout: StateLayout,
    context_root: Path | None = None,
    engine: RawEngine | None = None,
) -> ValidatedBatch:
    """Validate every landed file of a pull manifest; on a critical failure move the batch to quarantine and raise.
    `engine`: what reads and checks the files (pandas by default)."""
    engine = engine or PandasRaw()
    batch_dir = Path(manifest.batch_dir)
    require_landed(batch_dir, platform.name, manifest.batch_id, layout)
    context = gx_context(context_root)
    ensure_suites(context, platform)
    # Batches are registered in an in-memory context: validating never rewrites the committed GX config, and
    # parallel validate tasks never write the same file. Its checkpoints render Data Docs under the state folder.
    docs = layout.data_docs / data_docs_page(platform.name, manifest.batch_id)
    scratch = _scratch_context(docs.parent)
    critical: list[str] = []
    warnings: list[str] = []
    tables: dict[str, TableCheck] = {}
    checked: list[tuple[str, str, Any, list[str], int]] = []  # table, file, frame, problems, batch
    batches: list[Batch] = []
    for index, entry in enumerate(manifest.files):
        table, file = entry.table, entry.file
        try:
            frame = engine.read(batch_dir / file, platform, table)
        except FormatError as exc:
            checked.append((table, file, None, [f"platform {platform.name}, file {file}: cannot be read: {exc}"], -1))
            continue
        forbidden = [c for c in map(str, frame.raw.columns) if any(m in c.lower() for m in FORBIDDEN_COLUMN_MARKERS)]
        problems = (
            [
                f"platform {platform.name}, file {file}: forbidden PII column(s) {forbidden} "
                "(rule: no password/secret columns may be exported)"
            ]
            if forbidden
            else []
        )
        secret = frozenset(filter(None, (native_column(platform, table, c) for c in IDENTITY_COLUMNS)))
        user_column = native_column(platform, table, "user_id")
        if platform.e_mail_user_ids == "refuse" and user_column and user_column in list(frame.raw.columns):
            found = engine.identity_ids(frame, user_column)
            if found:
                # refused here, before any check could quote one (a uniqueness warning's examples, Data Docs)
                problems.append(str(rules.opaque_user_id_refusal(found, platform.name, file, user_column)))
                secret |= {user_column}
        expectations = context.suites.get(suite_name(platform.name, table)).expectations
        expectations = expectations + drift_expectations(
            platform, table, previous_stats(layout, platform, table, manifest.batch_id)
        )
        checked.append((table, file, frame, problems, len(batches)))
        batches.append(
            Batch(
                f"{platform.name}.{manifest.batch_id}.{index}.{file.replace('/', '_')}",
                frame,
                expectations,
                user_column,
                secret=secret,
            )
        )
    results = engine.validate(scratch, f"landing-{platform.name}", batches)
    for table, file, frame, problems, batch in checked:
        critical += problems
        if frame is None:
            continue
        failed = _failed(results[batch])
        for r in failed:
            line = _failure_line(platform.name, file, r)
            (warnings if _severity(r) != "critical" else critical).append(line)
        tables[file] = TableCheck(
            table=table,
            rows=frame.rows,
            expectations=len(batches[batch].expectations),
            failed=len(failed),
            **engine.stats(frame, platform, table),
        )
    # One Data Docs build for the whole batch (every file's and partition's validation result, and the index).
    scratch.build_data_docs(site_names=[DOCS_SITE])
    make_offline(docs.parent, layout.data_docs)
    summary = ValidationSummary(
        platform=platform.name,
        batch_id=manifest.batch_id,
        success=not critical,
        tables=tables,
        critical=critical,
        warnings=warnings,
        data_docs=str(docs),
    )
    log.info("platform %s: Data Docs at %s", platform.name, summary.data_docs)
    for line in warnings:
        log.warning("validation warning: %s", line)
    if critical:
        quarantined = quarantine(batch_dir, layout, platform.name, manifest.batch_id, summary.to_xcom())
        raise DataValidationError(
            f"platform {platform.name}: batch {manifest.batch_id} failed validation and was moved to "
            f"{quarantined}:\n  - " + "\n  - ".join(critical)
        )
    # the file that marks a batch validated: whole or absent
    write_text_atomic(batch_dir / VALIDATION_FILE, json.dumps(summary.to_xcom(), indent=2))
    log.info("platform %s: %d table(s) passed validation (%d warning(s))", platform.name, len(tables), len(warnings))
    return ValidatedBatch(**manifest.model_dump(), validation=summary)


def batch_stats(frame: pd.DataFrame, platform: PlatformConfig, table: str) -> dict[str, float]:
    """What the next batch is compared with: its rating mean (interactions)."""
    rating = native_column(platform, table, "rating")
    if table != "interactions" or not rating or rating not in frame:
        return {}
    values = pd.to_numeric(frame[rating], errors="coerce")
    return {"rating_mean": float(values.mean())} if values.notna().any() else {}


def previous_stats(layout: StateLayout, platform: PlatformConfig, table: str, batch_id: str) -> dict[str, float]:
    """Rows and rating mean of the platform's most recent validated batch of a table (other than this batch).

    Snapshots only: incremental slices differ in size by nature."""
    if platform.pull.mode != "snapshot":
        return {}
    latest: tuple[str, dict[str, float]] = ("", {})
    for validation in (layout.landing / platform.name).glob(f"*/{VALIDATION_FILE}"):
        if validation.parent.name == batch_id or validation.parent.name.startswith("."):  # this one, or pull's own
            continue
        summary = json.loads(validation.read_text())
        pulled_at = json.loads((validation.parent / "manifest.json").read_text()).get("pulled_at", "")
        for stats in summary.get("tables", {}).values():
            if stats.get("table") == table and pulled_at > latest[0]:
                latest = (pulled_at, stats)
    return latest[1]


def drift_expectations(platform: PlatformConfig, table: str, previous: dict[str, float]) -> list[Any]:
    """Expectations against the previous batch: row count within `drift.volume_factor` of it (a volume anomaly),
    and the rating mean within `drift.rating_shift` (a share of the rating scale) of its mean."""
    from great_expectations import expectations as gxe

    drift = platform.drift
    checks: list[Any] = []
    if previous.get("rows") and drift.volume_factor:
        rows = previous["rows"]
        checks.append(
            gxe.ExpectTableRowCountToBeBetween(
                min_value=int(rows / drift.volume_factor), max_value=int(rows * drift.volume_factor) + 1
            )
        )
    rating = native_column(platform, table, "rating")
    if rating and "rating_mean" in previous and drift.rating_shift:
        low, high = platform.rating_scale
        shift = drift.rating_shift * (high - low)
        checks.append(
            gxe.ExpectColumnMeanToBeBetween(
                column=rating, min_value=previous["rating_mean"] - shift, max_value=previous["rating_mean"] + shift
            )
        )
    return checks


def _scratch_context(docs_dir: Path):
    """An in-memory GX context whose Data Docs site is a folder of the state (one site per platform)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    scratch = gx.get_context(mode="ephemeral")
    scratch.variables.progress_bars = ProgressBarsConfig(globally=False)
    scratch.add_data_docs_site(
        site_name=DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return scratch


def _id_columns(platform: PlatformConfig, table: str) -> list[str]:
    """The native columns of a table that hold ids (read as categoricals for validation)."""
    return [c for c in (native_column(platform, table, u) for u in ("user_id", "item_id")) if c]


# What a result holds: counts, the observed value and up to five unexpected values (the failure line's examples).
SUMMARY = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


def checkpoint(
    scratch: Any, source: Any, expectations: list[Any], name: str, result_format: dict[str, Any] = SUMMARY
) -> Any:
    """A checkpoint validating one dataframe (given when it runs) against expectations. It has no actions: Data
    Docs are built once per batch, after all its checkpoints ran."""
    import great_expectations as gx

    suite = scratch.suites.add(
        gx.ExpectationSuite(
            name=name, expectations=[e.__class__(**e.configuration.kwargs, severity=e.severity) for e in expectations]
        )
    )
    batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    definition = scratch.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    return scratch.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[],
            result_format=result_format,
        )
    )


def _splits_by(expectation: Any, key: str) -> bool:
    """Whether an expectation's verdict on a table is the conjunction of its verdicts on partitions by `key`."""
    config = expectation.configuration
    if (config.kwargs.get("mostly") or 1) < 1:
        return False
    if config.type in KEYED:
        on = config.kwargs.get(KEYED[config.type])
        return key == on or (isinstance(on, (list, tuple)) and key in on)
    return config.type in ROW_LEVEL


def _columns_read(expectations: list[Any], frame: pd.DataFrame) -> list[str]:
    """The columns some expectations read (all of them if one of them looks at the table as a whole)."""
    wanted: set[str] = set()
    for e in expectations:
        kwargs = e.configuration.kwargs
        named = [
            kwargs.get("column"),
            kwargs.get("column_A"),
            kwargs.get("column_B"),
            *(kwargs.get("column_list") or []),
        ]
        named = [c for c in named if c]
        if not named and e.configuration.type not in ROW_COUNT:
            return list(frame.columns)
        wanted.update(named)
    return [c for c in frame.columns if c in wanted] or list(frame.columns[:1])


def partitions(frame: pd.DataFrame, key: str | None, rows: int | None = None) -> list[slice | np.ndarray] | None:
    """The frame's rows in partitions of about `rows` rows, all rows of one `key` value in the same partition, each
    in file order; None when the frame needs no partitioning. When each key value's rows are adjacent (a file
    written user by user, the unified table) the partitions are slices of the frame (no copy), else row positions
    (rows with no key all in the first partition)."""
    rows = rows or PARTITION_ROWS
    if key is None or key not in frame or len(frame) <= rows:
        return None
    column = frame[key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        grouped = codes.min() >= 0 and len(np.unique(codes[starts])) == len(starts)
    else:
        codes = None
        starts, distinct = _runs(column)
        grouped = distinct == len(starts)
    count = min(-(-len(frame) // rows), len(starts))
    if count < 2:
        return None
    if grouped:  # cut at the first run of a key at or after each multiple of len/count
        cuts = starts[np.minimum(np.searchsorted(starts, np.arange(1, count) * len(frame) // count), len(starts) - 1)]
        bounds = np.unique(np.r_[0, cuts, len(frame)])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    # dense codes of the values present (missing: -1), so every residue below their count occurs: no empty partition
    if codes is None:
        codes = pd.factorize(column)[0]
    else:
        present = codes >= 0
        codes = np.where(present, 0, -1)
        codes[present] = pd.factorize(column.cat.codes.to_numpy()[present])[0]
    count = min(count, int(codes.max()) + 1)
    if count < 2:
        return None
    part = np.where(codes < 0, 0, codes % count)
    order = np.argsort(part.astype(np.int16), kind="stable")
    bounds = np.searchsorted(part[order], np.arange(count + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(count)]


def _runs(column: pd.Series) -> tuple[np.ndarray, int]:
    """The positions where a run of equal values starts, and how many distinct values start a run (missing values
    count as one value: apart in two runs, they do not look grouped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = (
            pa.array(column.array)
            if isinstance(column.array, pd.arrays.ArrowStringArray)
            else pa.array(column.to_numpy(), from_pandas=True)
        )
        equal = pc.equal(values[:-1], values[1:]).fill_null(False).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, ~equal])
        heads = values.take(pa.array(starts))
        return starts, pc.count_distinct(heads, mode="all").as_py()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # values pyarrow cannot hold
        values = column.to_numpy()
        starts = np.flatnonzero(
            np.r_[True, ~(np.asarray(values[:-1] == values[1:], dtype=bool) & pd.notna(values[:-1]))]
        )
        return starts, pd.Series(values[starts]).nunique(dropna=False)


class Batch(NamedTuple):
    """A frame to validate against expectations: `key` is the column it may be partitioned by, `prepare` adds
    derived columns to the rows validated (it runs where they are validated, on a partition in its worker)."""

    name: str
    frame: pd.DataFrame
    expectations: list[Any]
    key: str | None = None
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # columns whose values identify people (a platform's columns mapped to email or phone): no result keeps them
    secret: frozenset[str] = frozenset()


class Job(NamedTuple):
    """One checkpoint run: on the frame's `rows` (a slice or positions; all when None), prepared, then `columns`."""

    checkpoint: Any
    frame: pd.DataFrame
    rows: slice | np.ndarray | None = None
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    columns: list[str] | None = None
    secret: frozenset[str] = frozenset()


# what a result on an identity column keeps: counts and shares, never a value
COUNT_KEYS = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
        "missing_count",
        "missing_percent",
    }
)


def withhold_identities(run: list[tuple[Any, Any]], secret: frozenset[str]) -> list[tuple[Any, Any]]:
    """A checkpoint run's results with every value of a `secret` column removed (examples, observed values): an
    operator's expectation on an e-mail column must not put e-mails in a log, a quarantine report, an MLflow artifact
    or a Data Docs page. Counts stay."""
    if not secret:
        return run
    for _, result in run:
        for r in result.results:
            if not reads_any(r.expectation_config.kwargs, secret):
                continue
            if r.result:
                r.result = {k: v for k, v in r.result.items() if k in COUNT_KEYS}
            if r.exception_info:
                # an expectation that raised on such a column names the value it choked on ("Could not convert
                # 'ann@example.com' to numeric"): the failure is kept, its message and traceback are not
                r.exception_info = _withheld_exception(r.exception_info)
    return run


WITHHELD_EXCEPTION = "<withheld: an error on an identity column may quote its values>"


def _withheld_exception(info: dict[str, Any]) -> dict[str, Any]:
    """GX's exception info (one dict, or one per metric) with its message and traceback withheld."""
    if "raised_exception" not in info:
        return {key: _withheld_exception(value) if isinstance(value, dict) else value for key, value in info.items()}
    if not info.get("raised_exception"):
        return info
    return {**info, "exception_message": WITHHELD_EXCEPTION, "exception_traceback": WITHHELD_EXCEPTION}


def reads_any(kwargs: dict[str, Any], columns: frozenset[str]) -> bool:
    """Whether an expectation with these kwargs reads any of `columns`."""
    read = {kwargs.get(k) for k in ("column", "column_A", "column_B")} | set(kwargs.get("column_list") or [])
    return bool(read & columns)


def validate_frames(
    scratch: Any, source: Any, batches: list[Batch], partition_rows: int | None = None
) -> list[list[Any]]:
    """Validate each batch through GX checkpoints of the scratch context and return, per batch, its validation
    results (stored in the context for its Data Docs).

    A large frame is validated in partitions by its key column (see PARTITION_ROWS): the expectations that split by
    it run on every partition, the others once on the whole table (given the columns they read)."""
    jobs: list[Job] = []
    owners: list[int] = []
    for number, batch in enumerate(batches):
        parts = partitions(batch.frame, batch.key, partition_rows)
        split = [e for e in batch.expectations if parts and _splits_by(e, batch.key)]
        whole = [e for e in batch.expectations if not (parts and _splits_by(e, batch.key))]
        if parts and split:
            for k, rows in enumerate(parts):
                name = f"{batch.name}.part{k + 1:02d}of{len(parts):02d}"
                jobs.append(
                    Job(checkpoint(scratch, source, split, name), batch.frame, rows, batch.prepare, secret=batch.secret)
                )
                owners.append(number)
        if whole or not parts:
            shape = batch.prepare(batch.frame.iloc[:0]) if batch.prepare else batch.frame
            jobs.append(
                Job(
                    checkpoint(scratch, source, whole, f"{batch.name}.table" if parts else batch.name),
                    batch.frame,
                    None,
                    batch.prepare,
                    _columns_read(whole, shape) if parts else None,
                    batch.secret,
                )
            )
            owners.append(number)
    results: list[list[Any]] = [[] for _ in batches]
    for owner, result in zip(owners, _run_checkpoints(scratch, jobs)):
        results[owner].append(result)
    return results


_JOBS: list[Job] = []


def _run_job(index: int, jobs: list[Job] | None = None) -> list[tuple[Any, Any]]:
    job = (jobs or _JOBS)[index]
    # a partition is gathered where it is validated (a slice is a view; gathered rows are the worker's own copy)
    frame = (
        job.frame
        if job.rows is None
        else job.frame.iloc[job.rows]
        if isinstance(job.rows, slice)
        else job.frame.take(job.rows)
    )
    frame = job.prepare(frame) if job.prepare else frame
    frame = frame[job.columns] if job.columns is not None else frame
    run = list(job.checkpoint.run(batch_parameters={"dataframe": frame}).run_results.items())
    return withhold_identities(run, job.secret)


def _run_checkpoints(scratch: Any, jobs: list[Job]) -> list[Any]:
    """Run the jobs' checkpoints and return their validation results in order. Large work runs in forked worker
    processes, which share the frames with this process (nothing is copied to them); their results are stored in
    this process's context, as a run here stores them."""
    global _JOBS

    sizes = [
        len(range(len(job.frame))[job.rows])
        if isinstance(job.rows, slice)
        else len(job.frame if job.rows is None else job.rows)
        for job in jobs
    ]
    count = min(workers(), len(jobs))
    if count < 2 or sum(sizes) < PARALLEL_MIN_ROWS or not can_fork():
        done = [_run_job(index, jobs) for index in range(len(jobs))]
    else:
        _JOBS = jobs
        try:
            # the largest first, so the last job to start is a small one
            order = sorted(range(len(jobs)), key=lambda i: -sizes[i])
            done = forked_map(_run_job, order, count)
        finally:
            _JOBS = []
    return store_results(scratch, [done[index] for index in range(len(jobs))])


def store_results(scratch: Any, runs: list[list[tuple[Any, Any]]]) -> list[Any]:
    """The validation results of checkpoint runs (each a list of (identifier, result)), judged by the pipeline's
    verdict and stored in the scratch context for its Data Docs."""
    store = scratch.validation_results_store
    results = []
    for run in runs:
        for key, result in run:
            result.success = _passes(result)
            store.store_validation_results(
                suite_validation_result=result,
                suite_validation_result_identifier=key,
                expectation_suite_identifier=key.expectation_suite_identifier,
            )
            results.append(result)
    return results


def _passes(result: Any) -> bool:
    """The pipeline's verdict on one validation result: only critical expectations fail it (warnings are listed,
    and the Data Docs page then says "Succeeded" above its failed warnings, as the task log says "passed")."""
    return all(r.success or _severity(r) != "critical" for r in result.results)


def _severity(r: Any) -> str:
    severity = getattr(r.expectation_config, "severity", "critical")
    return str(getattr(severity, "value", severity))


def quarantine(batch_dir: Path, layout: StateLayout, platform: str, batch_id: str, summary: dict[str, Any]) -> Path:
    """Move a landed batch, untouched, to quarantine/<platform>/<batch_id>/ with its validation result. A batch of
    the same id quarantined before (a run key used again, an interval re-pulled) is kept beside it as
    <batch_id>~<when it was quarantined>: quarantined data is what an operator investigates, never overwritten."""
    dest = layout.quarantine / platform / batch_id
    if dest.exists():
        marker = dest / VALIDATION_FILE
        when = datetime.fromtimestamp((marker if marker.exists() else dest).stat().st_mtime, UTC)
        earlier = dest.with_name(f"{batch_id}~{when:%Y%m%dT%H%M%S.%fZ}")
        dest.rename(earlier)
        log.warning("an earlier quarantined batch %s of platform %s is kept as %s", batch_id, platform, earlier)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(batch_dir), str(dest))
    write_text_atomic(dest / VALIDATION_FILE, json.dumps(summary, indent=2))
    return dest


def validate_unified(
    tables: dict[str, Any],
    config: Any,
    layout: StateLayout,
    version: str,
    interactions_check: InteractionsCheck | None = None,
) -> dict[str, Any]:
    """The unified-table suite (referential integrity, types, shared vocabularies) on tables about to be published.

    `interactions_check`: how an engine that holds the interactions elsewhere (Spark) validates them with the
    interactions' expectations in this run's context (the other tables are pandas frames).
    Raises DataValidationError naming table, column, rule and example values; the caller then discards the
    version, so the current unified tables stay as they were.
    """
    from transfer_rec.schema.suites import REFERENCE_COLUMNS, build_unified_suites, reference_sets, referential_columns

    sets = reference_sets(tables)  # built once here, shared by every partition's worker

    def with_references(interactions: pd.DataFrame) -> pd.DataFrame:
        return referential_columns({**tables, "interactions": interactions}, sets)["interactions"]

    docs = layout.data_docs / data_docs_page("unified", version)
    scratch = _scratch_context(docs.parent)
    source = scratch.data_sources.add_pandas("unified")
    if interactions_check is None:
        # The referential columns are added where the interactions are validated (per partition, in the workers).
        shape = with_references(tables["interactions"].iloc[:0])
        types = None
    else:
        shape = pd.DataFrame(columns=[*tables["interactions"].columns, *REFERENCE_COLUMNS])
        types = interactions_check.types
    suites = build_unified_suites({**tables, "interactions": shape}, config, types)
    frames = {t: e for t, e in suites.items() if not (t == "interactions" and interactions_check is not None)}
    results = validate_frames(
        scratch,
        source,
        [
            Batch(f"unified.{version}.{table}", tables[table], expectations, "user_id", with_references)
            if table == "interactions"
            # what breaks a link id's rule may be the raw identity it should have hashed: no result keeps it
            else Batch(f"unified.{version}.{table}", tables[table], expectations, secret=frozenset({"link_id"}))
            for table, expectations in frames.items()
        ],
    )
    checked = dict(zip(frames, results))
    if interactions_check is not None:
        name = f"unified.{version}.interactions"
        run = interactions_check.run(scratch, sets, suites["interactions"], name)
        checked["interactions"] = store_results(scratch, [run])
    critical: list[str] = []
    for table in suites:
        critical += [_failure_line("unified", f"{table}.parquet", r) for r in _failed(checked[table])]
    scratch.build_data_docs(site_names=[DOCS_SITE])
    make_offline(docs.parent, layout.data_docs)
    summary = {"success": not critical, "critical": critical, "data_docs": str(docs)}
    if critical:
        raise DataValidationError(
            "unified tables failed validation; the previous version stays current:\n  - " + "\n  - ".join(critical)
        )
    return summary


class InteractionsCheck(Protocol):
    """An engine's validation of unified interactions it holds (not a pandas frame): `types` are the expected
    column types in its own type names; `run` validates them against `expectations` (with the referential columns
    of `schema.suites.REFERENCE_COLUMNS` added from `sets`) through a checkpoint of `scratch` named `name`, and
    returns the checkpoint's run results."""

    types: dict[str, str]

    def run(self, scratch: Any, sets: dict[str, Any], expectations: list[Any], name: str) -> list[tuple[Any, Any]]: ...
