"""Readers (no Ray): each format yields raw batches with the spec's columns; bad files are named."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.dataset import DatasetError, parse_dataset_spec
from mixrec.features.readers import parquet_batches, read_batches

SPEC = {"name": "toy", "format": "csv", "files": {"all": "events.csv"}, "label": "clicked", "event_key": "id",
        "categorical": ["color"], "dense": ["price"], "split": {"policy": "random"}}


def _rows(spec: dict, path) -> dict[str, list]:
    return pa.Table.from_batches(list(read_batches(parse_dataset_spec(spec), path))).to_pydict()


def test_csv_keeps_the_spec_columns_in_file_types(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("id,extra,color,price,clicked\n1,x,red,1.5,1\n2,y,,2,0\n")
    rows = _rows(SPEC, path)
    assert set(rows) == {"id", "color", "price", "clicked"}  # the unused column is not read on
    assert rows["color"] == ["red", None] and rows["price"] == [1.5, 2.0] and rows["clicked"] == [1.0, 0.0]


def test_libfm_keeps_each_fields_index_and_binarises_the_label(tmp_path):
    path = tmp_path / "f.libfm"
    path.write_text("-1 204:1 4798:1\n1 42:1 1572:1\n")
    spec = {"name": "f", "format": "libfm", "files": {"all": "f.libfm"}, "columns": ["label", "user", "item"],
            "categorical": ["user", "item"], "split": {"policy": "random"}}
    assert _rows(spec, path) == {"label": [0, 1], "user": [204, 42], "item": [4798, 1572]}


@pytest.mark.parametrize("content, match", [
    (None, "data file not found"),
    ("", "the file is empty"),
    ("id,color,price,clicked\n1,red,cheap,1\n", r"column 'price'"),
])
def test_unreadable_files_name_file_and_column(tmp_path, content, match):
    path = tmp_path / "events.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        _rows(SPEC, path)


def test_parquet_names_missing_columns(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), path)
    assert [b.num_rows for b in parquet_batches(path, ["id"])] == [2]
    with pytest.raises(DatasetError, match=r"e.parquet: missing column\(s\) \['color'\]"):
        list(parquet_batches(path, ["id", "color"]))
