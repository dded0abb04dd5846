"""Small helpers the integration tests share: encoding arrays, uploading, polling."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

FINISHED = ("succeeded", "failed", "canceled")
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client: httpx.Client, content: bytes, *, fmt: str = "npy") -> httpx.Response:
    return client.post(f"/v1/datasets?format={fmt}", content=content, headers=OCTET_STREAM)


def upload_array(client: httpx.Client, array: np.ndarray) -> str:
    response = upload(client, npy_bytes(array))
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def job_body(
    embeddings: str, labels: str | None = None, *, name: str = "digits", **params: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "embeddings": {"dataset": embeddings}}
    if labels is not None:
        spec["labels"] = {"dataset": labels}
    return {"sets": [spec], "params": params}


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/jobs", json=body, headers=headers)


def wait_for_status(
    client: httpx.Client,
    job_id: str,
    statuses: tuple[str, ...] = FINISHED,
    *,
    timeout_s: float = 60,
    interval_s: float = 0.1,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s: {job}")
        time.sleep(interval_s)


def assert_problem(response: httpx.Response, status: int, *, field: str | None = None) -> dict:
    """The response is an RFC 9457 problem of this status (naming `field`, if given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["type"]
    if field is not None:
        fields = [error["field"] for error in problem.get("errors") or []]
        assert any(field in name for name in fields), (field, problem)
    return problem


def blob_files(data_dir: Path) -> set[Path]:
    return {path for path in (data_dir / "blobs").rglob("*") if path.is_file()}


def staging_files(data_dir: Path) -> list[Path]:
    staging = data_dir / "tmp"
    return sorted(staging.iterdir()) if staging.is_dir() else []


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs between two runs on the same inputs."""
    trimmed = {key: value for key, value in report.items() if key != "job_id"}
    trimmed["sets"] = [
        {key: value for key, value in set_report.items() if key != "timings"}
        for set_report in report["sets"]
    ]
    return trimmed
