"""Fuzzing the live Ray Serve endpoint with a bearer token configured: no request gets a 5xx.

Two generators, bounded for the suite's wall time:

* Hypothesis, raw: >= 2,000 request bodies per run (rank-shaped objects with hostile values, arbitrary JSON,
  NaN/Infinity, lone surrogates, invalid UTF-8, random bytes) under random content types and credentials,
  sent ``CONCURRENCY`` at a time over loopback. Each must be 401 exactly when the token is missing or wrong,
  else 200/413/415/422, with a JSON answer.
* Schemathesis, schema-shaped: positive and negative cases generated from the published OpenAPI schema
  (fetched with the token). Its pytest plugin does not run under pytest 9, so its strategies are driven directly.

Deterministic by default (``derandomize``); ``MIXREC_FUZZ_RANDOM=1`` draws new cases each run.
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

pytestmark = pytest.mark.integration

TOKEN_ENV, TOKEN = "MIXREC_TEST_FUZZ_TOKEN", "fuzz-t0ken"
BATCH, BATCHES, CONCURRENCY = 50, 42, 8  # 2,100 raw cases; 8 in flight stays under the rankers' queues
DERANDOMIZE = not os.environ.get("MIXREC_FUZZ_RANDOM")
SCHEMATHESIS_EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 40}

# Text with lone surrogates mixed in (Hypothesis leaves them out by default).
text = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=12)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(2**62 - 2, 2**64)
           | st.floats(allow_nan=True, allow_infinity=True) | text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                      max_leaves=10)
ids = st.integers(-2, 300) | st.integers(2**62 - 2, 2**63) | text | st.floats(allow_nan=True, allow_infinity=True) \
    | st.booleans() | st.none()
rank_shaped = st.fixed_dictionaries(
    {"user_id": ids, "items": st.lists(ids, max_size=6) | st.lists(st.integers(0, 120), min_size=1, max_size=8)},
    optional={"context": st.dictionaries(st.sampled_from(["device", "hour"]) | text, values, max_size=3),
              "extra": values})


@st.composite
def bodies(draw) -> bytes:
    """One request body: JSON of a rank-shaped object or any value (with NaN/Infinity and surrogates, encoded
    so that a surrogate becomes invalid UTF-8 when not escaped), or random bytes."""
    kind = draw(st.sampled_from(["rank", "rank", "rank", "value", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    value = draw(rank_shaped if kind == "rank" else values)
    return json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


cases = st.tuples(bodies(),
                  st.sampled_from(["application/json", None, "text/plain", "application/json; charset=latin-1",
                                   "application/problem+json", "application/x-www-form-urlencoded", "image/png"]),
                  st.sampled_from([TOKEN] * 8 + [None, "wrong"]))


async def _send(url: str, batch: list[tuple[bytes, str | None, str | None]]) -> list[tuple[str | None, httpx.Response]]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, body: bytes, content_type: str | None, token: str | None):
        headers = {k: v for k, v in (("content-type", content_type),
                                      ("authorization", token and f"Bearer {token}")) if v}
        async with limit:
            return token, await client.post("/rank", content=body, headers=headers)

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(one(client, *case) for case in batch))


@pytest.fixture(scope="module")
def guarded(served, deployed_with):
    with deployed_with({TOKEN_ENV: TOKEN}, auth_token_env=TOKEN_ENV):
        yield served["url"]


def test_2000_generated_bodies_get_no_5xx(guarded):
    statuses = []

    @given(batch=st.lists(cases, min_size=BATCH, max_size=BATCH))
    @settings(max_examples=BATCHES, deadline=None, derandomize=DERANDOMIZE, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    def fuzz(batch):
        for token, r in asyncio.run(_send(guarded, batch)):
            statuses.append(r.status_code)
            assert r.status_code < 500, (r.status_code, r.text[:300])
            assert (r.status_code == 401) == (token != TOKEN), (token, r.status_code, r.text[:300])
            assert r.status_code in (200, 401, 413, 415, 422) and isinstance(r.json(), dict), r.text[:300]

    fuzz()
    assert len(statuses) >= 2000
    assert {200, 401, 415, 422} <= set(statuses), sorted(set(statuses))  # every outcome was reached


@pytest.mark.parametrize("mode", list(SCHEMATHESIS_EXAMPLES), ids=str)
def test_no_request_generated_from_the_schema_gets_a_5xx(guarded, mode):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_dict(httpx.get(f"{guarded}/openapi.json", headers=auth, timeout=30).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/rank", "/arms", "/health"}
    calls = []
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method != "post":
            continue  # the GETs take no parameters: nothing to break but the (optional) token header
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=SCHEMATHESIS_EXAMPLES[mode] if operation.method == "post" else 5, deadline=None,
                  derandomize=DERANDOMIZE, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=guarded, headers=auth, timeout=60)
            calls.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    assert len(calls) >= 20 and all(code < 500 for code in calls)
    if mode is GenerationMode.POSITIVE:
        assert 200 in calls  # schema-shaped requests do reach the rankers
