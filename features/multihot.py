"""Multi-hot values in their one canonical form: a list of strings per row.

The adapters write multi-hot columns this way (Parquet ``list<string>``, which Feast stores as
``Array(String)``), and the preprocessing reads whatever reaches it (a list column from Feast or Ray Data, a
delimited string from a request or a CSV) through the same function, so a list ``[12, 7]``, a list
``["12", "7"]`` and the string ``"12|7"`` are the same values everywhere. Vectorized with pyarrow.compute:
no Python loop over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

VALUE_LISTS = pa.list_(pa.string())


def _as_strings(values: pa.Array) -> pa.Array:
    """Flat values -> strings: integers (and integral floats) without a decimal point, text trimmed."""
    t = values.type
    if pa.types.is_dictionary(t):
        values, t = values.cast(t.value_type), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.utf8_trim_whitespace(values.cast(pa.string()))
    if pa.types.is_floating(t):
        x = values.to_numpy(zero_copy_only=False)
        finite = x[np.isfinite(x)]
        if not np.array_equal(finite, np.round(finite)):
            raise ValueError("values must be integers or strings, found fractional numbers")
        values = pc.cast(values, pa.int64())
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.string())
    raise ValueError(f"values must be integers or strings, found {t}")


def to_value_lists(array: pa.Array | pa.ChunkedArray, separator: str = "|") -> pa.ListArray:
    """A column of a multi-hot field -> ``list<string>`` (n rows; a null row stays null).

    Accepted: list columns (of strings or integers), strings holding the values joined by ``separator``,
    and plain integers or strings (a one-value list). Empty and null values are dropped from a row's list,
    so ``""`` and ``"|"`` are empty lists, not lists of one empty value. Raises ValueError for other types.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    t, n = array.type, len(array)
    if pa.types.is_null(t):
        return pa.nulls(n, VALUE_LISTS)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        lists = pc.split_pattern(array.cast(pa.string()), separator)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lists = array
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_dictionary(t):
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), array.filter(pa.array(valid)), mask=array.is_null())
    else:
        raise ValueError(f"a multi-hot column must hold lists or {separator!r}-delimited strings, found {t}")
    values = _as_strings(pc.list_flatten(lists))
    rows = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.fill_null(pc.not_equal(values, ""), False).to_numpy(zero_copy_only=False)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows[keep], minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(keep)), mask=lists.is_null())


def series_value_lists(values: pd.Series, separator: str) -> pa.ListArray:
    """:func:`to_value_lists` of a pandas column (object columns of lists, arrays or strings, Arrow-backed
    columns); raises ValueError naming the problem when the column mixes lists and strings."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"a multi-hot column must hold lists or delimited strings: {err}") from None
    return to_value_lists(array, separator)


def plain_list_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Arrow-backed list columns (what Ray Data's ``to_pandas`` gives for them) as object columns of arrays:
    pandas cannot read back the dtype name pyarrow records for them in a Parquet file's pandas metadata
    (``list<element: string>[pyarrow]``), and object columns are what MLflow examples and readers expect."""
    nested = [c for c, t in frame.dtypes.items()
              if isinstance(t, pd.ArrowDtype) and pa.types.is_nested(t.pyarrow_dtype)]
    if not nested:
        return frame
    # through pyarrow, not astype(object): a null must become None (MLflow's schema check rejects pd.NA)
    return frame.assign(**{c: pd.Series(pa.array(frame[c]).to_pandas().to_numpy(), index=frame.index)
                           for c in nested})


def flat_values(lists: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values as an object array of str, the row of each value) of a ``list<string>`` column, in order."""
    return (pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(object),
            pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64))


def place(ids: np.ndarray, rows: np.ndarray, n: int, max_len: int, keep: str) -> np.ndarray:
    """Ids of flat values (``rows`` ascending, as :func:`flat_values` gives them) -> ``[n, max_len]`` int64,
    each row's ids left-aligned in order and padded with 0. A row with more than ``max_len`` values keeps its
    first or its last ``max_len`` (``keep``); every value counts, known or not."""
    counts = np.bincount(rows, minlength=n)
    starts = np.cumsum(counts) - counts
    col = np.arange(len(rows)) - starts[rows]  # position of each value in its row
    if keep == "last":
        col = col - np.maximum(counts[rows] - max_len, 0)
    ok = (col >= 0) & (col < max_len)
    out = np.zeros((n, max_len), dtype=np.int64)
    out[rows[ok], col[ok]] = ids[ok]
    return out
