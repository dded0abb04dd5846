"""Blobs in S3 alone: an API and two workers with separate data directories.

The stack shares only Redis and a SeaweedFS S3 server, as on three hosts: an upload
reaches the workers, a sharded run's blocks reach the worker that assembles them, and
graphs and the page reach the API only through the object store. The API's data
directory stays empty (it keeps no copy of an upload), and deleting a dataset deletes
its object.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import obstore
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits

from jobstate.blobs import ObjectBlobStore
from jobstate.retention import sweep_expired_graphs
from jobstate.settings import Settings
from jobstate.store import Store
from tests.integration.helpers import npy_bytes, submit, upload, wait_for_status
from tests.integration.s3_stack import MultiHostStack, SeaweedS3
from tests.integration.stack import wait_until

pytestmark = pytest.mark.integration

BIG_POINTS = 10_000  # three blocks: 4096 + 4096 + 1808 rows (blocks align to 4,096)
STACK_SETTINGS = {
    "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "50",
    "NNKGEO_TASK_TIME_LIMIT_S": "55",
    "NNKGEO_VISIBILITY_TIMEOUT_S": "60",
    "NNKGEO_UNACKED_RESTORE_INTERVAL_S": "1",
    "NNKGEO_SHARD_MIN_POINTS": "8192",
    "NNKGEO_SHARD_ROWS": "4096",
    "NNKGEO_WORKER_THREADS": "1",
    "NNKGEO_LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the session (it starts in seconds, stops cleanly in 20-30 s)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def s3_stack(
    tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3
) -> Iterator[MultiHostStack]:
    stack = MultiHostStack(
        tmp_path_factory.mktemp("s3stack"), settings=dict(STACK_SETTINGS), s3=s3_server
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(s3_stack: MultiHostStack) -> Iterator[httpx.Client]:
    with s3_stack.client("alpha") as alpha:
        yield alpha


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def _object_keys(s3_stack: MultiHostStack) -> set[str]:
    assert s3_stack.s3 is not None
    store = s3_stack.s3.object_store(s3_stack.prefix)
    return {meta["path"] for batch in obstore.list(store) for meta in batch}


def _key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def _files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()] if directory.exists() else []


def _assert_api_kept_no_upload(s3_stack: MultiHostStack, *sha256s: str) -> None:
    """No staging file, and no copy of any blob, in the API's data directory.

    Uploads stream to the store, and graphs stream from it to the client: the API's data
    directory stays empty, even after graph downloads.
    """
    api_files = _files(s3_stack.dir_of("api"))
    assert api_files == [], api_files
    assert not {path.name for path in api_files} & set(sha256s)


def _upload(client: httpx.Client, array: np.ndarray) -> tuple[str, str]:
    content = npy_bytes(array)
    response = upload(client, content)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"], hashlib.sha256(content).hexdigest()


def _run_job(
    client: httpx.Client, points: np.ndarray, labels: np.ndarray
) -> tuple[dict, list[str]]:
    (emb, emb_sha), (lab, lab_sha) = _upload(client, points), _upload(client, labels)
    body = {
        "sets": [{"name": "s", "embeddings": {"dataset": emb}, "labels": {"dataset": lab}}],
        "params": {"k": 10},
    }
    response = submit(client, body)
    assert response.status_code == 202, response.text
    job = wait_for_status(client, response.json()["id"], timeout_s=180)
    assert job["status"] == "succeeded", job
    return job, [emb_sha, lab_sha]


def _check_outputs(client: httpx.Client, job: dict, points: int) -> None:
    report = client.get(job["links"]["report"])
    assert report.status_code == 200
    for kind in ("directed", "symmetric"):
        answer = client.get(f"{job['links']['graphs']['s']}?kind={kind}")
        assert answer.status_code == 200, answer.text
        graph = sp.load_npz(io.BytesIO(answer.content))
        assert graph.shape == (points, points) and graph.nnz > 0
    page = client.get(f"/v1/jobs/{job['id']}/report.html")
    assert page.status_code == 200 and job["id"] in page.text


def test_upload_goes_to_s3_and_leaves_nothing_on_the_api(
    s3_stack: MultiHostStack, client: httpx.Client
) -> None:
    array = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    _, sha256 = _upload(client, array)
    keys = _object_keys(s3_stack)
    assert _key(sha256) in keys
    # sent under a temporary key, copied to its address: the temporary object is gone
    assert not [key for key in keys if key.startswith("staging/")], keys
    assert _files(s3_stack.dir_of("api")) == []  # no staging file, and no cache entry


def test_plain_job_runs_across_hosts(
    s3_stack: MultiHostStack, client: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits[0][:500], digits[1][:500]
    job, uploads = _run_job(client, points, labels)
    _check_outputs(client, job, 500)
    store = Store.from_settings(Settings(redis_url=s3_stack.redis_url))
    assert store.get_run("alpha", job["id"], 1) is None  # not sharded
    _assert_api_kept_no_upload(s3_stack, *uploads)
    assert not s3_stack.data_dir.exists()  # nobody used the shared default


def test_sharded_job_runs_across_hosts(s3_stack: MultiHostStack, client: httpx.Client) -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, BIG_POINTS)
    centres = rng.standard_normal((4, 16)).astype(np.float32) * 3
    points = centres[labels] + rng.standard_normal((BIG_POINTS, 16)).astype(np.float32)
    job, uploads = _run_job(client, points, labels)
    store = Store.from_settings(Settings(redis_url=s3_stack.redis_url))
    run = store.get_run("alpha", job["id"], 1)
    assert run is not None and run.plan.total_blocks == 3
    _check_outputs(client, job, len(points))
    _assert_api_kept_no_upload(s3_stack, *uploads)


def test_deleting_a_dataset_deletes_its_object(
    s3_stack: MultiHostStack, client: httpx.Client
) -> None:
    array = np.random.default_rng(5).standard_normal((200, 4)).astype(np.float32)
    dataset_id, sha256 = _upload(client, array)
    assert _key(sha256) in _object_keys(s3_stack)
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert _key(sha256) not in _object_keys(s3_stack)


def test_expired_graph_blobs_are_swept_from_s3(s3_stack: MultiHostStack, tmp_path: Path) -> None:
    """Retention as a worker runs it, on a store whose results live one second."""
    assert s3_stack.s3 is not None
    blobs = ObjectBlobStore(s3_stack.s3.object_store(s3_stack.prefix), tmp_path)
    store = Store.from_settings(Settings(redis_url=s3_stack.redis_url, result_ttl_s=1, job_ttl_s=1))
    staged = blobs.write_new(lambda file: file.write(b"a graph that expires"), prefix="graph-")
    with store.blob_lock(staged.sha256):
        blobs.commit(staged)
        store.register_graph_blobs([staged.sha256])
    assert _key(staged.sha256) in _object_keys(s3_stack)
    assert sweep_expired_graphs(store, blobs) == 0  # still live
    wait_until(
        lambda: sweep_expired_graphs(store, blobs) == 1, timeout_s=10, what="the graph to expire"
    )
    assert _key(staged.sha256) not in _object_keys(s3_stack)
