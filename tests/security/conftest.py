"""The security session: a real stack (Redis, a worker, uvicorn) attacked as a tenant would.

Its worker runs under an address-space limit (as every test worker does, see
`tests/integration/stack.py`), its models under a 1 GiB budget and a few CPU seconds, so
that the attacks that exhaust memory or loop fail fast and never take the host down.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.integration.helpers import upload
from tests.integration.stack import ServiceStack

# The job memory budget: big enough for the digits jobs, too small for k = 1,024 on
# 1,100 points (about 630 MiB in its smallest blocks), which is then refused at submission.
MODEL_MEMORY_BYTES = 512 * 1024**2
MODEL_CPU_SECONDS = 6
SOFT_TIME_LIMIT_S = 60
SECURITY_SETTINGS = {
    "NNKGEO_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024),
    # Below the upload limit, so that a test can tell which of the two refused a file.
    "NNKGEO_MAX_ARRAY_BYTES": str(4 * 1024 * 1024),
    "NNKGEO_WORKER_MEMORY_BYTES": str(MODEL_MEMORY_BYTES),
    "NNKGEO_MODEL_CPU_SECONDS": str(MODEL_CPU_SECONDS),
    "NNKGEO_WORKER_THREADS": "1",
    "NNKGEO_TASK_SOFT_TIME_LIMIT_S": str(SOFT_TIME_LIMIT_S),
    "NNKGEO_TASK_TIME_LIMIT_S": str(SOFT_TIME_LIMIT_S + 10),
    "NNKGEO_VISIBILITY_TIMEOUT_S": str(SOFT_TIME_LIMIT_S + 20),
    # Secrets a model must never see: the worker has them, its model's process must not.
    "NNKGEO_WEBHOOK_SECRETS": "alpha:whsec_c2VjdXJpdHktdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ==",
    "AWS_SECRET_ACCESS_KEY": "security-test-aws-secret",
}


@pytest.fixture(scope="session")
def security_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    stack = ServiceStack(tmp_path_factory.mktemp("security-stack"), settings=SECURITY_SETTINGS)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def tenant(security_stack: ServiceStack) -> Iterator[httpx.Client]:
    with security_stack.client("alpha") as client:
        yield client


@pytest.fixture(scope="session")
def digits_upload(tenant: httpx.Client) -> str:
    """An npz of 300 digits (`inputs`, 64 features, and `labels`), uploaded by alpha."""
    data = load_digits()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        inputs=data.data[:300].astype(np.float32),
        labels=data.target[:300].astype(np.int64),
    )
    response = upload(tenant, buffer.getvalue(), fmt="npz")
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]
