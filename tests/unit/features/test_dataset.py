"""Dataset schema files and adapters (no Ray): validation names every bad field, each format reads into the
canonical layout, bad files fail with the file and column named and leave nothing behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.adapters import write_sources
from mixrec.features.dataset import ROW_ID, SPLIT_COLUMN, DatasetError, load_dataset_spec, parse_dataset_spec
from mixrec.features.splits import split_at_random
from mixrec.pipelines.preprocess import DenseStats, Preprocessor, hash_to_buckets

CSV_SPEC = {
    "name": "toy", "format": "csv", "files": {"all": "events.csv"}, "label": "clicked",
    "event_key": "id", "timestamp": "ts", "entities": {"user": {"key": "uid"}},
    "categorical": ["uid", "color"], "dense": [{"name": "price", "log1p": True}],
    "split": {"policy": "random", "seed": 3, "valid_fraction": 0.2, "test_fraction": 0.2},
}
TOY = pd.DataFrame({"id": range(6), "ts": pd.date_range("2026-01-01", periods=6, freq="h").astype(str),
                    "uid": [1, 2, 3, 1, 2, 3], "color": ["red", "blue", None, "red", "red", "green"],
                    "price": [1.5, 2.0, None, 4.0, 5.0, 6.0], "clicked": [0, 1, 0, 1, 0, 1]})


def _write(tmp_path, spec: dict, text: str | None = None, frame: pd.DataFrame | None = None, sep: str = ","):
    path = tmp_path / next(iter(spec["files"].values()))
    if frame is not None:
        frame.to_csv(path, index=False, sep=sep)
    else:
        path.write_text(text or "")
    return parse_dataset_spec(spec)


def test_schema_errors_name_each_bad_field():
    bad = {**CSV_SPEC, "format": "xlsx", "split": {"policy": "given"},
           "categorical": ["uid", {"name": "color", "source": "shop"}], "dense": ["uid"]}
    with pytest.raises(DatasetError) as err:
        parse_dataset_spec(bad, "bad.yaml")
    text = str(err.value)
    assert "invalid dataset schema bad.yaml" in text and "format" in text
    bad.pop("format")
    with pytest.raises(DatasetError) as err:
        parse_dataset_spec({**bad, "format": "csv"})
    text = str(err.value)
    assert "declared twice: ['uid']" in text
    assert "categorical.color.source: 'shop'" in text
    assert "split policy `given` needs exactly ['train', 'valid', 'test']" in text


def test_shipped_dataset_schemas_load():
    for name in ("criteo", "frappe", "frappe_libfm"):
        schema = load_dataset_spec(f"configs/datasets/{name}.yaml").to_schema()
        assert schema.categorical and schema.label == "label"
    criteo = load_dataset_spec("configs/datasets/criteo.yaml").to_schema()
    assert criteo.entity_sources == ("row",) and criteo.user_key is None and criteo.event_key == ROW_ID
    frappe = load_dataset_spec("configs/datasets/frappe.yaml").to_schema()
    assert {f.name for f in frappe.from_source("request")} == {"user", "item"}


def test_csv_reads_into_the_canonical_layout_with_a_seeded_split(tmp_path):
    spec = _write(tmp_path, CSV_SPEC, frame=TOY)
    info = write_sources(spec, tmp_path, tmp_path / "out")
    table = pq.read_table(info.events)
    assert info.rows == 6 and sum(info.split_rows.values()) == 6
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("price").type == pa.float32() and table.schema.field("uid").type == pa.int64()
    assert table.column("color").to_pylist() == ["red", "blue", None, "red", "red", "green"]
    expected = split_at_random(np.arange(6), 3, 0.2, 0.2)
    assert table.column(SPLIT_COLUMN).to_pylist() == list(expected)


def test_criteo_tsv_and_libfm(tmp_path):
    row = ["1", "5", "", "-1"] + ["0"] * 10 + ["8cf07265", ""] + ["a"] * 24
    (tmp_path / "day.tsv").write_text("\t".join(row) + "\n" + "\t".join(["0"] + row[1:]) + "\n")
    spec = parse_dataset_spec({"name": "c", "format": "criteo_tsv", "files": {"all": "day.tsv"},
                               "categorical": ["C1", "C2"], "dense": [{"name": "I1", "log1p": True}, "I2"],
                               "split": {"policy": "random"}})
    t = pq.read_table(write_sources(spec, tmp_path, tmp_path / "c").events).to_pandas()
    assert t["label"].tolist() == [1, 0] and t["I1"].tolist() == [5.0, 5.0] and t["I2"].isna().all()
    assert t["C1"].tolist() == ["8cf07265"] * 2 and t["C2"].isna().all()
    assert t[ROW_ID].tolist() == [0, 1] and t["_event_timestamp"].is_monotonic_increasing
    (tmp_path / "f.libfm").write_text("-1 204:1 4798:1\r\n1 42:1 1572:1\r\n")
    spec = parse_dataset_spec({"name": "f", "format": "libfm", "files": {"all": "f.libfm"},
                               "columns": ["label", "user", "item"], "categorical": ["user", "item"],
                               "split": {"policy": "random"}})
    t = pq.read_table(write_sources(spec, tmp_path, tmp_path / "f").events).to_pandas()
    assert t[["label", "user", "item"]].to_numpy().tolist() == [[0, 204, 4798], [1, 42, 1572]]


@pytest.mark.parametrize("case", ["wrong_delimiter", "missing_column", "non_numeric_dense", "empty", "truncated_parquet",
                                  "headerless_wrong_delimiter"])
def test_bad_files_name_file_and_column_and_leave_nothing(tmp_path, case):
    spec = dict(CSV_SPEC)
    if case == "wrong_delimiter":
        parsed, match = _write(tmp_path, spec, frame=TOY, sep=";"), r"events.csv: missing column\(s\) \['clicked'"
    elif case == "missing_column":
        parsed, match = _write(tmp_path, spec, frame=TOY.drop(columns=["color"])), r"events.csv: missing column\(s\) \['color'\]"
    elif case == "non_numeric_dense":
        parsed, match = _write(tmp_path, spec, frame=TOY.assign(price=["1", "2", "cheap", "4", "5", "6"])), \
            r"events.csv: column 'price'.*cheap"
    elif case == "empty":
        parsed, match = _write(tmp_path, spec, text=""), "events.csv: the file is empty"
    elif case == "truncated_parquet":
        spec = {**spec, "format": "parquet", "files": {"all": "events.parquet"}}
        pq.write_table(pa.Table.from_pandas(TOY), tmp_path / "full.parquet")
        data = (tmp_path / "full.parquet").read_bytes()
        (tmp_path / "events.parquet").write_bytes(data[: len(data) // 2])
        parsed, match = parse_dataset_spec(spec), "events.parquet: not a readable Parquet file"
    else:
        spec = {**spec, "header": False, "columns": list(TOY.columns)}
        parsed = _write(tmp_path, spec, text="0;2026-01-01;1;red;1.5;0\n")
        match = r"events.csv: .*(Expected 6 columns|missing column)"
    with pytest.raises(DatasetError, match=match):
        write_sources(parsed, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_a_bad_second_file_leaves_no_partial_output(tmp_path):
    spec = {**CSV_SPEC, "files": {"train": "a.csv", "valid": "b.csv", "test": "c.csv"}, "split": {"policy": "given"}}
    for name in ("a", "c"):
        TOY.to_csv(tmp_path / f"{name}.csv", index=False)
    TOY.assign(price="free").to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DatasetError, match=r"b.csv: .*'price'"):
        write_sources(parse_dataset_spec(spec), tmp_path, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_preprocessor_string_vocab_and_hashing_are_deterministic():
    pre = Preprocessor(categorical=["color", "site"], dense=["price"], vocabularies={"color": ["blue", "red"], "site": []},
                       dense_stats={"price": DenseStats(mean=1.0, std=2.0, log1p=True)}, clip_sigma=3.0,
                       label="clicked", hashed={"site": 16})
    frame = pd.DataFrame({"color": ["red", "green", None], "site": ["a", "b", None], "price": [0.0, np.nan, 1e9]})
    out = pre.transform(frame)
    assert out["categorical"][:, 0].tolist() == [2, 0, 0]
    site = out["categorical"][:, 1]
    assert site[2] == 0 and 1 <= site[0] <= 16 and 1 <= site[1] <= 16
    assert (hash_to_buckets(pd.Series(["a", "b", None]), 16) == site).all()
    assert (hash_to_buckets(pd.Series([12, 7]), 1000) == hash_to_buckets(pd.Series([12.0, 7.0]), 1000)).all()
    assert out["dense"][:, 0].tolist() == pytest.approx([-0.5, 0.0, 3.0])  # log1p, mean-imputed, clipped
    assert pre.layout().cardinalities == (3, 17)
    assert Preprocessor.from_json(pre.to_json()).transform(frame)["categorical"].tolist() == out["categorical"].tolist()


def test_pipeline_config_names_a_bad_dataset_schema(tmp_path):
    from mixrec.pipelines.config import ConfigError, dataset_schema, parse_config

    with pytest.raises(ConfigError, match="data.schema: dataset schema file not found: .*nope.yaml"):
        dataset_schema(parse_config({"data": {"schema": str(tmp_path / "nope.yaml")}}))
    (tmp_path / "bad.yaml").write_text("name: x\nformat: csv\nfiles: {all: a.csv}\ncategorical: [a]\nlabel: 3\n")
    with pytest.raises(ConfigError, match=r"data.schema: invalid dataset schema .*bad.yaml:\n  - label: "):
        dataset_schema(parse_config({"data": {"schema": str(tmp_path / "bad.yaml")}}))
    assert dataset_schema(parse_config({"data": {"schema": "configs/datasets/criteo.yaml"}})).name == "criteo"


HEX_SPEC = {**CSV_SPEC, "event_key_type": "string", "entities": {"user": {"key": "uid", "key_type": "string"}}}
HEX = TOY.assign(id=[str(11255030587488208480 + i) for i in range(6)],
                 uid=["8dcb419a", "0a1b2c3d", "00000042", "8dcb419a", "0a1b2c3d", "00000042"])


def test_string_keys_keep_their_text_and_split_by_a_hash_of_it(tmp_path):
    spec = _write(tmp_path, HEX_SPEC, frame=HEX)
    table = pq.read_table(write_sources(spec, tmp_path, tmp_path / "out").events)
    assert table.schema.field("id").type == table.schema.field("uid").type == pa.string()
    assert table.column("id").to_pylist() == HEX["id"].tolist()  # 20 digits, not int64, not rounded
    assert table.column("uid").to_pylist() == HEX["uid"].tolist()  # leading zeros kept
    expected = split_at_random(HEX["id"].to_numpy(dtype=object), 3, 0.2, 0.2)
    assert table.column(SPLIT_COLUMN).to_pylist() == list(expected)


def test_an_int_key_holding_hashes_names_the_column_and_the_fix(tmp_path):
    spec = _write(tmp_path, {**CSV_SPEC, "event_key_type": "string"}, frame=HEX)
    with pytest.raises(DatasetError, match=r"'uid'.*key_type: string"):
        write_sources(spec, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out" / "events.parquet").exists()
    with pytest.raises(DatasetError, match="event_key_type: `string` needs an `event_key`"):
        parse_dataset_spec({**HEX_SPEC, "event_key": None})


def test_string_entity_keys_of_a_parquet_entity_file(tmp_path):
    from mixrec.features.adapters import write_entity_source

    users = pd.DataFrame({"uid": ["8dcb419a", "00000042"], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
                          "age": [3, 4]})
    users.to_parquet(tmp_path / "users.parquet")
    spec = parse_dataset_spec({**HEX_SPEC, "entities": {"user": {"key": "uid", "key_type": "string",
                                                                  "file": "users.parquet"}},
                               "categorical": ["uid", "color", {"name": "age", "source": "user"}]})
    out = pq.read_table(write_entity_source(spec, "user", tmp_path, tmp_path / "users_out.parquet"))
    assert out.schema.field("uid").type == pa.string() and out.column("uid").to_pylist() == ["8dcb419a", "00000042"]
