"""Reading rank requests from files and arguments; ALIAS=WEIGHT pairs. Errors name the file, line and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixrec.serving.client import RequestFileError, parse_items, read_requests
from mixrec.serving.splitter import parse_weights


def test_requests_from_csv_and_jsonl(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("user_id,items,device\n1,\"1,5,9\",2\n2,3 4,\n")
    assert read_requests(csv) == [{"user_id": 1, "items": [1, 5, 9], "context": {"device": 2}},
                                  {"user_id": 2, "items": [3, 4], "context": {}}]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"user_id": 1, "items": [1, 2]}\n\n{"user_id": 2, "items": [3]}\n')
    assert [r["user_id"] for r in read_requests(jsonl)] == [1, 2]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("r.csv", "user,items\n1,2\n", "r.csv: missing column(s) ['user_id']"),
    ("r.csv", "user_id,items,device\n1,2,x\n", "r.csv:2: context columns must be integers"),
    ("r.csv", "user_id,items\n,2\n", "r.csv:2: user_id is empty"),
    ("r.csv", "user_id,items\n1,\" , \"\n", "r.csv:2: items must name at least one item id"),
    ("r.jsonl", '{"user_id": 1}\n{oops\n', "r.jsonl:2: not valid JSON"),
    ("r.jsonl", "[1, 2]\n", "r.jsonl:1: expected a JSON object"),
])
def test_bad_request_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RequestFileError) as err:
        read_requests(path)
    assert message in str(err.value)


def test_missing_file_and_bad_items():
    with pytest.raises(RequestFileError, match="no such file"):
        read_requests(Path("/nonexistent/requests.jsonl"))
    assert parse_items("1; 2 ,3", "--items") == [1, 2, 3]
    with pytest.raises(RequestFileError, match="--items must name at least one item id"):
        parse_items(" , ", "--items")


def test_ids_are_integers_when_they_are_and_strings_otherwise(tmp_path):
    assert parse_items("8dcb419a, 00ff", "--items") == ["8dcb419a", "00ff"]
    assert parse_items("1,8dcb419a", "--items") == ["1", "8dcb419a"]  # one kind per request: all strings
    assert parse_items("11255030587488208480", "--items") == ["11255030587488208480"]  # wider than int64
    csv = tmp_path / "r.csv"
    csv.write_text("user_id,items\n8dcb419a,\"a1,b2\"\n")
    assert read_requests(csv) == [{"user_id": "8dcb419a", "items": ["a1", "b2"], "context": {}}]


def test_weights_pairs():
    assert parse_weights(["champion=0.9", " challenger = 0.1"]) == {"champion": 0.9, "challenger": 0.1}
    for bad in ("champion", "=0.5", "champion=lots"):
        with pytest.raises(ValueError, match="ALIAS=NUMBER"):
            parse_weights([bad])
