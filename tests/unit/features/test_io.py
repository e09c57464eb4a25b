"""All-or-nothing writes (features/io.py)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.io import (
    AtomicParquetWriter,
    atomic_path,
    write_frame_atomic,
    write_json_atomic,
    write_tables_atomic,
    write_text_atomic,
)


def test_batches_and_tables_land_in_one_file_cast_to_the_first_schema(tmp_path):
    path = tmp_path / "q" / "rows.parquet"
    parts = [pa.record_batch({"a": [1, 2]}), pa.table({"a": pa.array([], pa.int64())}),
             pa.table({"a": pa.array([3], pa.int32())})]
    assert write_tables_atomic(parts, path) == 3
    table = pq.read_table(path)
    assert table.column("a").to_pylist() == [1, 2, 3] and table.schema.field("a").type == pa.int64()
    assert [p.name for p in path.parent.iterdir()] == ["rows.parquet"]  # no temporary file left


def test_no_rows_leaves_no_file_and_removes_an_earlier_runs(tmp_path):
    path = tmp_path / "rows.parquet"
    write_tables_atomic([pa.table({"a": [1]})], path)
    assert write_tables_atomic([pa.table({"a": pa.array([], pa.int64())})], path) == 0
    assert not path.exists()


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    path = tmp_path / "rows.parquet"
    write_tables_atomic([pa.table({"a": [1]})], path)

    def parts():
        yield pa.table({"a": [2]})
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_tables_atomic(parts(), path)
    assert pq.read_table(path).column("a").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]


def test_text_and_frame_writes_replace_whole_and_leave_no_temporary(tmp_path):
    path = write_text_atomic("first", tmp_path / "deep" / "a.txt")
    write_text_atomic("second", path)
    assert path.read_text() == "second"
    frame = write_frame_atomic(pd.DataFrame({"a": pd.Series([], dtype="int64")}), tmp_path / "deep" / "f.parquet")
    assert pq.read_table(frame).schema.field("a").type == pa.int64()  # no rows: the schema is still written
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt", "f.parquet"]


def test_atomic_path_keeps_the_previous_file_when_the_block_fails(tmp_path):
    path = write_text_atomic("kept", tmp_path / "a.txt")
    with pytest.raises(RuntimeError, match="half-way"), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("half-way")
    assert path.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_streaming_writer_raises_when_a_table_does_not_cast(tmp_path):
    path = tmp_path / "rows.parquet"
    with pytest.raises((pa.ArrowInvalid, ValueError)), AtomicParquetWriter(path) as sink:
        sink.write(pa.table({"a": [1]}))
        sink.write(pa.table({"a": ["not a number"]}))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_a_file_or_folder_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "out" / "state.json"
    write_json_atomic({"a": 1}, path)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == '{\n  "a": 1\n}' and sorted(path.parent.iterdir()) == [path]
    folder = tmp_path / "shards"
    for n in (1, 2):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / f"part-{n}").write_text(str(n))
    assert [p.name for p in folder.iterdir()] == ["part-2"] and sorted(tmp_path.iterdir()) == [tmp_path / "out", folder]
