"""A hostile client against the served app, through real HTTP and Ray Serve, with a bearer token configured:
the hand probes of issue 16 (each once, with the response it must get), auth before the body is read, the
body-size limit, and the schema/docs routes behind the token. Module-scoped redeploy of the shared app with
the token; the fixture's deployment is back after the module."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration

TOKEN_ENV, TOKEN = "MIXREC_TEST_HOSTILE_TOKEN", "h0stile-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = "application/json"
OK = b'{"user_id": 3, "items": [1, 2, 3], "context": {"device": 1, "hour": 9}}'

# (probe, body, content type, status, a word the answer names)
PROBES = [
    ("lone surrogate as user_id", b'{"user_id": "\\ud800", "items": [1]}', JSON, 422, "user_id"),
    ("lone surrogate as a context key", b'{"user_id": 1, "items": [1], "context": {"\\ud800": 1}}', JSON, 422, "context"),
    ("NaN literal", b'{"user_id": NaN, "items": [1]}', JSON, 422, "NaN"),
    ("Infinity literal", b'{"user_id": 1, "items": [Infinity]}', JSON, 422, "Infinity"),
    ("-Infinity literal", b'{"user_id": -Infinity, "items": [1]}', JSON, 422, "Infinity"),
    ("1e400", b'{"user_id": 1e400, "items": [1]}', JSON, 422, "out of range"),
    ("an integer of 5,000 digits", b'{"user_id": 1' + b"0" * 5000 + b', "items": [1]}', JSON, 422, "digits"),
    ("non-UTF-8 body as text/plain", b'\xff\xfe{"user_id": 1}', "text/plain", 415, "application/json"),
    ("non-UTF-8 body as JSON", b'{"user_id": "\xff"}', JSON, 422, "UTF-8"),
    ("nesting 100,000 deep", b"[" * 100_000 + b"]" * 100_000, JSON, 422, "nested too deeply"),
    ("context value nested 50 deep", b'{"user_id": 1, "items": [1], "context": {"device": '
     + b"[" * 50 + b"]" * 50 + b"}}", JSON, 422, "context"),
    ("valid JSON as text/plain", OK, "text/plain", 415, "application/json"),
    ("form-urlencoded", b"user_id=1&items=1", "application/x-www-form-urlencoded", 415, "application/json"),
    ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", 415, "application/json"),
    ("empty body", b"", JSON, 422, "empty body"),
    ("a JSON array", b"[1, 2]", JSON, 422, "dictionary"),
    ("repeated item ids", b'{"user_id": 1, "items": [4, 5, 4]}', JSON, 422, "distinct"),
    ("mixed int and string items", b'{"user_id": 1, "items": [4, "5"]}', JSON, 422, "items"),
    ("boolean user_id", b'{"user_id": true, "items": [1]}', JSON, 422, "user_id"),
    ("float user_id", b'{"user_id": 1.5, "items": [1]}', JSON, 422, "user_id"),
    ("string id of 129 characters", b'{"user_id": "' + b"u" * 129 + b'", "items": [1]}', JSON, 422, "user_id"),
    ("no content type", OK, None, 200, "ranked"),
    ("string ids", b'{"user_id": "u-17", "items": ["a", "b"]}', JSON, 200, "ranked"),
]


def test_docs_are_open_without_a_token(served):
    """Runs first: the module fixture below turns the token on for the rest of the module."""
    client = served["client"]
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    assert client.get("/openapi.json").json()["paths"]["/rank"]["post"]["requestBody"]["required"] is True


@pytest.fixture(scope="module")
def guarded(served, deployed_with):
    """The shared app with a bearer token: a client that sends it, and one that does not."""
    with deployed_with({TOKEN_ENV: TOKEN}, auth_token_env=TOKEN_ENV):
        with httpx.Client(base_url=served["url"], timeout=60, headers=AUTH) as client, \
                httpx.Client(base_url=served["url"], timeout=60) as anonymous:
            yield client, anonymous


def _post(client: httpx.Client, body: bytes, content_type: str | None) -> httpx.Response:
    return client.post("/rank", content=body, headers={"content-type": content_type} if content_type else {})


@pytest.mark.parametrize("probe, body, content_type, status, needle", PROBES, ids=[p[0] for p in PROBES])
def test_each_hostile_probe_gets_its_4xx(guarded, probe, body, content_type, status, needle):
    client, _ = guarded
    r = _post(client, body, content_type)
    assert r.status_code == status, (probe, r.status_code, r.text[:300])
    assert needle in r.text and len(r.content) < 5000, r.text[:300]


def test_string_ids_keep_their_type_and_a_decimal_string_is_that_id(guarded):
    client, _ = guarded
    as_int = client.post("/rank", json={"user_id": 17, "items": [3, 4]}).json()
    as_str = client.post("/rank", json={"user_id": "17", "items": ["3", "4"]}).json()
    assert as_int["user_id"] == 17 and as_str["user_id"] == "17"
    assert {i["item_id"] for i in as_str["ranked"]} == {"3", "4"} and as_str["arm"] == as_int["arm"]
    assert sorted(i["score"] for i in as_str["ranked"]) == sorted(i["score"] for i in as_int["ranked"])


def test_auth_is_checked_before_the_body_is_read(guarded):
    _, anonymous = guarded
    for body in (b"{}", b"{not json", b"x" * (2 * 1_048_576)):
        r = _post(anonymous, body, JSON)
        assert r.status_code == 401 and "bearer" in r.text, r.text[:300]
    assert anonymous.post("/rank", content=OK, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_bodies_over_the_limit_are_413_and_never_echoed(guarded):
    client, _ = guarded
    huge = json.dumps({"user_id": 1, "items": list(range(3_000_000))}).encode()  # ~22 MB, as in the issue
    r = _post(client, huge, JSON)
    assert r.status_code == 413 and "max_body_bytes" in r.text and len(r.content) < 1000

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(40):
            yield b" " * 65536

    r = client.post("/rank", content=chunks(), headers={"content-type": JSON})
    assert r.status_code == 413 and "max_body_bytes" in r.text
    # Under the limit, a body of 10,000 bad items is a short 422 that does not echo them.
    r = client.post("/rank", json={"user_id": 1, "items": [f"id-{i}-" + "z" * 60 for i in range(10_000)] + [1]})
    assert r.status_code == 422 and len(r.content) < 5000 and "z" * 60 not in r.text, len(r.content)


def test_schema_and_docs_are_behind_the_token(guarded):
    client, anonymous = guarded
    for path in ("/openapi.json", "/arms"):
        assert anonymous.get(path).status_code == 401, path
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and "/rank" in schema.json()["paths"]
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 404 and anonymous.get(path).status_code == 404, path
    assert anonymous.get("/health").status_code == 200
