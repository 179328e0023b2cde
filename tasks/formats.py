"""Readers for the export formats platforms use; they return the native columns, untouched."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class FormatError(ValueError):
    """A file cannot be parsed as its configured format."""


def read_table(path: Path, fmt: str, delimiter: str | None = None) -> pd.DataFrame:
    """Read one exported table with its native column names: text formats as text (typed later), Parquet with its
    numeric columns as numbers and the others as text.

    recbole: RecBole atomic files (tab-separated, header cells `name:type`); csv/tsv: a header row and a delimiter;
    parquet; jsonl: one JSON object per line.
    """
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise FormatError(f"{path}: not a readable Parquet file: {exc}") from exc
        # Numbers stay numbers (the file is typed); everything else becomes text with nulls kept.
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
                frame[column] = frame[column].astype(str).where(frame[column].notna())
        return frame
    if fmt == "jsonl":
        try:
            return pd.read_json(path, lines=True, dtype=False).astype(object).where(lambda f: f.notna(), None) \
                .map(lambda v: None if v is None else str(v))
        except ValueError as exc:
            raise FormatError(f"{path}: malformed JSON lines: {exc}") from exc
    sep = {"recbole": "\t", "tsv": "\t", "csv": ","}.get(fmt)
    if sep is None:
        raise FormatError(f"{path}: unsupported format {fmt!r}")
    try:
        frame = pd.read_csv(path, sep=delimiter or sep, dtype=str, keep_default_na=False, na_values=[""],
                            encoding="utf-8", quoting=3 if fmt == "recbole" else 0)
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    except pd.errors.ParserError as exc:
        raise FormatError(f"{path}: malformed {fmt} file: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise FormatError(f"{path}: the file is empty (not even a header)") from exc
    if fmt == "recbole":
        frame.columns = [str(c).split(":", 1)[0] for c in frame.columns]
    return frame


def count_rows(path: Path, fmt: str = "csv") -> int:
    """Data rows of an export file: Parquet from its metadata; text formats streamed line by line."""
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
