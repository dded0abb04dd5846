"""Schemathesis drives every operation of /openapi.json with generated requests.

No request may get a server error, and every answer must match what the schema
documents: status code, content type and body. Requests that fit the schema and
requests that break it (negative mode) are both generated.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.stack import TENANT_KEYS, ServiceStack

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _exercise(operation: APIOperation, mode: GenerationMode, base_url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Case) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {TENANT_KEYS['alpha']}"},
            checks=CHECKS,
        )

    exercise()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_honours_the_openapi_contract(
    contract_stack: ServiceStack, mode: GenerationMode
) -> None:
    # Driven from inside the test (not @schema.parametrize): the schema is served by the
    # stack this session starts, which does not exist yet when pytest collects.
    api_schema = schemathesis.openapi.from_url(f"{contract_stack.base_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:
        try:
            _exercise(operation, mode, contract_stack.base_url)
        except Unsatisfiable:
            # An operation without parameters or body (/healthz) has nothing to break.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as failure:  # collect every operation's failure, then report all
            failures.append(f"{operation.label}: {failure}")
    assert not failures, "\n\n".join(failures)
