"""Schemathesis over every operation of a live stack's /openapi.json, as tests share it.

Driven from inside a test (not ``@schema.parametrize``): the schema is served by a stack
the session starts, which does not exist yet when pytest collects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.schemas import APIOperation

from tests.integration.stack import TENANT_KEYS


def _exercise(
    operation: APIOperation,
    mode: GenerationMode,
    base_url: str,
    *,
    checks: Sequence[Callable[..., Any]],
    examples: int,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Case) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {TENANT_KEYS['alpha']}"},
            checks=list(checks),
        )

    exercise()


def operation_failures(
    base_url: str,
    *,
    modes: Sequence[GenerationMode],
    checks: Sequence[Callable[..., Any]],
    examples_per_operation: int,
    min_operations: int = 11,
) -> list[str]:
    """Every operation in every mode; one line per operation that failed a check."""
    api_schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= min_operations
    failures: list[str] = []
    for operation in operations:
        for mode in modes:
            try:
                _exercise(operation, mode, base_url, checks=checks, examples=examples_per_operation)
            except Unsatisfiable:
                # An operation without parameters or body (/healthz) has nothing to break.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as failure:  # collect every operation's failure, report all
                failures.append(f"{operation.label} ({mode.value}): {failure}")
    return failures
