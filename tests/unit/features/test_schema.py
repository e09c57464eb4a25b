"""Key types of the dataset schema (no Ray): ids a client sends become the dataset's key type exactly."""

from __future__ import annotations

import numpy as np

from mixrec.features.dataset import parse_dataset_spec
from mixrec.features.schema import SYNTHETIC_SCHEMA, UNKNOWN_INT_KEY, coerce_keys


def test_string_keys_take_ints_as_their_decimal_text():
    got = coerce_keys([17, "8dcb419a", "11255030587488208480", np.int64(3)], string=True)
    assert got.dtype.kind == "U" and got.tolist() == ["17", "8dcb419a", "11255030587488208480", "3"]
    assert coerce_keys(np.array([2**62, 0]), string=True).tolist() == [str(2**62), "0"]


def test_int_keys_parse_decimal_strings_exactly_and_anything_else_is_unknown():
    got = coerce_keys(["17", 2**62 + 1, "-3", "8dcb419a", "11255030587488208480", "1.5", ""], string=False)
    assert got.dtype == np.int64
    assert got.tolist() == [17, 2**62 + 1, -3] + [UNKNOWN_INT_KEY] * 4  # no wrap-around of a 20-digit id
    ints = np.array([5, 2**40])
    assert coerce_keys(ints, string=False).tolist() == [5, 2**40]
    assert coerce_keys([], string=False).shape == (0,) and coerce_keys([], string=True).shape == (0,)


def test_the_schema_file_declares_string_keys_and_the_synthetic_schema_has_none():
    spec = parse_dataset_spec({
        "name": "ctr", "format": "csv", "files": {"all": "x.csv"}, "event_key": "id", "event_key_type": "string",
        "entities": {"user": {"key": "device_id", "key_type": "string"}, "item": {"key": "app_id"}},
        "categorical": ["device_id", "app_id"], "split": {"policy": "random"}})
    schema = spec.to_schema()
    assert set(schema.string_keys) == {"id", "device_id"}
    assert schema.key_array("device_id", [1]).tolist() == ["1"] and schema.key_array("app_id", ["2"]).tolist() == [2]
    assert SYNTHETIC_SCHEMA.string_keys == () and SYNTHETIC_SCHEMA.key_array("user_id", [3]).dtype == np.int64
