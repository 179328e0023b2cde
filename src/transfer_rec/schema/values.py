"""Set membership on millions of string keys (item and user ids), through pyarrow's hash sets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def arrow_strings(values: Any):
    """A pyarrow (chunked) array of large strings holding the values (zero-copy for pandas' pyarrow strings)."""
    import pyarrow as pa

    if isinstance(values, (pd.Series, pd.Index)):
        values = values.array
    if isinstance(values, pd.arrays.ArrowStringArray):
        array = pa.array(values)  # its own buffers
    else:
        array = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    return array if array.type == pa.large_string() else array.cast(pa.large_string())


def value_set(values: pd.Series | np.ndarray | Any):
    """The distinct values as a pyarrow array of large strings: the set `is_member` looks keys up in (build it once
    to look up many batches of keys in the same values)."""
    import pyarrow.compute as pc

    distinct = pc.unique(arrow_strings(values))
    return distinct.combine_chunks() if hasattr(distinct, "combine_chunks") else distinct


def is_member(keys: pd.Series, values: pd.Series | np.ndarray | Any) -> np.ndarray:
    """keys.isin(values) through a hash set (pyarrow), fast on millions of string keys; `values` may be a
    `value_set` already."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = values if isinstance(values, pa.Array) else value_set(values)
    return pc.is_in(arrow_strings(keys), value_set=values).to_numpy(zero_copy_only=False)
