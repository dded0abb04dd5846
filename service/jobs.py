"""The jobs service: submission, the result cache, idempotency, cancel, and results.

A submission is validated completely before anything is queued (datasets of the
tenant, array names, shapes and label counts from upload metadata, zero rows under the
cosine kernel, k < N), so that a worker only ever fails on what metadata cannot show.
Embed and study jobs are checked by `service.model_jobs`, as far as torch is not needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from api_schemas import (
    AnalysisParams,
    JobCreate,
    JobLinks,
    JobList,
    JobOut,
    JobProgress,
    JobStatus,
    Report,
)
from api_schemas.datasets import DatasetRef
from api_schemas.params import resolve_knn
from api_schemas.problems import FieldError
from jobstate.blobs import BlobStore
from jobstate.checks import check_query_shapes, check_set_shapes
from jobstate.errors import InvalidInputError
from jobstate.memory_budget import SHARD_ALIGNMENT, MemoryBudgetError, plan_solve_block
from jobstate.records import (
    JOB_ID_PATTERN,
    ArrayInput,
    DatasetRecord,
    JobRecord,
    JobSpec,
    ResultRecord,
    SetInput,
    StoredArray,
    new_job_id,
    utc_now,
)
from jobstate.store import CancelOutcome, Store, WebhookDelivery
from jobstate.version import ALGORITHM_VERSION
from jobstate.webhooks import WebhookPolicy, webhook_out
from service.auth import Tenant
from service.comparison_jobs import (
    as_named,
    compare_errors,
    comparison_params,
    named_sets,
    resolve_current,
)
from service.errors import ProblemError, invalid_input, not_found
from service.html import read_report_page
from service.model_jobs import resolve_model_job

GraphKind = Literal["symmetric", "directed"]

RETRY_AFTER_S = 1
QUOTA_RETRY_AFTER_S = 10

logger = logging.getLogger(__name__)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key_for(spec: JobSpec) -> str:
    """What makes two jobs' results identical: the algorithm, the params, the input bytes.

    Scoped per tenant by the store, so one tenant's result is never another's cache hit.
    An embed or study job is identified by its spec as given (defaults filled in) and
    the bytes of every upload it names.
    """
    if spec.kind != "sets":
        model_job = spec.embed if spec.kind == "embed" else spec.study
        assert model_job is not None
        model_content = {
            "algorithm_version": ALGORITHM_VERSION,
            "params": spec.params.model_dump(mode="json"),
            spec.kind: model_job.model_dump(mode="json"),
            "uploads": {upload.dataset: upload.sha256 for upload in spec.uploads},
        }
        return hashlib.sha256(canonical_json(model_content).encode()).hexdigest()

    def array(item: ArrayInput | None) -> dict[str, str] | None:
        return None if item is None else {"sha256": item.sha256, "array": item.array}

    def set_content(s: SetInput) -> dict[str, Any]:
        content = {
            "name": s.name,
            "embeddings": array(s.embeddings),
            "labels": array(s.labels),
            "ids": array(s.ids),
        }
        # Only a set with queries names them, so the key of a set without is unchanged.
        if s.query_embeddings is not None:
            content["query"] = {
                "embeddings": array(s.query_embeddings),
                "labels": array(s.query_labels),
            }
        return content

    content = {
        "algorithm_version": ALGORITHM_VERSION,
        "params": spec.params.model_dump(mode="json"),
        "sets": [set_content(s) for s in spec.sets],
    }
    # Only compare and drift jobs name these, so the keys of other jobs are unchanged.
    if spec.compare:
        content["compare"] = True
    if spec.drift is not None:
        content["drift"] = {
            "current": set_content(spec.drift.current),
            "threshold": spec.drift.threshold,
        }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def too_many_active_jobs(limit: int) -> ProblemError:
    return ProblemError(
        429,
        f"This tenant has {limit} jobs queued or running, its limit "
        "(NNKGEO_TENANT_MAX_ACTIVE_JOBS); submit again once one has finished.",
        slug="too-many-active-jobs",
        title="Too many active jobs",
        headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
    )


@dataclass(frozen=True)
class Submission:
    job: JobOut
    replayed: bool


@dataclass(frozen=True)
class StoredReport:
    json: str
    etag: str


@dataclass(frozen=True)
class GraphDownload:
    """A graph file, opened: its size and its bytes in chunks."""

    size: int
    chunks: Iterator[bytes]


def job_links(job_id: str, set_names: list[str]) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        self=base,
        report=f"{base}/report",
        report_html=f"{base}/report.html",
        cancel=f"{base}/cancel",
        graphs={name: f"{base}/graphs/{name}" for name in set_names},
    )


def to_job_out(job: JobRecord, delivery: WebhookDelivery | None = None) -> JobOut:
    """The job resource; `delivery` is its webhook's record, if it has a callback_url."""
    return JobOut(
        id=job.id,
        status=job.status,
        progress=job.progress,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cached=job.cached,
        error=job.error,
        links=job_links(job.id, [s.name for s in job.spec.sets]),
        webhook=None if job.callback_url is None else webhook_out(delivery),
    )


@dataclass(frozen=True)
class JobMemoryPolicy:
    """Refuses, at submission, a set that cannot fit the job memory budget in any blocks.

    The same estimate the worker blocks by (:mod:`jobstate.memory_budget`), at its
    smallest: one solve thread, and for a set that will be sharded, one shard of
    :data:`~workers.geometry.analysis.SHARD_ALIGNMENT` rows.
    """

    budget_bytes: int
    shard_min_points: int

    def check_set(self, shape: Sequence[int], *, params: AnalysisParams, field: str) -> None:
        n_points, dim = int(shape[0]), int(shape[1])
        rows = n_points if n_points < self.shard_min_points else min(n_points, SHARD_ALIGNMENT)
        try:
            plan_solve_block(
                n_points,
                dim,
                params.k,
                budget_bytes=self.budget_bytes,
                n_classes=n_points,
                rows=rows,
                threads=1,
                approximate=resolve_knn(params.knn, n_points) == "approximate",
            )
        except MemoryBudgetError as error:
            field_name = "params.k" if error.field == "params.k" else field
            raise MemoryBudgetError(field_name, error.message) from None

    def check_query(
        self, shape: Sequence[int], n_queries: int, *, params: AnalysisParams, field: str
    ) -> None:
        """The query solve, after the set's own: the set's and the queries' points in one
        float32 array, and the graphs of both held at once (so all their rows count)."""
        n_points, dim = int(shape[0]) + n_queries, int(shape[1])
        try:
            plan_solve_block(
                n_points,
                dim,
                params.k,
                budget_bytes=self.budget_bytes,
                n_classes=n_points,
                rows=n_points,
                threads=1,
            )
        except MemoryBudgetError as error:
            field_name = "params.k" if error.field == "params.k" else field
            raise MemoryBudgetError(field_name, error.message) from None


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        queue_for: Callable[[JobSpec], str],
        data_roots: Sequence[Path] = (),
        webhooks: WebhookPolicy | None = None,
        memory: JobMemoryPolicy | None = None,
        max_active_jobs: int = 0,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._queue_for = queue_for
        self._data_roots = tuple(data_roots)
        self._webhooks = webhooks or WebhookPolicy()
        self._memory = memory
        self._max_active_jobs = max_active_jobs

    # Submission -----------------------------------------------------------------------

    def submit(
        self, *, tenant: Tenant, request: JobCreate, idempotency_key: str | None
    ) -> Submission:
        """Validate, then answer from the cache or queue the job.

        With an Idempotency-Key, a repeat of the same body returns the first job; the
        same key with another body is refused (422). A refused request does not bind it.
        """
        job_id = new_job_id()
        if idempotency_key is not None:
            body_sha256 = hashlib.sha256(
                canonical_json(request.model_dump(mode="json")).encode()
            ).hexdigest()
            earlier = self._store.reserve_idempotency_key(
                tenant.name, idempotency_key, body_sha256=body_sha256, job_id=job_id
            )
            if earlier is not None:
                return self._replay(
                    tenant, earlier.job_id, same_body=earlier.body_sha256 == body_sha256
                )
        try:
            callback_url = self._callback_url(tenant, request)
            job = self._start(
                tenant, job_id, self._resolve(tenant, request), callback_url=callback_url
            )
        except BaseException:
            if idempotency_key is not None:
                # The request was refused or failed: a retry with the key is a new request.
                self._store.release_idempotency_key(tenant.name, idempotency_key)
            raise
        if idempotency_key is not None:
            self._store.confirm_idempotency_key(tenant.name, idempotency_key)
        return Submission(job=job, replayed=False)

    def _replay(self, tenant: Tenant, job_id: str, *, same_body: bool) -> Submission:
        if not same_body:
            raise ProblemError(
                422,
                "This Idempotency-Key was used with a different request body; use a new key "
                "for a new request.",
                slug="idempotency-key-reused",
                errors=[FieldError(field="header.Idempotency-Key", message="reused")],
            )
        job = self._store.get_job(tenant.name, job_id)
        if job is None:
            raise ProblemError(
                409,
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                slug="idempotency-key-in-flight",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return Submission(job=self._job_out(job), replayed=True)

    def _callback_url(self, tenant: Tenant, request: JobCreate) -> str | None:
        """The job's callback_url, once the operator's policy admits it (else a 422).

        Only the URL's text is checked: nothing is resolved or requested at submission.
        """
        if request.callback_url is None:
            return None
        url = str(request.callback_url)
        errors = self._webhooks.check_callback(tenant.name, url)
        if errors:
            raise invalid_input(errors)
        return url

    def _start(
        self, tenant: Tenant, job_id: str, spec: JobSpec, *, callback_url: str | None = None
    ) -> JobOut:
        cache_key = cache_key_for(spec)
        now = utc_now()
        cached = self._store.cached_result(tenant.name, cache_key) if spec.cacheable else None
        if cached is not None:
            job = JobRecord(
                id=job_id,
                tenant=tenant.name,
                status=JobStatus.succeeded,
                spec=spec,
                cache_key=cache_key,
                created_at=now,
                started_at=now,
                finished_at=now,
                progress=JobProgress(stage="succeeded", fraction=1.0),
                cached=True,
                result_id=cached.id,
                callback_url=callback_url,
            )
            self._store.create_job(job)
            return to_job_out(job)

        queue = self._queue_for(spec)
        job = JobRecord(
            id=job_id,
            tenant=tenant.name,
            status=JobStatus.queued,
            spec=spec,
            queue=queue,
            cache_key=cache_key,
            created_at=now,
            callback_url=callback_url,
        )
        # Counted before anything is stored; a cache hit (above) never counts.
        if not self._store.admit_active_job(tenant.name, job_id, limit=self._max_active_jobs):
            raise too_many_active_jobs(self._max_active_jobs)
        gone = self._store.pin_datasets(tenant.name, job_id, spec.dataset_ids())
        if gone:
            self._store.release_active_job(tenant.name, job_id)
            raise invalid_input(
                [FieldError(field="sets", message=f"dataset {d} was just deleted") for d in gone]
            )
        # The record and its analyze_sets message are stored together (the store's
        # outbox), and the message is sent at once. A broker that refuses it leaves the
        # job queued, and the workers' dispatcher sends it a few seconds later: the
        # submission is accepted either way, and no crash can strand the job.
        try:
            self._store.create_job(job)
        except BaseException:
            self._store.unpin_datasets(tenant.name, job_id, spec.dataset_ids())
            self._store.release_active_job(tenant.name, job_id)
            raise
        return to_job_out(job)

    def _resolve(self, tenant: Tenant, request: JobCreate) -> JobSpec:
        """Turn dataset references into exact blobs and arrays, checking all of them."""
        if request.kind in ("embed", "study"):
            return resolve_model_job(
                request,
                store=self._store,
                tenant=tenant.name,
                data_roots=self._data_roots,
                memory_budget_bytes=self._memory.budget_bytes if self._memory else None,
            )
        errors: list[FieldError] = []
        datasets: dict[str, DatasetRecord | None] = {}
        params = comparison_params(request)
        sets: list[SetInput] = []

        def resolve(ref: DatasetRef | None, field: str) -> tuple[ArrayInput, StoredArray] | None:
            if ref is None:
                return None
            if ref.dataset not in datasets:
                datasets[ref.dataset] = self._store.get_dataset(tenant.name, ref.dataset)
            dataset = datasets[ref.dataset]
            if dataset is None:
                errors.append(
                    FieldError(
                        field=f"{field}.dataset",
                        message=f"no dataset {ref.dataset}; upload it with POST /v1/datasets",
                    )
                )
                return None
            names = [array.name for array in dataset.arrays]
            if ref.array is None and len(names) != 1:
                errors.append(
                    FieldError(
                        field=f"{field}.array",
                        message=f"dataset {dataset.id} holds arrays {', '.join(names)}; "
                        "name one in `array`",
                    )
                )
                return None
            stored = dataset.array_named(ref.array if ref.array is not None else names[0])
            if stored is None:
                errors.append(
                    FieldError(
                        field=f"{field}.array",
                        message=f"dataset {dataset.id} has no array {ref.array!r}; it holds "
                        f"{', '.join(names)}",
                    )
                )
                return None
            resolved = ArrayInput(
                dataset=dataset.id, sha256=dataset.sha256, format=dataset.format, array=stored.name
            )
            return resolved, stored

        for where, set_spec in named_sets(request):
            embeddings = resolve(set_spec.embeddings, f"{where}.embeddings")
            labels = resolve(set_spec.labels, f"{where}.labels")
            ids = resolve(set_spec.ids, f"{where}.ids")
            query = set_spec.query
            query_embeddings = query_labels = None
            if query is not None:
                query_embeddings = resolve(query.embeddings, f"{where}.query.embeddings")
                query_labels = resolve(query.labels, f"{where}.query.labels")
            if (
                embeddings is None
                or (set_spec.labels is not None and labels is None)
                or (set_spec.ids is not None and ids is None)
                or (query is not None and query_embeddings is None)
                or (query is not None and query.labels is not None and query_labels is None)
            ):
                continue
            try:
                check_set_shapes(
                    name=set_spec.name,
                    embeddings_shape=embeddings[1].shape,
                    embeddings_dtype=embeddings[1].dtype,
                    labels_shape=labels[1].shape if labels else None,
                    labels_dtype=labels[1].dtype if labels else None,
                    ids_shape=ids[1].shape if ids else None,
                    params=params,
                )
                if self._memory is not None:
                    self._memory.check_set(
                        embeddings[1].shape, params=params, field=f"{where}.embeddings"
                    )
                if query_embeddings is not None:
                    check_query_shapes(
                        name=set_spec.name,
                        dim=int(embeddings[1].shape[1]),
                        set_has_labels=labels is not None,
                        embeddings_shape=query_embeddings[1].shape,
                        embeddings_dtype=query_embeddings[1].dtype,
                        labels_shape=query_labels[1].shape if query_labels else None,
                        labels_dtype=query_labels[1].dtype if query_labels else None,
                    )
                    if self._memory is not None:
                        self._memory.check_query(
                            embeddings[1].shape,
                            int(query_embeddings[1].shape[0]),
                            params=params,
                            field=f"{where}.query.embeddings",
                        )
            except InvalidInputError as error:
                field_name = as_named(error.field, set_spec.name, where)
                errors.append(FieldError(field=field_name, message=error.message))
                continue
            if params.kernel == "cosine" and embeddings[1].zero_rows:
                stored = embeddings[1]
                # Records stored before first_zero_row existed lack it.
                first = (
                    ""
                    if stored.first_zero_row is None
                    else f" (the first is row {stored.first_zero_row})"
                )
                errors.append(
                    FieldError(
                        field=f"{where}.embeddings",
                        message=f"{stored.zero_rows} rows are zero vectors{first}, which have "
                        "no direction under the cosine kernel; drop them or use "
                        "kernel='gaussian'",
                    )
                )
                continue
            if params.kernel == "cosine" and query_embeddings and query_embeddings[1].zero_rows:
                errors.append(
                    FieldError(
                        field=f"{where}.query.embeddings",
                        message=f"{query_embeddings[1].zero_rows} query rows are zero vectors, "
                        "which have no direction under the cosine kernel; drop them or use "
                        "kernel='gaussian'",
                    )
                )
                continue
            sets.append(
                SetInput(
                    name=set_spec.name,
                    embeddings=embeddings[0],
                    labels=labels[0] if labels else None,
                    ids=ids[0] if ids else None,
                    query_embeddings=query_embeddings[0] if query_embeddings else None,
                    query_labels=query_labels[0] if query_labels else None,
                )
            )
        drift = None
        if request.drift is not None:
            drift = resolve_current(
                request.drift,
                reference_resolved=bool(sets),
                resolve=resolve,
                params=params,
                memory=self._memory,
                errors=errors,
            )
        if request.compare is not None and len(sets) == 2:
            errors.extend(compare_errors(request.compare, resolve=resolve))
        if errors:
            raise invalid_input(errors)
        return JobSpec(sets=sets, params=params, compare=request.compare is not None, drift=drift)

    # Reading and cancelling -------------------------------------------------------------

    def _job(self, tenant: Tenant, job_id: str) -> JobRecord:
        job = self._store.get_job(tenant.name, job_id) if JOB_ID_PATTERN.match(job_id) else None
        if job is None:
            raise not_found(f"Job {job_id}")
        return job

    def _job_out(self, job: JobRecord) -> JobOut:
        # The delivery lives in a key of its own: read only for jobs that have one.
        delivery = (
            None
            if job.callback_url is None
            else self._store.get_webhook_delivery(job.tenant, job.id)
        )
        return to_job_out(job, delivery)

    def get(self, *, tenant: Tenant, job_id: str) -> JobOut:
        return self._job_out(self._job(tenant, job_id))

    def list(self, *, tenant: Tenant, limit: int, cursor: str | None) -> JobList:
        if cursor is not None and not JOB_ID_PATTERN.match(cursor):
            raise invalid_input(
                [FieldError(field="query.cursor", message="not a cursor this API returned")]
            )
        jobs, next_cursor = self._store.list_jobs(tenant.name, limit=limit, before=cursor)
        return JobList(items=[self._job_out(job) for job in jobs], next_cursor=next_cursor)

    def cancel(self, *, tenant: Tenant, job_id: str) -> JobOut:
        """Cancel a queued job at once; ask a running one to stop at its next checkpoint."""
        job = self._job(tenant, job_id)
        outcome = self._store.request_cancel(job, now=utc_now())
        if outcome is CancelOutcome.missing:
            raise not_found(f"Job {job_id}")
        if outcome is CancelOutcome.already_finished:
            current = self._job(tenant, job_id)
            raise ProblemError(
                409,
                f"Job {job_id} already {current.status.value}; there is nothing to cancel.",
                slug="job-finished",
            )
        return self._job_out(self._job(tenant, job_id))

    # Results ----------------------------------------------------------------------------

    def _result(self, tenant: Tenant, job_id: str) -> tuple[JobRecord, ResultRecord]:
        job = self._job(tenant, job_id)
        if job.status is not JobStatus.succeeded:
            if job.status.finished:
                detail = f"Job {job_id} {job.status.value}; it has no report."
                raise ProblemError(409, detail, slug="no-result")
            raise ProblemError(
                409,
                f"Job {job_id} is {job.status.value}; poll it until it has succeeded.",
                slug="job-not-finished",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        result = self._store.get_result(tenant.name, job.result_id) if job.result_id else None
        if result is None:
            raise ProblemError(
                410,
                f"The results of job {job_id} have expired (NNKGEO_RESULT_TTL_S); submit the "
                "job again.",
                slug="result-expired",
            )
        return job, result

    def report(self, *, tenant: Tenant, job_id: str) -> StoredReport:
        _, result = self._result(tenant, job_id)
        return StoredReport(json=result.report_json, etag=result.etag)

    def report_model(self, *, tenant: Tenant, job_id: str) -> Report:
        return Report.model_validate_json(self.report(tenant=tenant, job_id=job_id).json)

    def report_page(self, *, tenant: Tenant, job_id: str) -> bytes:
        """The report page the worker drew, naming job ``job_id`` (`service.html`)."""
        _, result = self._result(tenant, job_id)
        return read_report_page(result, self._blobs, job_id=job_id)

    def graph_file(
        self, *, tenant: Tenant, job_id: str, set_name: str, kind: GraphKind
    ) -> GraphDownload:
        """A set's graph, streamed from the blob store (the API keeps no copy)."""
        _, result = self._result(tenant, job_id)
        files = result.graphs.get(set_name)
        if files is None:
            names = ", ".join(result.graphs)
            raise not_found(f"Set {set_name!r} of job {job_id} (its sets: {names})")
        sha256 = files.sha256_of(kind)
        try:
            # Opened here, so that a blob swept since the result was read answers 410.
            return GraphDownload(
                size=self._blobs.size(sha256), chunks=self._blobs.iter_bytes(sha256)
            )
        except FileNotFoundError:
            raise ProblemError(
                410, f"The graphs of job {job_id} have expired.", slug="result-expired"
            ) from None
