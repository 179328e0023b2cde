"""Stage 2, validate: run the platform's Great Expectations suites on its landed batch; quarantine it on failure."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import REPO_ROOT, PlatformConfig
from tasks.expectations import FORBIDDEN_COLUMN_MARKERS, build_suite, native_column, suite_name
from tasks.formats import FormatError, read_table
from tasks.links import data_docs_page
from tasks.state import StateLayout

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
DOCS_SITE = "transfer_rec"
NUMERIC_COLUMNS = ("rating", "timestamp")


class DataValidationError(RuntimeError):
    """A batch failed a critical expectation; the message names platform, file, expectation and bad values."""


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


def _typed_batch(frame: pd.DataFrame, platform: PlatformConfig, table: str) -> pd.DataFrame:
    """Numeric native columns as numbers next to the raw text, so range checks run on numbers."""
    frame = frame.copy()
    for native, unified in platform.columns.get(table, {}).items():
        if unified in NUMERIC_COLUMNS and native in frame:
            raw = frame[native]
            numeric = pd.to_numeric(raw, errors="coerce")
            if numeric.notna().sum() == raw.notna().sum():
                frame[native] = numeric.astype("float64")   # all numbers: a numeric column (fast checks)
                continue
            # Keep non-numeric text visible to the regex expectation, numbers to the range expectation.
            frame[native] = numeric.astype(object).where(numeric.notna(), raw)
    return frame


def _failure_line(platform: str, file: str, result: Any) -> str:
    config = result.expectation_config
    kwargs = {k: (f"<{len(v)} values>" if isinstance(v, (list, tuple, set)) and len(v) > 10 else v)
              for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    details = result.result or {}
    examples = details.get("partial_unexpected_list") or details.get("details", {}).get("mismatched") or ""
    count = details.get("unexpected_count")
    observed = details.get("observed_value")
    observed = observed.item() if hasattr(observed, "item") else observed   # numpy scalars print as plain numbers
    what = f"{count} unexpected value(s), e.g. {examples[:5]!r}" if count else f"observed {observed!r}"
    if result.exception_info and result.exception_info.get("raised_exception"):
        what = f"could not be evaluated: {result.exception_info.get('exception_message')}"
    return f"platform {platform}, file {file}: {config.type}({kwargs}) failed: {what}"


def validate_batch(manifest: dict[str, Any], platform: PlatformConfig, layout: StateLayout,
                   context_root: Path | None = None) -> dict[str, Any]:
    """Validate every landed file of a pull manifest; on a critical failure move the batch to quarantine and raise."""
    batch_dir = Path(manifest["batch_dir"])
    context = gx_context(context_root)
    ensure_suites(context, platform)
    # Batches are registered in an in-memory context: validating never rewrites the committed GX config, and
    # parallel validate tasks never write the same file. Its checkpoints render Data Docs under the state folder.
    docs = layout.data_docs / data_docs_page(platform.name, manifest["batch_id"])
    scratch = _scratch_context(docs.parent)
    source = scratch.data_sources.add_pandas(f"landing-{platform.name}")
    critical: list[str] = []
    warnings: list[str] = []
    tables: dict[str, Any] = {}
    for index, entry in enumerate(manifest["files"]):
        table, file = entry["table"], entry["file"]
        path = batch_dir / file
        try:
            frame = read_table(path, platform.format, platform.delimiter)
        except FormatError as exc:
            critical.append(f"platform {platform.name}, file {file}: cannot be read: {exc}")
            continue
        forbidden = [c for c in frame.columns if any(m in c.lower() for m in FORBIDDEN_COLUMN_MARKERS)]
        if forbidden:
            critical.append(f"platform {platform.name}, file {file}: forbidden PII column(s) {forbidden} "
                            "(rule: no password/secret columns may be exported)")
        typed = _typed_batch(frame, platform, table)
        expectations = context.suites.get(suite_name(platform.name, table)).expectations
        expectations = expectations + drift_expectations(platform, table, previous_stats(layout, platform, table,
                                                                                         manifest["batch_id"]))
        result = _run_checkpoint(scratch, source, expectations,
                                 f"{platform.name}.{manifest['batch_id']}.{index}.{file.replace('/', '_')}", typed)
        failed = [r for r in result.results if not r.success]
        for r in failed:
            line = _failure_line(platform.name, file, r)
            severity = getattr(r.expectation_config, "severity", "critical")
            (warnings if str(getattr(severity, "value", severity)) != "critical" else critical).append(line)
        tables[file] = {
            "table": table,
            "rows": int(len(frame)),
            "expectations": len(result.results),
            "failed": len(failed),
            **batch_stats(typed, platform, table),
        }
    summary = {
        "platform": platform.name,
        "batch_id": manifest["batch_id"],
        "success": not critical,
        "tables": tables,
        "critical": critical,
        "warnings": warnings,
        "data_docs": str(docs),
    }
    log.info("platform %s: Data Docs at %s", platform.name, summary["data_docs"])
    for line in warnings:
        log.warning("validation warning: %s", line)
    if critical:
        quarantined = quarantine(batch_dir, layout, platform.name, manifest["batch_id"], summary)
        raise DataValidationError(
            f"platform {platform.name}: batch {manifest['batch_id']} failed validation and was moved to "
            f"{quarantined}:\n  - " + "\n  - ".join(critical)
        )
    (batch_dir / VALIDATION_FILE).write_text(json.dumps(summary, indent=2))
    log.info("platform %s: %d table(s) passed validation (%d warning(s))", platform.name, len(tables), len(warnings))
    return {**manifest, "validation": summary}


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
        if validation.parent.name == batch_id:
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
        checks.append(gxe.ExpectTableRowCountToBeBetween(min_value=int(rows / drift.volume_factor),
                                                         max_value=int(rows * drift.volume_factor) + 1))
    rating = native_column(platform, table, "rating")
    if rating and "rating_mean" in previous and drift.rating_shift:
        low, high = platform.rating_scale
        shift = drift.rating_shift * (high - low)
        checks.append(gxe.ExpectColumnMeanToBeBetween(column=rating, min_value=previous["rating_mean"] - shift,
                                                      max_value=previous["rating_mean"] + shift))
    return checks


def _scratch_context(docs_dir: Path):
    """An in-memory GX context whose Data Docs site is a folder of the state (one site per platform)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    scratch = gx.get_context(mode="ephemeral")
    scratch.variables.progress_bars = ProgressBarsConfig(globally=False)
    scratch.add_data_docs_site(site_name=DOCS_SITE, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return scratch


def _run_checkpoint(scratch: Any, source: Any, expectations: list[Any], name: str, frame: pd.DataFrame) -> Any:
    """Validate a frame against expectations through a checkpoint that updates the Data Docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    suite = scratch.suites.add(gx.ExpectationSuite(name=name, expectations=[
        e.__class__(**e.configuration.kwargs, severity=e.severity) for e in expectations]))
    batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    definition = scratch.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    checkpoint = scratch.checkpoints.add(gx.Checkpoint(
        name=name, validation_definitions=[definition],
        actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return next(iter(result.run_results.values()))


def quarantine(batch_dir: Path, layout: StateLayout, platform: str, batch_id: str, summary: dict[str, Any]) -> Path:
    """Move a landed batch, untouched, to quarantine/<platform>/<batch_id>/ with its validation result."""
    dest = layout.quarantine / platform / batch_id
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(batch_dir), str(dest))
    (dest / VALIDATION_FILE).write_text(json.dumps(summary, indent=2))
    return dest


def validate_unified(tables: dict[str, pd.DataFrame], config: Any, layout: StateLayout, version: str) -> dict[str, Any]:
    """The unified-table suite (referential integrity, types, shared vocabularies) on tables about to be published.

    Raises DataValidationError naming table, column, rule and example values; the caller then discards the
    version, so the current unified tables stay as they were.
    """
    from tasks.expectations import build_unified_suites, referential_columns

    tables = referential_columns(tables)
    docs = layout.data_docs / data_docs_page("unified", version)
    scratch = _scratch_context(docs.parent)
    source = scratch.data_sources.add_pandas("unified")
    critical: list[str] = []
    for table, expectations in build_unified_suites(tables, config).items():
        result = _run_checkpoint(scratch, source, expectations, f"unified.{version}.{table}", tables[table])
        critical += [_failure_line("unified", f"{table}.parquet", r) for r in result.results if not r.success]
    summary = {"success": not critical, "critical": critical,
               "data_docs": str(docs)}
    if critical:
        raise DataValidationError("unified tables failed validation; the previous version stays current:\n  - "
                                  + "\n  - ".join(critical))
    return summary
