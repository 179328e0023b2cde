"""The default Great Expectations suites for a platform's raw export tables, derived from its registry entry.

`python -m tasks.cli suites` writes them into the GX context (great_expectations/expectations/*.json) for review;
the pipeline validates with whatever reviewed suite is stored there.
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations import expectations as gxe

from tasks.config import PlatformConfig

# Columns that must never be read past landing (case-insensitive substrings of a column name).
FORBIDDEN_COLUMN_MARKERS = ("password", "passwd", "secret", "ssn", "credit_card")

# Timestamps are Unix seconds: from 1990-01-01 to 2100-01-01.
TIMESTAMP_RANGE = (631152000, 4102444800)

NUMERIC_PATTERN = r"^-?\d+(?:\.\d+)?$"


def suite_name(platform: str, table: str) -> str:
    return f"{platform}.{table}"


def native_column(platform: PlatformConfig, table: str, unified: str) -> str | None:
    """The platform's native column that maps to a unified column, if any."""
    for native, target in platform.columns.get(table, {}).items():
        if target == unified:
            return native
    return None


def build_suite(platform: PlatformConfig, table: str) -> gx.ExpectationSuite:
    """Expectations on one raw table: required columns, non-null ids, rating scale, timestamps, duplicates."""
    suite = gx.ExpectationSuite(name=suite_name(platform.name, table))
    mapped = list(platform.columns.get(table, {}))
    suite.add_expectation(gxe.ExpectTableColumnsToMatchSet(column_set=mapped, exact_match=False))
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    for unified in ("user_id", "item_id"):
        native = native_column(platform, table, unified)
        if native:
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=native))
    if table == "interactions":
        rating = native_column(platform, table, "rating")
        if rating:
            low, high = platform.rating_scale
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=rating))
            suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column=rating, regex=NUMERIC_PATTERN))
            suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=rating, min_value=low, max_value=high))
        timestamp = native_column(platform, table, "timestamp")
        if timestamp:
            suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column=timestamp, regex=NUMERIC_PATTERN))
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(column=timestamp, min_value=TIMESTAMP_RANGE[0],
                                                  max_value=TIMESTAMP_RANGE[1])
            )
        keys = [c for c in (native_column(platform, table, u) for u in ("user_id", "item_id", "timestamp")) if c]
        suite.add_expectation(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=keys, severity=platform.duplicate_interactions)
        )
    elif table in ("users", "items"):
        key = native_column(platform, table, "user_id" if table == "users" else "item_id")
        # Duplicate profile rows are suspicious but the unifier keeps the first: a warning, not a stop.
        suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column=key, severity="warning"))
    return suite
