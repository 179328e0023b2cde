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
from tasks.expectations import FORBIDDEN_COLUMN_MARKERS, build_suite, suite_name
from tasks.formats import FormatError, read_table
from tasks.links import data_docs_page
from tasks.state import StateLayout

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
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
            # Keep non-numeric text visible to the regex expectation, numbers to the range expectation.
            frame[native] = numeric.astype(object).where(numeric.notna(), raw)
    return frame


def _failure_line(platform: str, file: str, result: Any) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    details = result.result or {}
    examples = details.get("partial_unexpected_list") or details.get("details", {}).get("mismatched") or ""
    count = details.get("unexpected_count")
    observed = details.get("observed_value")
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
    # parallel validate tasks never write the same file.
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    scratch = gx.get_context(mode="ephemeral")
    scratch.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = scratch.data_sources.add_pandas(f"landing-{platform.name}")
    critical: list[str] = []
    warnings: list[str] = []
    tables: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for entry in manifest["files"]:
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
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.get(suite_name(platform.name, table))
        batch = batch_def.get_batch(batch_parameters={"dataframe": _typed_batch(frame, platform, table)})
        result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
        results[table] = result
        failed = [r for r in result.results if not r.success]
        for r in failed:
            line = _failure_line(platform.name, file, r)
            severity = getattr(r.expectation_config, "severity", "critical")
            (warnings if str(getattr(severity, "value", severity)) != "critical" else critical).append(line)
        tables[table] = {
            "file": file,
            "rows": int(len(frame)),
            "expectations": len(result.results),
            "failed": len(failed),
        }
    summary = {
        "platform": platform.name,
        "batch_id": manifest["batch_id"],
        "success": not critical,
        "tables": tables,
        "critical": critical,
        "warnings": warnings,
    }
    for line in warnings:
        log.warning("validation warning: %s", line)
    build_data_docs(layout, summary, results)
    if critical:
        quarantined = quarantine(batch_dir, layout, platform.name, manifest["batch_id"], summary)
        raise DataValidationError(
            f"platform {platform.name}: batch {manifest['batch_id']} failed validation and was moved to "
            f"{quarantined}:\n  - " + "\n  - ".join(critical)
        )
    (batch_dir / VALIDATION_FILE).write_text(json.dumps(summary, indent=2))
    log.info("platform %s: %d table(s) passed validation (%d warning(s))", platform.name, len(tables), len(warnings))
    return {**manifest, "validation": summary}


def quarantine(batch_dir: Path, layout: StateLayout, platform: str, batch_id: str, summary: dict[str, Any]) -> Path:
    """Move a landed batch, untouched, to quarantine/<platform>/<batch_id>/ with its validation result."""
    dest = layout.quarantine / platform / batch_id
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(batch_dir), str(dest))
    (dest / VALIDATION_FILE).write_text(json.dumps(summary, indent=2))
    return dest


def build_data_docs(layout: StateLayout, summary: dict[str, Any], results: dict[str, Any]) -> Path | None:
    """GX's validation-result pages for one batch (one per table) and an index, under data_docs/<platform>/<batch>/.

    Docs are for people: a rendering problem is logged and never fails validation.
    """
    try:
        from html import escape

        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        page = layout.data_docs / data_docs_page(summary["platform"], summary["batch_id"])
        page.parent.mkdir(parents=True, exist_ok=True)
        renderer, view = ValidationResultsPageRenderer(), DefaultJinjaPageView()
        rows = []
        for table, result in results.items():
            (page.parent / f"{table}.html").write_text(view.render(renderer.render(result)), encoding="utf-8")
            info = summary["tables"][table]
            status = "passed" if result.success else "FAILED"
            rows.append(f'<li><a href="{table}.html">{escape(table)}</a> ({escape(info["file"])}, '
                        f'{info["rows"]:,} rows): {status}, {info["failed"]} of {info["expectations"]} '
                        'expectations failed</li>')
        problems = "".join(f"<li>{escape(line)}</li>" for line in summary["critical"] + summary["warnings"])
        page.write_text(
            f"<!doctype html><meta charset='utf-8'><title>{escape(summary['platform'])} {escape(summary['batch_id'])}"
            f"</title><h1>Validation of {escape(summary['platform'])}, batch {escape(summary['batch_id'])}: "
            f"{'passed' if summary['success'] else 'FAILED'}</h1><ul>{''.join(rows)}</ul>"
            + (f"<h2>Failures and warnings</h2><ul>{problems}</ul>" if problems else ""), encoding="utf-8")
        log.info("Data Docs: %s", page)
        return page
    except Exception:  # noqa: BLE001 - see docstring
        log.warning("could not build Data Docs for %s batch %s", summary["platform"], summary["batch_id"],
                    exc_info=True)
        return None
