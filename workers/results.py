"""What a job leaves in the blob store and the store: graphs, maps, the page, the result.

Every blob a worker derives (a graph, a map, the page, and a sharded run's blocks and
indexes) is registered for retention when written (`Store.register_graph_blobs`), so
that the sweep (`jobstate.retention`) leaves it alone until its result is stored; storing
the result then extends the lifetimes of the blobs it names to the result's own. Run
files are removed as soon as their job ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import BinaryIO

import scipy.sparse as sp

from jobstate.records import GraphFiles, JobRecord, ResultRecord, SetInput, utc_now
from jobstate.store.results import PutResultOutcome
from workers.geometry import Analysis, EmbeddingSet
from workers.report_page import embedding_map_files, render_report_page
from workers.runtime import WorkerRuntime


def put_blob(runtime: WorkerRuntime, writer: Callable[[BinaryIO], None], *, prefix: str) -> str:
    """Write a derived blob (a graph, a block, an index), kept RESULT_TTL_S at least.

    Returns its sha256.
    """
    staged = runtime.blobs.write_new(writer, prefix=prefix)
    try:
        runtime.blobs.upload(staged)  # the transfer, outside the lock
        with runtime.store.blob_lock(staged.sha256):
            runtime.blobs.commit(staged)
            runtime.store.register_graph_blobs([staged.sha256])
    finally:
        staged.discard()
    return staged.sha256


def discard_blobs(runtime: WorkerRuntime, sha256s: list[str]) -> None:
    """Remove derived blobs of a job that has no more use for them."""
    for sha256 in sha256s:
        with runtime.store.blob_lock(sha256):
            runtime.store.forget_graph_blob(sha256)
            if not runtime.store.blob_has_datasets(sha256):
                runtime.blobs.remove(sha256)


def discard_run_files(runtime: WorkerRuntime, job: JobRecord) -> None:
    """Remove the block and index files of every sharded attempt at the job."""
    for attempt in range(1, job.attempts + 1):
        run = runtime.store.get_run(job.tenant, job.id, attempt)
        if run is None:
            continue
        indexes = [s.approximate_index for s in run.plan.sets if s.approximate_index]
        discard_blobs(runtime, [*run.block_results.values(), *indexes])


def _store_graphs(runtime: WorkerRuntime, analysis: Analysis) -> dict[str, GraphFiles]:
    def put(matrix: sp.csr_matrix) -> str:
        return put_blob(
            runtime, lambda file: sp.save_npz(file, matrix, compressed=True), prefix="graph-"
        )

    return {
        name: GraphFiles(directed=put(result.directed), symmetric=put(result.symmetric))
        for name, result in analysis.sets.items()
    }


def store_result(
    runtime: WorkerRuntime,
    job: JobRecord,
    analysis: Analysis,
    *,
    sets: Sequence[EmbeddingSet | SetInput],
    attempt: int,
) -> PutResultOutcome:
    """Store the report, each set's graphs and 2-D map, and the report page.

    The blobs are written first; then the result record, the lifetimes of its blobs and
    the cache entry are registered together (`jobstate.store.results`), only while the
    job still runs as `attempt`.

    Parameters
    ----------
    runtime : WorkerRuntime
    job : JobRecord
        The job that made the analysis; the result takes its id.
    analysis : Analysis
        The report and graphs.
    sets : sequence of EmbeddingSet or SetInput
        The analysed sets, or their inputs, for the 2-D maps
        (:func:`workers.report_page.embedding_map_files`).
    attempt : int
        The attempt storing it: a stale one (the job was requeued) stores nothing.

    Returns
    -------
    PutResultOutcome
        Stored, kept the first (a copy of this attempt's last step got there first) or
        stale. The result id is the job's.
    """
    report_json = analysis.report.model_dump_json()
    map_files = embedding_map_files(
        analysis.report,
        sets,
        blobs=runtime.blobs,
        max_array_bytes=runtime.settings.array_limit_bytes,
    )
    maps = {
        name: put_blob(runtime, lambda file, data=data: file.write(data), prefix="map-")
        for name, data in map_files.items()
    }
    graphs = {
        name: files.model_copy(update={"map": maps.get(name)})
        for name, files in _store_graphs(runtime, analysis).items()
    }
    page = render_report_page(analysis.report, map_files)
    result = ResultRecord(
        id=job.id,
        report_json=report_json,
        etag=f'"{hashlib.sha256(report_json.encode()).hexdigest()[:32]}"',
        graphs=graphs,
        created_at=utc_now(),
        page=put_blob(runtime, lambda file: file.write(page), prefix="page-"),
    )
    return runtime.store.put_result(
        job.tenant,
        result,
        attempt=attempt,
        cache_key=job.cache_key if job.spec.cacheable else None,
    )
