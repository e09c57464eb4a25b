"""What a run shows in the MLflow UI: the splits as MLflow datasets, and the version description's gate line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.pipelines.story import mlflow_schema, registration_gate, split_dataset, version_description


def test_a_split_folder_becomes_a_dataset_with_digest_schema_and_rows(tmp_path):
    table = pa.table({"categorical": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64())),
                      "dense": pa.array([[0.5], [1.5]], pa.list_(pa.float32())), "label": pa.array([0.0, 1.0])})
    folder = tmp_path / "train"
    folder.mkdir()
    pq.write_table(table, folder / "b.parquet")
    pq.write_table(table.slice(0, 1), folder / "a.parquet")
    dataset, rows = split_dataset(folder, "synthetic-train")
    assert rows == 3 and len(dataset.digest) == 32 and dataset.source.uri == str(folder.resolve())
    columns = {c["name"]: c for c in json.loads(dataset.schema.to_json())}
    assert columns["categorical"]["items"]["type"] == "long" and columns["label"]["type"] == "double"
    pq.write_table(table, folder / "a.parquet")  # other bytes, other digest
    assert split_dataset(folder, "synthetic-train")[0].digest != dataset.digest


def test_a_type_without_mlflow_match_gives_no_schema():
    assert mlflow_schema(pa.schema([("t", pa.timestamp("us"))])) is None


def test_description_names_data_metrics_and_gate():
    text = version_description("dnn", "synthetic", {"events": 100, "train_rows": 80, "valid_rows": 10,
                                                    "test_rows": 10}, {"train": "ab" * 16},
                               {"test_auc": 0.71234, "test_logloss": 0.5, "valid_auc": 0.7, "epoch": 2}, "r1",
                               registration_gate("2", ["challenger"]))
    assert "train 80, valid 10, test 10 rows (of 100 events" in text and "test AUC 0.7123" in text
    assert "(epoch 3)" in text and text.endswith("`mixrec promote 2` runs the offline gate against the champion.")
    assert "champion by default" in registration_gate("1", ["champion", "challenger"])


class _Tensor(pa.ExtensionType):
    """Stands in for Ray Data's tensor extension type (how prepared array columns come back with Ray imported)."""

    def __init__(self):
        super().__init__(pa.large_list(pa.int64()), "test.tensor")

    def __arrow_ext_serialize__(self):
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls()


def test_an_extension_type_is_described_by_its_storage():
    (column,) = json.loads(mlflow_schema(pa.schema([("categorical", _Tensor())])).to_json())
    assert column["type"] == "array" and column["items"]["type"] == "long"
