"""Multi-hot fields from the schema file to id columns (no Ray): YAML validation, the adapters' canonical
list<string> column, the preprocessor's vocabulary over values, truncation, the artifact and GX."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.adapters import write_sources
from mixrec.features.dataset import DatasetError, parse_dataset_spec
from mixrec.features.multihot import place, to_value_lists
from mixrec.pipelines.preprocess import (
    BagSpec,
    DenseStats,
    Preprocessor,
    fit_from_partials,
    partial_stats,
    partial_stats_kwargs,
)

SPEC = {"name": "movies", "format": "parquet", "files": {"all": "events.parquet"}, "label": "clicked",
        "entities": {"user": {"key": "uid"}}, "categorical": ["uid"], "dense": ["price"],
        "multi_hot": ["genres", {"name": "recent", "max_len": 3, "separator": ";", "keep": "last"}],
        "split": {"policy": "random"}}
GENRES = [["drama", "comedy"], [], None, ["comedy"], ["horror", "drama", "comedy", "drama"], ["drama"]]
RECENT = [[5, 6, 7, 8], [9], [], None, [5], [6, 5]]


def _frame(as_strings: bool) -> pd.DataFrame:
    """The same rows with list columns, or with the values joined into strings (recent with ';')."""
    join = lambda rows, sep: [None if r is None else sep.join(map(str, r)) for r in rows]  # noqa: E731
    return pd.DataFrame({"uid": [1, 2, 3, 1, 2, 3], "price": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                         "clicked": [0, 1, 0, 1, 0, 1],
                         "genres": join(GENRES, "|") if as_strings else GENRES,
                         "recent": join(RECENT, ";") if as_strings else RECENT})


def _fit(frame: pd.DataFrame, schema, min_count: int, clip_sigma: float):
    """Fit from the partial stats of two batches of ``frame`` (what each Ray Data batch of the train split yields)."""
    kwargs, half = partial_stats_kwargs(schema), len(frame) // 2
    parts = [partial_stats(frame.iloc[:half], **kwargs), partial_stats(frame.iloc[half:], **kwargs)]
    return fit_from_partials(parts, schema, min_count, clip_sigma)


# --- the schema file ------------------------------------------------------------------------------------
def test_schema_compiles_multi_hot_fields_in_layout_order():
    schema = parse_dataset_spec(SPEC).to_schema()
    assert [f.name for f in schema.categorical] == ["uid", "genres", "recent"]
    assert list(schema.model_columns) == ["uid", "genres", "recent", "price"]
    genres, recent = schema.multi_hot
    assert (genres.kind, genres.max_len, genres.separator, genres.keep, genres.source) == ("multi_hot", 10, "|", "last", "row")
    assert (recent.max_len, recent.separator) == (3, ";")


def test_schema_errors_name_each_bad_multi_hot_field():
    bad = {**SPEC, "multi_hot": ["genres", {"name": "recent", "max_len": 0, "keep": "middle", "separator": ""},
                                 {"name": "tags", "sep": ","}, {"name": "uid"}, {"name": "score", "log1p": True}]}
    with pytest.raises(DatasetError) as err:
        parse_dataset_spec(bad, "movies.yaml")
    text = str(err.value)
    assert text.startswith("invalid dataset schema movies.yaml:")
    assert "multi_hot.recent.max_len: Input should be greater than or equal to 1" in text
    assert "multi_hot.recent.keep: Input should be 'last' or 'first'" in text
    assert "multi_hot.recent.separator: String should have at least 1 character" in text
    assert "multi_hot.tags.sep: Extra inputs are not permitted" in text
    bad["multi_hot"] = ["genres", {"name": "uid"}, {"name": "score", "log1p": True}, {"name": "x", "source": "shop"}]
    with pytest.raises(DatasetError) as err:
        parse_dataset_spec(bad)
    text = str(err.value)
    assert "multi_hot.uid: a key or label column holds one value, not a list" in text
    assert "multi_hot.score.log1p: only dense fields take log1p" in text
    assert "multi_hot.x.source: 'shop' is not one of ['request', 'row']" in text
    with pytest.raises(DatasetError, match=r"declared twice: \['genres'\]"):
        parse_dataset_spec({**SPEC, "categorical": ["uid", "genres"]})
    with pytest.raises(DatasetError, match="multi_hot.genres: libfm files hold one value per field position"):
        parse_dataset_spec({**SPEC, "format": "libfm", "columns": ["clicked", "uid"], "dense": []})


# --- adapters -------------------------------------------------------------------------------------------
def test_value_lists_from_lists_strings_and_scalars():
    assert to_value_lists(pa.array([" a| b", "", None, "|", "c||d"])).to_pylist() == \
        [["a", "b"], [], None, [], ["c", "d"]]
    assert to_value_lists(pa.array([[1, 2], [], None, [3, None]])).to_pylist() == [["1", "2"], [], None, ["3"]]
    assert to_value_lists(pa.array([[1.0], [2.0]])).to_pylist() == [["1"], ["2"]]
    assert to_value_lists(pa.array([7, None])).to_pylist() == [["7"], None]
    with pytest.raises(ValueError, match="fractional"):
        to_value_lists(pa.array([[1.5]]))


@pytest.mark.parametrize("fmt", ["parquet_lists", "parquet_strings", "csv"])
def test_adapters_write_list_of_strings_whatever_the_input(tmp_path, fmt):
    frame = _frame(as_strings=fmt != "parquet_lists")
    spec = dict(SPEC)
    if fmt == "csv":
        spec = {**spec, "format": "csv", "files": {"all": "events.csv"}}
        frame.to_csv(tmp_path / "events.csv", index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "events.parquet")
    events = pq.read_table(write_sources(parse_dataset_spec(spec), tmp_path, tmp_path / "out").events)
    assert events.schema.field("genres").type == pa.list_(pa.string())
    empty = None if fmt == "csv" else []  # an empty CSV cell is a missing value (a lone separator: an empty list)
    assert events.column("genres").to_pylist() == [empty if r == [] else r for r in GENRES]
    assert events.column("recent").to_pylist() == [None if r is None else [str(v) for v in r] if r else empty
                                                   for r in RECENT]


def test_adapters_name_file_and_column_of_a_bad_multi_hot_column(tmp_path):
    frame = _frame(as_strings=False).assign(genres=[[0.5]] * 6)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "events.parquet")
    with pytest.raises(DatasetError, match=r"events.parquet: multi-hot column 'genres': .*fractional"):
        write_sources(parse_dataset_spec(SPEC), tmp_path, tmp_path / "out")


def test_entity_file_multi_hot_fields(tmp_path):
    users = pd.DataFrame({"uid": [1, 2], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
                          "tags": ["x|y", None]})
    users.to_parquet(tmp_path / "users.parquet")
    pq.write_table(pa.Table.from_pandas(_frame(False), preserve_index=False), tmp_path / "events.parquet")
    spec = {**SPEC, "entities": {"user": {"key": "uid", "file": "users.parquet"}},
            "multi_hot": [*SPEC["multi_hot"], {"name": "tags", "source": "user"}]}
    info = write_sources(parse_dataset_spec(spec), tmp_path, tmp_path / "out")
    assert pq.read_table(info.entities["user"]).column("tags").to_pylist() == [["x", "y"], None]


# --- preprocessing --------------------------------------------------------------------------------------
def test_fit_counts_values_with_min_count_and_lists_equal_strings():
    schema = parse_dataset_spec(SPEC).to_schema()
    lists, strings = _frame(as_strings=False), _frame(as_strings=True)
    pre = _fit(lists, schema, min_count=2, clip_sigma=5.0)
    # value counts over every list: drama 4, comedy 3, horror 1 (rare -> OOV); recent 5: 3, 6: 2, others 1
    assert pre.vocabularies["genres"] == ["comedy", "drama"] and pre.vocabularies["recent"] == ["5", "6"]
    assert pre.vocabularies["uid"] == [1, 2, 3]
    assert pre.bag_sizes == (1, 10, 3) and pre.layout().bag_sizes == (1, 10, 3)
    assert pre.layout().cardinalities == (4, 3, 3) and pre.id_column("recent") == 11
    assert _fit(strings, schema, 2, 5.0).to_json() == pre.to_json()
    a, b = pre.transform(lists)["categorical"], pre.transform(strings)["categorical"]
    assert a.shape == (6, 14) and np.array_equal(a, b)
    genres, recent = a[:, 1:11], a[:, 11:]
    assert genres[:, :4].tolist() == [[2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 2, 1, 2],
                                      [2, 0, 0, 0]]
    assert not genres[:, 4:].any()
    # recent keeps the last 3 of [5, 6, 7, 8]: [6, 7, 8] -> [2, 0, 0]
    assert recent.tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [2, 1, 0]]


def test_hashed_multi_hot_field_and_frame_with_unseen_values():
    pre = Preprocessor(categorical=["tags"], dense=[], vocabularies={"tags": []}, dense_stats={},
                       clip_sigma=3.0, label="y", hashed={"tags": 64}, multi_hot={"tags": BagSpec(max_len=2)})
    out = pre.transform(pd.DataFrame({"tags": ["a|b", "b", None, "zz|a|b"]}))["categorical"]
    a, b = out[0]
    assert 1 <= a <= 64 and 1 <= b <= 64 and out[1].tolist() == [b, 0] and out[2].tolist() == [0, 0]
    assert out[3].tolist() == [a, b]  # keep last: the last two values


def test_truncation_keeps_first_or_last():
    ids, rows = np.arange(1, 8), np.array([0, 0, 0, 0, 2, 4, 4])
    assert place(ids, rows, 5, 2, "last").tolist() == [[3, 4], [0, 0], [5, 0], [0, 0], [6, 7]]
    assert place(ids, rows, 5, 2, "first").tolist() == [[1, 2], [0, 0], [5, 0], [0, 0], [6, 7]]
    assert place(ids, rows, 5, 6, "last").tolist()[0] == [1, 2, 3, 4, 0, 0]
    pre = Preprocessor(categorical=["s"], dense=[], vocabularies={"s": ["a", "b", "c", "d"]}, dense_stats={},
                       clip_sigma=3.0, label="y", multi_hot={"s": BagSpec(max_len=2, keep="first")})
    assert pre.transform(pd.DataFrame({"s": ["a|b|c|d"]}))["categorical"].tolist() == [[1, 2]]


def test_artifact_round_trips_and_stays_readable_both_ways():
    pre = Preprocessor(categorical=["uid", "s"], dense=["p"], vocabularies={"uid": [3, 9], "s": ["a", "b"]},
                       dense_stats={"p": DenseStats(0.0, 1.0, False)}, clip_sigma=3.0, label="y",
                       multi_hot={"s": BagSpec(max_len=3, separator=";", keep="first")})
    again = Preprocessor.from_json(json.loads(json.dumps(pre.to_json())))
    assert again.multi_hot == pre.multi_hot and again.layout() == pre.layout()
    frame = pd.DataFrame({"uid": [9, 4], "s": ["b;a;x;a", None], "p": [1.0, 2.0]})
    assert again.transform(frame)["categorical"].tolist() == [[2, 2, 1, 0], [0, 0, 0, 0]]
    plain = Preprocessor(categorical=["uid"], dense=[], vocabularies={"uid": [3]}, dense_stats={},
                         clip_sigma=3.0, label="y")
    assert "multi_hot" not in plain.to_json()  # artifacts without multi-hot fields are as before
    assert Preprocessor.from_json(plain.to_json()).layout().bag_sizes == ()


def test_checkpoint_round_trips_bag_sizes(tmp_path):
    from mixrec.models import build_model
    from mixrec.pipelines.checkpoint import load_checkpoint, save_checkpoint

    pre = Preprocessor(categorical=["uid", "s"], dense=["p"], vocabularies={"uid": [3, 9], "s": ["a", "b"]},
                       dense_stats={"p": DenseStats(0.0, 1.0, False)}, clip_sigma=3.0, label="y",
                       multi_hot={"s": BagSpec(max_len=3)})
    model = build_model("dnn", pre.layout())
    save_checkpoint(tmp_path, model, pre)
    loaded, pre2, spec = load_checkpoint(tmp_path)
    assert spec["layout"]["bag_sizes"] == [1, 3] and loaded.layout == model.layout
    frame = pd.DataFrame({"uid": [9], "s": ["b|a"], "p": [1.0]})
    x = pre2.transform(frame)
    import torch

    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(torch.from_numpy(x["categorical"]), torch.from_numpy(x["dense"])),
                           model(torch.from_numpy(x["categorical"]), torch.from_numpy(x["dense"])))


def test_unseen_rate_counts_rows_with_no_known_value():
    from mixrec.pipelines.dataset_checks import _split_aggregates

    cat = np.array([[1, 0, 0, 0, 2], [0, 0, 3, 0, 0], [0, 0, 0, 0, 0]])  # fields: 1 column, 3 (a bag), 1
    out = _split_aggregates({"categorical": cat, "label": np.ones(3)}, starts=[0, 1, 4])
    assert out["oov"].tolist() == [[2, 2, 2]]


def test_gx_row_suite_takes_list_columns():
    from mixrec.features.schema import DatasetSchema, FeatureField
    from mixrec.pipelines.validate import BatchValidator, build_suite

    schema = DatasetSchema(label="label", timestamp="ts", user_key=None, item_key=None, event_key="id",
                           fields=(FeatureField("g", "multi_hot", "row", nullable=False, max_len=3),
                                   FeatureField("h", "multi_hot", "row", nullable=True, max_len=3),
                                   FeatureField("x", "dense", "row", nullable=True)))
    lists = lambda *v: pa.array(list(v), pa.list_(pa.string()))  # noqa: E731
    batch = pa.table({"id": [1, 2, 3, 4], "ts": pa.array([pd.Timestamp("2026-01-01")] * 4), "label": [0, 1, 0, 1],
                      "g": lists(["a", "b"], [], None, ["c"]), "h": lists(None, ["a"], None, None),
                      "x": [0.5, 0.2, 0.1, 2.0]})  # an Arrow batch, as Ray Data hands it to the validator
    out = BatchValidator(build_suite(schema, {"x": (0.0, 1.0)}))(batch)
    assert out.column("_failed_expectations").to_pylist() == ["", "", "expect_column_values_to_not_be_null(g)",
                                                             "expect_column_values_to_be_between(x)"]
    assert out.column("g").type == batch.column("g").type  # list columns pass through untouched


def test_arrow_backed_list_columns_become_object_columns_that_round_trip(tmp_path):
    from mixrec.features.multihot import plain_list_columns

    lists = pd.arrays.ArrowExtensionArray(pa.array([["x", "y"], [], None], pa.list_(pa.string())))
    frame = pd.DataFrame({"a": [1, 2, 3], "g": lists}, index=[5, 6, 7])  # as Ray Data's to_pandas gives it
    plain = plain_list_columns(frame)
    assert plain["g"].dtype == object and plain.index.tolist() == [5, 6, 7] and plain["g"].iloc[2] is None
    pq.write_table(pa.Table.from_pandas(plain, preserve_index=False), tmp_path / "q.parquet")
    back = pd.read_parquet(tmp_path / "q.parquet")  # pandas cannot rebuild the Arrow list dtype from its name
    assert [None if v is None else list(v) for v in back["g"]] == [["x", "y"], [], None]
    assert plain_list_columns(back) is back
