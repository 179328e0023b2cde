"""The default Great Expectations suites for a platform's raw export tables, derived from its registry entry.

`transfer-rec suites` writes them into the GX context (great_expectations/expectations/*.json) for review;
the pipeline validates with whatever reviewed suite is stored there.
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations import expectations as gxe

from transfer_rec.config import PipelineConfig, PlatformConfig
from transfer_rec.schema.unified import GENDERS, ITEM_ID_COLUMNS, LINK_COLUMNS, TYPES, USER_COLUMNS
from transfer_rec.schema.values import is_member, value_set

# Columns that must never be read past landing (case-insensitive substrings of a column name).
FORBIDDEN_COLUMN_MARKERS = ("password", "passwd", "secret", "ssn", "credit_card")

# Timestamps are Unix seconds: from 1990-01-01 to 2100-01-01.
TIMESTAMP_RANGE = (631152000, 4102444800)

# [0-9], not \d: Python's \d (GX on pandas) also matches other scripts' digits, which Spark's does not
NUMERIC_PATTERN = r"^-?[0-9]+(?:\.[0-9]+)?$"


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
            # the split and retention order by it: a blank one would be a row silently dropped at unification
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=timestamp))
            suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column=timestamp, regex=NUMERIC_PATTERN))
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(
                    column=timestamp, min_value=TIMESTAMP_RANGE[0], max_value=TIMESTAMP_RANGE[1]
                )
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


def reference_sets(tables: dict) -> dict:
    """The value sets `referential_columns` looks interactions up in: item ids, user ids and the platforms that
    export profiles (build them once to check many partitions of the interactions)."""
    return {
        "items": value_set(tables["items"]["item_id"]),
        "users": value_set(tables["users"]["user_id"]),
        "profiled": value_set(tables["users"]["platform"]),
    }


# The columns `referential_columns` adds to the interactions: the key where it has no row in its table, else null.
REFERENCE_COLUMNS = ("item_id_not_in_items", "user_id_not_in_users")


def referential_columns(tables: dict, sets: dict | None = None) -> dict:
    """Interactions with, per key, a column holding the key where it has no row in its table (null otherwise), so
    the suite checks referential integrity with a null check whose failures show the dangling ids. (A value-set
    expectation over every user id would hold hundreds of thousands of values in its configuration.) `sets`: the
    tables' `reference_sets`, if already built."""
    sets = sets or reference_sets(tables)
    inter = tables["interactions"]
    checked = {"item_id_not_in_items": inter["item_id"].where(~is_member(inter["item_id"], sets["items"]))}
    # only platforms that export profiles can be checked: the others have no users table
    dangling = is_member(inter["platform"], sets["profiled"]) & ~is_member(inter["user_id"], sets["users"])
    checked["user_id_not_in_users"] = inter["user_id"].where(dangling)
    return {**tables, "interactions": inter.assign(**checked)}


def build_unified_suites(tables: dict, config: PipelineConfig, types: dict[str, str] | None = None) -> dict[str, list]:
    """Expectations on the unified tables (with `referential_columns` added): every interaction's user and item
    exist, column types, unique keys, and categorical values from the shared vocabularies. No raw identity column
    exists in the unified users (only the hashed link_id). `types`: the interactions' column types, if not pandas'."""
    interactions = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(tables["interactions"].columns), exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToBeNull(column="item_id_not_in_items"),
        gxe.ExpectColumnValuesToBeNull(column="user_id_not_in_users"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
    ]
    # column types in the engine's names (pandas dtypes by default; Spark's for Spark DataFrames)
    types = types or TYPES["interactions"]
    interactions += [gxe.ExpectColumnValuesToBeOfType(column=c, type_=t) for c, t in types.items()]
    users = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(USER_COLUMNS), exact_match=True),
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="link_id", regex=r"^[0-9a-f]{64}$"),
        gxe.ExpectColumnValuesToBeInSet(column="consent", value_set=[True, False]),
        gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=list(GENDERS), mostly=1.0),
        gxe.ExpectColumnValueLengthsToBeBetween(column="region", max_value=2),
    ]
    for column in ("age", "occupation"):
        if config.vocabularies.get(column):
            users.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=config.vocabularies[column]))
    items = [gxe.ExpectColumnValuesToBeUnique(column="item_id"), gxe.ExpectColumnValuesToNotBeNull(column="item_id")]
    suites = {"interactions": interactions, "users": users, "items": items}
    if "links" in tables:  # the link table holds hashes only: a raw identity there breaks the regex
        suites["links"] = [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(LINK_COLUMNS), exact_match=True),
            gxe.ExpectColumnValuesToNotBeNull(column="link_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="link_id", regex=r"^[0-9a-f]{64}$"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["platform", "user_id"]),
        ]
    if "item_ids" in tables:
        suites["item_ids"] = [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(ITEM_ID_COLUMNS), exact_match=True),
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ITEM_ID_COLUMNS),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["platform", "item_id"]),
        ]
    return suites
