"""Large jobs split into row blocks over three worker processes.

The module swaps the session's worker for three workers that shard any set of 8,192
points or more into blocks of 4,096 rows, so a 12,000-point set runs as three block
tasks. The reference results come from the session's usual (unsharded) worker, before
the swap, and from the engine in-process.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import httpx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from celery import Celery
from celery.result import AsyncResult

from api_schemas import AnalysisParams, JobStatus
from jobstate.dispatch import SOLVE_BLOCK_TASK, create_celery_app
from jobstate.records import RunProgress
from jobstate.settings import Settings
from jobstate.store import Store
from tests.integration.helpers import comparable, submit, upload_array, wait_for_status
from tests.integration.stack import Managed, ServiceStack, wait_until
from workers.geometry import Analysis, EmbeddingSet, analyze

pytestmark = pytest.mark.integration

SHARDING_SETTINGS = {
    "NNKGEO_SHARD_MIN_POINTS": "8192",
    "NNKGEO_SHARD_ROWS": "4096",
    # Three single-threaded workers share this machine's cores.
    "NNKGEO_WORKER_THREADS": "1",
}
BIG_POINTS = 12_000  # three blocks: 4096 + 4096 + 3808 rows
COMPARED_PARAMS = {"k": 30}


@dataclass(frozen=True)
class Workers:
    """The three sharding workers: the stack's own and two extra ones."""

    nodes: list[str]
    extras: list[Managed]


@dataclass(frozen=True)
class FinishedJob:
    job: dict[str, Any]
    report: dict[str, Any]
    graphs: dict[tuple[str, str], sp.csr_matrix]


def _finished_job(client: httpx.Client, job_id: str, *, timeout_s: float = 120) -> FinishedJob:
    job = wait_for_status(client, job_id, timeout_s=timeout_s)
    assert job["status"] == "succeeded", job
    graphs = {
        (name, kind): sp.load_npz(io.BytesIO(client.get(f"{link}?kind={kind}").content))
        for name, link in job["links"]["graphs"].items()
        for kind in ("directed", "symmetric")
    }
    return FinishedJob(job=job, report=client.get(job["links"]["report"]).json(), graphs=graphs)


def _assert_same_graph(actual: sp.csr_matrix, expected: sp.csr_matrix) -> None:
    assert actual.shape == expected.shape
    assert (actual != expected).nnz == 0


def _assert_graphs_match(finished: FinishedJob, expected: Analysis) -> None:
    for (name, kind), graph in finished.graphs.items():
        _assert_same_graph(graph, getattr(expected.sets[name], kind))


def _sets_body(datasets: dict[str, tuple[str, str]], **params: Any) -> dict[str, Any]:
    return {
        "sets": [
            {"name": name, "embeddings": {"dataset": emb}, "labels": {"dataset": labels}}
            for name, (emb, labels) in datasets.items()
        ],
        "params": params,
    }


@pytest.fixture(scope="module")
def store(stack: ServiceStack) -> Store:
    return Store.from_settings(Settings(redis_url=stack.redis_url))


@pytest.fixture(scope="module")
def celery(stack: ServiceStack) -> Celery:
    """A client of the stack's broker, to deliver block messages by hand."""
    return create_celery_app(Settings(redis_url=stack.redis_url))


@pytest.fixture(scope="module")
def big_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    centres = rng.standard_normal((8, 64)).astype(np.float32) * 2
    labels = rng.integers(0, 8, BIG_POINTS)
    points = centres[labels] + rng.standard_normal((BIG_POINTS, 64)).astype(np.float32)
    return points.astype(np.float32), labels % 4


def _upload_sets(
    client: httpx.Client,
    big_set: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
) -> dict[str, tuple[str, str]]:
    return {
        "big": (upload_array(client, big_set[0]), upload_array(client, big_set[1])),
        "digits": (upload_array(client, digits[0]), upload_array(client, digits[1])),
    }


@pytest.fixture(scope="module")
def single_task_result(
    beta: httpx.Client,
    stack: ServiceStack,
    big_set: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
) -> FinishedJob:
    """The job run by the session's usual worker, as one task (tenant beta: no cache
    hit for alpha's sharded run of the same inputs)."""
    datasets = _upload_sets(beta, big_set, digits)
    response = submit(beta, _sets_body(datasets, **COMPARED_PARAMS))
    assert response.status_code == 202, response.text
    return _finished_job(beta, response.json()["id"])


@pytest.fixture(scope="module")
def sharding_workers(stack: ServiceStack, single_task_result: FinishedJob) -> Iterator[Workers]:
    """Three workers that shard; the session's usual worker is back afterwards."""
    assert stack.worker is not None
    stack.worker.stop()
    main_node = stack.start_worker(**SHARDING_SETTINGS)
    main = stack.worker
    extras: list[Managed] = []
    nodes = [main_node]
    try:
        for _ in range(2):
            nodes.append(stack.start_worker(**SHARDING_SETTINGS))
            extras.append(stack.worker)
        stack.worker = main
        for node in nodes:
            stack.wait_ready(worker=node)
        yield Workers(nodes=nodes, extras=extras)
    finally:
        stack.worker = main
        for extra in extras:
            extra.stop()
        main.stop()
        stack.wait_ready(worker=stack.start_worker())


@pytest.fixture(scope="module")
def in_process(
    big_set: tuple[np.ndarray, np.ndarray], digits: tuple[np.ndarray, np.ndarray]
) -> Analysis:
    return analyze(
        [EmbeddingSet("big", *big_set), EmbeddingSet("digits", *digits)],
        params=AnalysisParams(**COMPARED_PARAMS),
    )


@pytest.fixture(scope="module")
def alpha_sets(
    alpha: httpx.Client,
    big_set: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
) -> dict[str, tuple[str, str]]:
    return _upload_sets(alpha, big_set, digits)


@pytest.fixture(scope="module")
def sharded_result(
    alpha: httpx.Client, alpha_sets: dict[str, tuple[str, str]], sharding_workers: Workers
) -> FinishedJob:
    response = submit(alpha, _sets_body(alpha_sets, **COMPARED_PARAMS))
    assert response.status_code == 202, response.text
    return _finished_job(alpha, response.json()["id"])


def _run(store: Store, job_id: str, attempt: int = 1) -> RunProgress:
    run = store.get_run("alpha", job_id, attempt)
    assert run is not None, f"job {job_id} has no sharded run {attempt}"
    return run


def _blob_exists(stack: ServiceStack, sha256: str) -> bool:
    return (stack.data_dir / "blobs" / sha256[:2] / sha256).is_file()


def _wait_until_queues_drain(store: Store) -> None:
    wait_until(
        lambda: sum(store.queue_lengths(["cpu", "gpu"]).values()) == 0,
        timeout_s=60,
        what="the workers to take every queued message",
    )


def test_sharded_job_gives_the_graphs_and_report_of_the_single_task_job_and_of_analyze(
    sharded_result: FinishedJob,
    single_task_result: FinishedJob,
    in_process: Analysis,
    store: Store,
    stack: ServiceStack,
) -> None:
    run = _run(store, sharded_result.job["id"])
    assert [s.blocks for s in run.plan.sets] == [
        [(0, 4096), (4096, 8192), (8192, BIG_POINTS)],
        [(0, 1797)],
    ]
    assert run.complete
    assert set(run.deliveries) == {"0:0", "0:1", "0:2", "1:0", "assemble"}
    assert store.get_run("beta", single_task_result.job["id"], 1) is None
    assert comparable(sharded_result.report) == comparable(single_task_result.report)
    assert comparable(sharded_result.report) == comparable(
        in_process.report.model_dump(mode="json")
    )
    for key, graph in sharded_result.graphs.items():
        _assert_same_graph(graph, single_task_result.graphs[key])
    _assert_graphs_match(sharded_result, in_process)
    assert sharded_result.job["progress"] == {"stage": "succeeded", "fraction": 1.0}
    # The block files served their purpose; the graphs stay.
    assert not any(_blob_exists(stack, sha) for sha in run.block_results.values())


def test_block_delivered_again_after_the_job_finished_changes_nothing(
    alpha: httpx.Client, sharded_result: FinishedJob, store: Store, celery: Celery
) -> None:
    job_id = sharded_result.job["id"]
    before = _run(store, job_id)
    finished_before = store.job_metrics().finished.get("succeeded", 0)
    task_ids = [
        celery.send_task(SOLVE_BLOCK_TASK, args=[job_id, "alpha", 1, 0, block], queue="cpu").id
        for block in range(3)
    ]

    outcomes = [celery.AsyncResult(task_id).get(timeout=60) for task_id in task_ids]

    assert outcomes == ["stale"] * 3
    assert _run(store, job_id) == before
    assert store.job_metrics().finished.get("succeeded", 0) == finished_before
    again = alpha.get(f"/v1/jobs/{job_id}").json()
    assert again["progress"] == sharded_result.job["progress"]
    assert alpha.get(sharded_result.job["links"]["report"]).json() == sharded_result.report


def test_block_delivered_twice_while_the_job_runs_is_counted_once(
    alpha: httpx.Client,
    alpha_sets: dict[str, tuple[str, str]],
    big_set: tuple[np.ndarray, np.ndarray],
    sharding_workers: Workers,
    store: Store,
    celery: Celery,
) -> None:
    job_id = submit(alpha, _sets_body({"big": alpha_sets["big"]}, k=31)).json()["id"]
    progress_seen: list[tuple[str, float]] = []
    duplicate: AsyncResult | None = None
    duplicated_block = ""
    deadline = time.monotonic() + 120
    while (job := alpha.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        progress_seen.append((job["progress"]["stage"], job["progress"]["fraction"]))
        run = store.get_run("alpha", job_id, 1)
        if duplicate is None and run is not None and run.block_results:
            duplicated_block = next(iter(run.block_results))
            set_index, block_index = map(int, duplicated_block.split(":"))
            duplicate = celery.send_task(
                SOLVE_BLOCK_TASK, args=[job_id, "alpha", 1, set_index, block_index], queue="cpu"
            )
        time.sleep(0.02)

    assert duplicate is not None
    assert duplicate.get(timeout=60) in ("recorded", "stale")
    finished = _finished_job(alpha, job_id)
    run = _run(store, job_id)
    assert run.complete
    assert run.deliveries[duplicated_block] == 1
    # Progress counts finished blocks (0.9 of the way for all three), then the metrics.
    fractions = [fraction for _, fraction in progress_seen]
    assert fractions == sorted(fractions)
    assert {f for stage, f in progress_seen if stage == "blocks"} <= {0.0, 0.3, 0.6, 0.9}
    expected = analyze([EmbeddingSet("big", *big_set)], params=AnalysisParams(k=31))
    assert comparable(finished.report) == comparable(expected.report.model_dump(mode="json"))
    _assert_graphs_match(finished, expected)


def test_sharded_approximate_job_shares_one_index_and_reports_the_missing_gpu(
    alpha: httpx.Client,
    alpha_sets: dict[str, tuple[str, str]],
    big_set: tuple[np.ndarray, np.ndarray],
    sharding_workers: Workers,
    store: Store,
    stack: ServiceStack,
) -> None:
    params = {"k": 30, "knn": "approximate", "device": "cuda"}
    job_id = submit(alpha, _sets_body({"big": alpha_sets["big"]}, **params)).json()["id"]

    finished = _finished_job(alpha, job_id)

    run = _run(store, job_id)
    index_sha = run.plan.sets[0].approximate_index
    assert index_sha is not None
    assert not _blob_exists(stack, index_sha)
    # The workers build the index on one thread, which makes faiss's HNSW deterministic:
    # built the same way here, it is the index every block searched.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        expected = analyze([EmbeddingSet("big", *big_set)], params=AnalysisParams(**params))
    finally:
        faiss.omp_set_num_threads(threads)
    assert comparable(finished.report) == comparable(expected.report.model_dump(mode="json"))
    _assert_graphs_match(finished, expected)
    set_report = finished.report["sets"][0]
    assert set_report["graph"]["knn_recall"] >= 0.95
    if not torch.cuda.is_available():
        assert any("no GPU is present" in warning for warning in set_report["warnings"])


def test_cancel_stops_the_blocks_that_have_not_started(
    alpha: httpx.Client, sharding_workers: Workers, store: Store, stack: ServiceStack
) -> None:
    points = np.random.default_rng(5).standard_normal((6 * 4096, 64)).astype(np.float32)
    job_id = submit(
        alpha,
        {
            "sets": [{"name": "six", "embeddings": {"dataset": upload_array(alpha, points)}}],
            "params": {"k": 50},
        },
    ).json()["id"]
    wait_until(
        lambda: _run(store, job_id).deliveries,
        timeout_s=60,
        interval_s=0.02,
        what="a first block to start",
    )

    assert alpha.post(f"/v1/jobs/{job_id}/cancel").status_code == 202

    canceled = wait_for_status(alpha, job_id, timeout_s=60)
    assert canceled["status"] == "canceled"
    _wait_until_queues_drain(store)
    run = _run(store, job_id)
    assert run.plan.total_blocks == 6
    # At most one block per worker had started; the others never ran.
    assert len(run.deliveries) <= len(sharding_workers.nodes)
    assert len(run.block_results) < 6
    assert "assemble" not in run.deliveries
    assert not any(_blob_exists(stack, sha) for sha in run.block_results.values())
    record = store.get_job("alpha", job_id)
    assert record is not None
    assert record.status is JobStatus.canceled


def test_worker_killed_mid_block_is_replaced_and_the_job_ends_with_the_same_result(
    alpha: httpx.Client,
    alpha_sets: dict[str, tuple[str, str]],
    big_set: tuple[np.ndarray, np.ndarray],
    sharding_workers: Workers,
    store: Store,
) -> None:
    extra_by_node = dict(zip(sharding_workers.nodes[1:], sharding_workers.extras, strict=True))
    succeeded_before = store.job_metrics().finished.get("succeeded", 0)
    job_id = submit(alpha, _sets_body({"big": alpha_sets["big"]}, k=50)).json()["id"]

    def block_running_on_an_extra_worker() -> str | None:
        run = _run(store, job_id)
        return next(
            (
                block
                for block, node in run.started_by.items()
                if node in extra_by_node and block not in run.block_results
            ),
            None,
        )

    wait_until(
        block_running_on_an_extra_worker,
        timeout_s=60,
        interval_s=0.02,
        what="a block to start on an extra worker",
    )
    block = block_running_on_an_extra_worker()
    assert block is not None
    killed_node = _run(store, job_id).started_by[block]
    victim = extra_by_node[killed_node]
    # The whole worker dies, as with a host crash: its unacknowledged block goes back to
    # the queue after the visibility timeout, for one of the two left.
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)

    finished = _finished_job(alpha, job_id, timeout_s=120)

    run = _run(store, job_id)
    assert run.deliveries[block] == 2
    assert run.started_by[block] != killed_node
    assert store.job_metrics().finished["succeeded"] == succeeded_before + 1
    expected = analyze([EmbeddingSet("big", *big_set)], params=AnalysisParams(k=50))
    assert comparable(finished.report) == comparable(expected.report.model_dump(mode="json"))
    _assert_graphs_match(finished, expected)
