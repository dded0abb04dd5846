"""An API whose Redis is gone stays up and says so: 503 problems, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.integration.helpers import assert_problem, job_body, npy_bytes, upload
from tests.integration.stack import ServiceStack, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_without_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    stack = ServiceStack(
        Path(tmp_path_factory.mktemp("no-redis")),
        settings={"NNKGEO_READINESS_TIMEOUT_S": "0.5"},
    )
    stack.root.mkdir(parents=True, exist_ok=True)
    stack.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack.start_api()
    try:
        stack.wait_live()
        yield stack
    finally:
        stack.stop()


def test_liveness_holds_and_readiness_fails_without_redis(api_without_redis: ServiceStack) -> None:
    with api_without_redis.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert_problem(anonymous.get("/readyz"), 503, field="redis")


def test_requests_needing_redis_get_503_without_redis(api_without_redis: ServiceStack) -> None:
    with api_without_redis.client("alpha") as alpha:
        listed = alpha.get("/v1/jobs")
        submitted = alpha.post("/v1/jobs", json=job_body("ds_00000000000000000000000000000000"))
        uploaded = upload(alpha, npy_bytes(np.ones((4, 2), np.float32)))

    for response in (listed, submitted, uploaded):
        problem = assert_problem(response, 503)
        assert response.headers["retry-after"]
        assert "Traceback" not in problem.get("detail", "")
