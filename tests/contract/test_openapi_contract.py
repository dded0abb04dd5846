"""Schemathesis drives every operation of /openapi.json with generated requests.

No request may get a server error, and every answer must match what the schema
documents: status code, content type and body. Requests that fit the schema and
requests that break it (negative mode) are both generated.
"""

from __future__ import annotations

import pytest
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.stack import ServiceStack
from tests.schema_fuzz import operation_failures

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_honours_the_openapi_contract(
    contract_stack: ServiceStack, mode: GenerationMode
) -> None:
    failures = operation_failures(
        contract_stack.base_url,
        modes=[mode],
        checks=CHECKS,
        examples_per_operation=EXAMPLES_PER_OPERATION,
    )
    assert not failures, "\n\n".join(failures)
