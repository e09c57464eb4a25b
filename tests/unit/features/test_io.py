"""All-or-nothing Parquet writes (pipelines/storage.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.io import write_tables_atomic


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


def test_atomic_path_replaces_a_file_or_folder_only_when_the_block_succeeds(tmp_path):
    from mixrec.features.io import atomic_path, write_json_atomic

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
