"""Schemathesis fuzzing of the published OpenAPI schema against the live Ray Serve endpoint: valid and
invalid requests generated from the schema, no 5xx. Bounded (max_examples) to keep the suite's wall time."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.integration


@pytest.fixture
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served['url']}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_request_generated_from_the_schema_gets_a_5xx(case, served):
    response = case.call(base_url=served["url"], timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
