"""Schemathesis fuzzing of the published OpenAPI schema against the live Ray Serve endpoint: requests that fit
the schema and requests that do not, for every operation; no 5xx. Bounded (max_examples) for the suite's wall
time. Schemathesis' pytest plugin (lazy fixtures) does not run under pytest 9, so its Hypothesis strategies
are driven directly."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

pytestmark = pytest.mark.integration

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 40}  # per POST operation; GETs need few


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
def test_no_request_generated_from_the_schema_gets_a_5xx(served, mode):
    schema = schemathesis.openapi.from_url(f"{served['url']}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/rank", "/arms", "/health"}
    calls = []
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method != "post":
            continue  # the GETs take no parameters: nothing to break but the (optional) token header
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES[mode] if operation.method == "post" else 5, deadline=None,
                  derandomize=True, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=served["url"], timeout=60)
            calls.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    assert len(calls) >= 20 and all(code < 500 for code in calls)
