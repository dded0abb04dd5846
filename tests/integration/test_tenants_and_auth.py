"""One tenant never sees another's datasets, jobs, reports, graphs or cache entries."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.integration.helpers import (
    assert_problem,
    job_body,
    npy_bytes,
    submit,
    upload,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import TENANT_KEYS

pytestmark = pytest.mark.integration

WALL_PARAMS = {"k": 35}


@pytest.fixture(scope="module")
def alpha_job(alpha: httpx.Client, alpha_digits: tuple[str, str]) -> dict:
    job = submit(alpha, job_body(*alpha_digits, **WALL_PARAMS)).json()
    return wait_for_status(alpha, job["id"])


def test_another_tenants_dataset_is_not_found(
    alpha_digits: tuple[str, str], beta: httpx.Client
) -> None:
    embeddings_id, _ = alpha_digits

    assert_problem(beta.get(f"/v1/datasets/{embeddings_id}"), 404)
    assert_problem(beta.delete(f"/v1/datasets/{embeddings_id}"), 404)


def test_another_tenants_job_and_its_results_are_not_found(
    alpha_job: dict, beta: httpx.Client
) -> None:
    links = alpha_job["links"]

    for url in (links["self"], links["report"], links["report_html"], links["graphs"]["digits"]):
        assert_problem(beta.get(url), 404)
    assert_problem(beta.post(links["cancel"]), 404)
    listed = beta.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert alpha_job["id"] not in [job["id"] for job in listed]


def test_another_tenants_dataset_cannot_be_used_in_a_job(
    alpha_digits: tuple[str, str], beta: httpx.Client
) -> None:
    response = submit(beta, job_body(*alpha_digits, **WALL_PARAMS))

    problem = assert_problem(response, 422, field="embeddings.dataset")
    assert "no dataset" in problem["detail"]


def test_same_bytes_give_each_tenant_its_own_dataset_and_no_cache_hit(
    alpha_job: dict,
    alpha_digits: tuple[str, str],
    beta: httpx.Client,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    embeddings, labels = digits
    first = upload(beta, npy_bytes(embeddings))
    beta_embeddings = first.json()["id"]
    beta_labels = upload_array(beta, labels)

    assert beta_embeddings != alpha_digits[0]
    assert first.json()["sha256"]
    response = submit(beta, job_body(beta_embeddings, beta_labels, **WALL_PARAMS))

    assert response.status_code == 202
    assert response.json()["cached"] is False
    finished = wait_for_status(beta, response.json()["id"])
    assert finished["status"] == "succeeded"
    # Now beta has its own cache entry: a resubmission is a hit for beta.
    again = submit(beta, job_body(beta_embeddings, beta_labels, **WALL_PARAMS)).json()
    assert again["cached"] is True


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer wrong-key-0123456789abcdef", "invalid_token"),
        (f"Basic {TENANT_KEYS['alpha']}", None),
        ("Bearer", None),
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/datasets/ds_00000000000000000000000000000000"),
        ("POST", "/v1/datasets?format=npy"),
    ],
)
def test_requests_without_a_valid_key_are_unauthorized(
    anonymous: httpx.Client, authorization: str | None, error: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    if method == "POST":
        headers["Content-Type"] = (
            "application/octet-stream" if "datasets" in path else "application/json"
        )

    response = anonymous.request(method, path, headers=headers, content=b"{}")

    assert_problem(response, 401)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if error:
        assert f'error="{error}"' in challenge
