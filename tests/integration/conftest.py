"""The integration session: a real Redis, a real Celery worker, a real uvicorn API.

Started once per session (see `stack.py`), torn down at its end; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.integration.helpers import upload_array
from tests.integration.stack import ServiceStack

# Small enough for the bad-input corpus to cross cheaply, big enough for every test job.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
# Small time limits, so that the tests of them take seconds; a short visibility timeout,
# so that the broker's redeliveries (dropped while a lease is live) happen in the tests too.
STACK_SETTINGS = {
    "NNKGEO_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "10",
    "NNKGEO_TASK_TIME_LIMIT_S": "12",
    "NNKGEO_VISIBILITY_TIMEOUT_S": "14",
    "NNKGEO_UNACKED_RESTORE_INTERVAL_S": "1",
    # Short leases: a dead worker's job is requeued within seconds (see test_leases).
    "NNKGEO_LEASE_S": "3",
    "NNKGEO_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    service_stack = ServiceStack(tmp_path_factory.mktemp("stack"), settings=STACK_SETTINGS)
    try:
        service_stack.start()
        yield service_stack
    finally:
        service_stack.stop()


@pytest.fixture(scope="session")
def alpha(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client("alpha") as client:
        yield client


@pytest.fixture(scope="session")
def beta(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client("beta") as client:
        yield client


@pytest.fixture(scope="session")
def anonymous(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(None) as client:
        yield client


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


@pytest.fixture(scope="session")
def alpha_digits(alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]) -> tuple[str, str]:
    """Dataset ids of the digits embeddings and labels, uploaded by tenant alpha."""
    embeddings, labels = digits
    return upload_array(alpha, embeddings), upload_array(alpha, labels)


@pytest.fixture(scope="session")
def long_running_embeddings(alpha: httpx.Client) -> str:
    """Random points whose analysis keeps the worker busy for several seconds."""
    points = np.random.default_rng(7).standard_normal((12_000, 64)).astype(np.float32)
    return upload_array(alpha, points)
