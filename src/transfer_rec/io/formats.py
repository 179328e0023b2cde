"""Readers for the export formats platforms use; they return the native columns, untouched."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class FormatError(ValueError):
    """A file cannot be parsed as its configured format."""


def read_table(path: Path, fmt: str, delimiter: str | None = None, categorical: Collection[str] = ()) -> pd.DataFrame:
    """Read one exported table with its native column names: text formats as text (typed later), Parquet with its
    numeric columns as numbers and the others as text.

    recbole: RecBole atomic files (tab-separated, header cells `name:type`); csv/tsv: a header row and a delimiter;
    parquet; jsonl: one JSON object per line. Text columns named in `categorical` come as pandas categoricals of
    that text (the same values; from Parquet read straight from its dictionary pages).
    """
    if fmt == "parquet":
        frame = _read_parquet(path, categorical)
        # Numbers stay numbers (the file is typed); everything else becomes text with nulls kept.
        for column in frame.columns:
            values = frame[column]
            if isinstance(values.dtype, pd.CategoricalDtype):
                continue
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                frame[column] = values.astype(str).where(values.notna())
                if column in categorical:
                    frame[column] = frame[column].astype("category")
        return frame
    return _as_categorical(_read_text(path, fmt, delimiter), categorical)


def as_text(values: pd.Series) -> pd.Series:
    """A column as text, nulls kept, whole numbers written as integers: a Parquet integer column with a null comes back
    as float64, and "4.0" would match no value map written for the file's 4 (Spark reads the same column as 4)."""
    if pd.api.types.is_float_dtype(values):
        whole = values.notna() & np.isfinite(values) & (values == np.floor(values))
        text = values.astype(str).astype(object)
        text[whole] = values[whole].astype("int64").astype(str)
        return text.where(values.notna())
    return values.astype(str).where(values.notna())


def to_numbers(values: pd.Series) -> pd.Series:
    """pd.to_numeric(values, errors="coerce"), with fast paths for what exports mostly hold: a numeric column as it is,
    and text of whole numbers without gaps parsed by pyarrow (which refuses everything to_numeric would read
    differently: signs, spaces, decimals, exponents, out-of-range values)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    if isinstance(values.array, pd.arrays.ArrowStringArray) and len(values) and not values.isna().any():
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            parsed = pc.cast(pa.array(values.array), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        else:
            return pd.Series(parsed.to_numpy(), index=values.index, name=values.name)
    return pd.to_numeric(values, errors="coerce")


def _read_parquet(path: Path, categorical: Collection[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise FormatError(f"{path}: not a readable Parquet file: {exc}") from exc
    refuse_repeated(path, names)
    try:
        dictionary = (
            [
                f.name
                for f in pq.read_schema(path)
                if f.name in categorical and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
            ]
            if categorical
            else []
        )
        return pd.read_parquet(path, read_dictionary=dictionary) if dictionary else pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise FormatError(f"{path}: not a readable Parquet file: {exc}") from exc


def _as_categorical(frame: pd.DataFrame, columns: Collection[str]) -> pd.DataFrame:
    converted = {c: frame[c].astype("category") for c in columns if c in frame}
    return frame.assign(**converted) if converted else frame


def _read_text(path: Path, fmt: str, delimiter: str | None) -> pd.DataFrame:
    if fmt == "jsonl":
        return _read_jsonl(path)
    sep = {"recbole": "\t", "tsv": "\t", "csv": ","}.get(fmt)
    if sep is None:
        raise FormatError(f"{path}: unsupported format {fmt!r}")
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter or sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            quoting=3 if fmt == "recbole" else 0,
        )
    except UnicodeDecodeError as exc:
        check_text(path, fmt)  # names the file's byte (pandas' offset is one within its read buffer)
        raise FormatError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    except pd.errors.ParserError as exc:
        raise FormatError(f"{path}: malformed {fmt} file: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise FormatError(f"{path}: the file is empty (not even a header)") from exc
    header = header_names(path, fmt, delimiter)
    refuse_repeated(path, header)
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas takes a first data row longer than the header as "the first columns are the index" and
        # shifts every column by one: user ids read as item ids, ratings lost. Spark refuses such a file too.
        extra = frame.index.nlevels  # pandas makes one index level of each field past the header
        raise FormatError(
            f"{path}: its first data row has {len(header) + extra} fields, {extra} more than the header's "
            f"{len(header)} ({', '.join(header)}): a delimiter at the end of each line, or a delimiter inside a "
            "value that is not quoted; remove the trailing delimiter or quote the value"
        )
    if fmt == "recbole":
        frame.columns = [str(c).split(":", 1)[0] for c in frame.columns]
    return frame


def _json_text(value: Any) -> str | None:
    """A JSON value as the text the file gives it (numbers were parsed as their own text), as Spark's
    primitivesAsString reads it: true/false for booleans (nested values are JSON text already)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line, every value as its text. Numbers keep the digits the file has: a reader that
    types them makes a column with a missing value floats, so occupation 4 became "4.0" (outside its value map) and
    a long id lost its last digits."""
    decoder = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)
    records = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = decoder.decode(line)
                except json.JSONDecodeError as exc:
                    raise FormatError(f"{path}: malformed JSON lines: line {number}: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise FormatError(f"{path}: malformed JSON lines: line {number} is not a JSON object")
                nested = [key for key, value in record.items() if isinstance(value, dict | list)]
                if nested:  # as JSON text, numbers as numbers (rare: decoded a second time, typed)
                    typed = json.loads(line)
                    record.update({key: json.dumps(typed[key], ensure_ascii=False) for key in nested})
                records.append(record)
    except UnicodeDecodeError as exc:
        check_text(path, "jsonl")  # names the file's byte (the decoder's offset is one within its read buffer)
        raise FormatError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    if not records and path.stat().st_size == 0:  # as check_text refuses it for Spark
        raise FormatError(f"{path}: the file is empty")
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame = frame.astype(object).where(frame.notna(), None)
    for column in frame.columns:  # numbers are text already; booleans and nested values are the rare rest
        try:
            values = pd.unique(frame[column])
        except TypeError:  # a nested object or list: unhashable
            values = [{}]
        if any(v is not None and not isinstance(v, str) for v in values):
            frame[column] = frame[column].map(_json_text, na_action="ignore")
    return frame.astype("str")  # text with missing values, as the delimited readers' dtype=str gives it


def header_names(path: Path, fmt: str, delimiter: str | None = None) -> list[str]:
    """A delimited text file's column names as its header line gives them (RecBole's without their `:type`): the
    readers rename a repeated name ("rating.1", "rating2"), so a repeat is only seen here."""
    sep = delimiter or {"recbole": "\t", "tsv": "\t", "csv": ","}[fmt]
    # as the readers take it: a byte-order mark dropped, blank lines before the header skipped
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            if len(sep) == 1:
                quoting = csv.QUOTE_NONE if fmt == "recbole" else csv.QUOTE_MINIMAL
                rows = csv.reader(fh, delimiter=sep, quoting=quoting)
                header = next((row for row in rows if any(cell.strip() for cell in row)), [])
            else:  # a multi-character delimiter ("::") is a plain split, as pandas' python engine reads it
                header = next((line.rstrip("\r\n").split(sep) for line in fh if line.strip()), [])
    except (UnicodeDecodeError, csv.Error) as exc:  # Spark asks before it reads: the file's fault, named as such
        raise FormatError(f"{path}: cannot read its header: {exc}") from exc
    return [h.split(":", 1)[0] if fmt == "recbole" else h for h in header]


def refuse_repeated(path: Path, names: list[str]) -> None:
    """A header that names a column twice: which of the two is the data is anyone's guess, so neither is taken."""
    repeated = sorted({n for n in names if n.strip() and names.count(n) > 1})  # unnamed columns are the readers' own
    if repeated:
        raise FormatError(f"{path}: the header names column(s) {repeated} more than once")
    # Great Expectations finds a suite's column by its case-folded name, first match in file order (and Spark's SQL
    # resolves names regardless of case): with `TS` before `ts` the suite would check the column unify does not read
    folded: dict[str, list[str]] = {}
    for name in names:
        if name.strip():
            folded.setdefault(name.casefold(), []).append(name)
    clashing = sorted(n for group in folded.values() if len(group) > 1 for n in group)
    if clashing:
        raise FormatError(
            f"{path}: the header names columns {clashing} that differ only in case; validation matches column names "
            "regardless of case and could not tell them apart (rename one in the export)"
        )


# What a compressed file starts with: read as text it is "not valid UTF-8 at byte 1" and its line count is wrong.
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz"}


def refuse_compressed(path: Path, fmt: str) -> None:
    """A text export must be plain text: a compressed file under a plain name is refused, saying so."""
    if fmt == "parquet":
        return
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            raise FormatError(
                f"{path}: the file is {kind}-compressed, but the platform's format is {fmt} (plain text); "
                "decompress it before export"
            )


def check_text(path: Path, fmt: str) -> None:
    """Refuse what `read_table` refuses before parsing a text export, for readers that would not (Spark's replace
    invalid bytes and read an empty file as no rows): a compressed file, an empty one, bytes that are not UTF-8.
    Streamed in blocks, so a file larger than memory is checked."""
    if fmt == "parquet":
        return
    refuse_compressed(path, fmt)
    if path.stat().st_size == 0:
        raise FormatError(f"{path}: the file is empty (not even a header)")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes handed to the decoder before this block
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            carried = len(decoder.getstate()[0])  # a character's first bytes left over from the block before
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise FormatError(f"{path}: not valid UTF-8 at byte {offset - carried + exc.start}") from exc
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not valid UTF-8 at byte {offset - len(exc.object) + exc.start}") from exc


def count_rows(path: Path, fmt: str = "csv") -> int:
    """Data rows of an export file: Parquet from its metadata; text formats streamed line by line."""
    refuse_compressed(path, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:
            return 0
    if fmt == "jsonl":
        return sum(1 for line in open(path, "rb") if line.strip())
    return _count_lines_after_header(path)


def _count_lines_after_header(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)
