"""Parsing a /rank body by hand: every bad body is a 4xx naming the problem, and no error echoes the input or
holds text that cannot be serialised (what made FastAPI's own 422 a 500)."""

from __future__ import annotations

import json

import pytest
from fastapi import HTTPException

from mixrec.serving.body import MAX_ERRORS, check_content_type, parse_rank_request, printable

OK = b'{"user_id": 1, "items": [1, 2]}'


def _refused(raw: bytes, content_type: str | None = "application/json") -> HTTPException:
    with pytest.raises(HTTPException) as err:
        parse_rank_request(raw, content_type)
    json.dumps(err.value.detail, ensure_ascii=False, allow_nan=False).encode("utf-8")  # serialisable as a response
    return err.value


@pytest.mark.parametrize("raw, needle", [
    (b'{"user_id": "\\ud800", "items": [1]}', "user_id"),
    (b'{"user_id": 1, "items": [1], "context": {"\\ud800": 1}}', "context"),
    (b'{"user_id": NaN, "items": [1]}', "NaN"),
    (b'{"user_id": Infinity, "items": [1]}', "Infinity"),
    (b'{"user_id": -Infinity, "items": [1]}', "Infinity"),
    (b'{"user_id": 1e400, "items": [1]}', "out of range"),
    (b'{"user_id": 1' + b"0" * 5000 + b', "items": [1]}', "digits"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'\xff\xfe{"user_id": 1}', "not UTF-8"),
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "dictionary"),
    (b'{"user_id": 1, "items": [1, "a"]}', "items"),
    (b'{"user_id": true, "items": [1]}', "user_id"),
    (b'{"user_id": 1.0, "items": [1]}', "user_id"),
    (b'{"user_id": "' + b"x" * 129 + b'", "items": [1]}', "user_id"),
])
def test_bad_bodies_are_422_naming_the_problem(raw, needle):
    err = _refused(raw)
    assert err.status_code == 422 and needle in json.dumps(err.detail), err.detail


def test_errors_never_echo_the_input_and_are_capped():
    raw = json.dumps({"user_id": 1, "items": ["x" * 100] * 5000 + [1.5] * 5000}).encode()
    err = _refused(raw)
    text = json.dumps(err.detail)
    assert len(err.detail) == MAX_ERRORS + 1 and "more errors not shown" in text
    assert "x" * 100 not in text and len(text) < 5000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml"])
def test_other_content_types_are_415(content_type):
    assert _refused(OK, content_type).status_code == 415


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "application/vnd.api+json"])
def test_json_content_types_and_ids_keep_their_types(content_type):
    check_content_type(content_type)
    assert parse_rank_request(OK, content_type).items == [1, 2]
    parsed = parse_rank_request(b'{"user_id": "9007199254740993", "items": ["a", "b"]}', content_type)
    assert parsed.user_id == "9007199254740993" and parsed.items == ["a", "b"]


def test_printable_truncates_and_escapes_surrogates():
    assert printable(7) == 7
    assert printable("\ud800x") == "\\ud800x"
    assert printable("y" * 500, 10) == "y" * 10 + "..."
