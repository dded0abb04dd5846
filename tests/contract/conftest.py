"""The contract session: its own real stack (Redis, worker, API), as in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.stack import ServiceStack


@pytest.fixture(scope="session")
def contract_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    service_stack = ServiceStack(
        tmp_path_factory.mktemp("contract-stack"),
        settings={"NNKGEO_MAX_UPLOAD_BYTES": str(1024 * 1024)},
    )
    try:
        service_stack.start()
        yield service_stack
    finally:
        service_stack.stop()
