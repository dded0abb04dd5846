"""The asynchronous client: :class:`AsyncClient`, the same methods as coroutines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from api_schemas import (
    AnalysisParams,
    DatasetList,
    DatasetOut,
    EmbeddingSetSpec,
    JobCreate,
    JobList,
    JobOut,
    Report,
)
from nnkgeo.client.analyze import analyze_plan
from nnkgeo.client.calls import every_item_async
from nnkgeo.client.compare import compare_plan, drift_plan
from nnkgeo.client.jobs import (
    DEFAULT_POLL_INTERVAL_S,
    SetInputs,
    cancel_call,
    job_call,
    jobs_call,
    submit_call,
    wait_plan,
)
from nnkgeo.client.progress import ProgressOption
from nnkgeo.client.results import (
    GraphKind,
    graph_call,
    report_call,
    report_html_call,
    save_graph_call,
)
from nnkgeo.client.transport import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    AsyncTransport,
    ClientSettings,
)
from nnkgeo.client.uploads import (
    UploadFormat,
    dataset_call,
    datasets_call,
    delete_dataset_call,
    upload_call,
)

if TYPE_CHECKING:
    import scipy.sparse as sp


class AsyncClient:
    """The asynchronous twin of :class:`Client`: the same methods, as coroutines.

    Use it as ``async with AsyncClient(...) as nnk: report = await nnk.analyze(x, y)``.
    Works under asyncio and trio (through anyio, as httpx does). See :class:`Client` for
    the parameters and each method's documentation.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
    ) -> None:
        self._transport = AsyncTransport(
            ClientSettings.resolve(url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        )

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self._transport.settings.url

    def __repr__(self) -> str:
        return self._transport.settings.describe(type(self).__name__)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the same surface as Client

    async def upload(self, obj: object, *, format: UploadFormat | None = None) -> DatasetOut:
        """See :meth:`Client.upload`."""
        return await self._transport.send(upload_call(obj, format))

    async def dataset(self, dataset_id: str) -> DatasetOut:
        """See :meth:`Client.dataset`."""
        return await self._transport.send(dataset_call(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        """See :meth:`Client.delete_dataset`."""
        return await self._transport.send(delete_dataset_call(dataset_id))

    async def datasets(self, limit: int = 20, cursor: str | None = None) -> DatasetList:
        """See :meth:`Client.datasets`."""
        return await self._transport.send(datasets_call(limit, cursor))

    def iter_datasets(self, *, page_size: int = 100) -> AsyncIterator[DatasetOut]:
        """See :meth:`Client.iter_datasets`; use with ``async for``."""
        return every_item_async(lambda cursor: self.datasets(limit=page_size, cursor=cursor))

    async def submit(
        self,
        sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
        params: AnalysisParams | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """See :meth:`Client.submit`."""
        return await self._transport.send(submit_call(sets, params, idempotency_key))

    async def job(self, job_id: str) -> JobOut:
        """See :meth:`Client.job`."""
        return await self._transport.send(job_call(job_id))

    async def jobs(self, limit: int = 20, cursor: str | None = None) -> JobList:
        """See :meth:`Client.jobs`."""
        return await self._transport.send(jobs_call(limit, cursor))

    def iter_jobs(self, *, page_size: int = 100) -> AsyncIterator[JobOut]:
        """See :meth:`Client.iter_jobs`; use with ``async for``."""
        return every_item_async(lambda cursor: self.jobs(limit=page_size, cursor=cursor))

    async def cancel(self, job_id: str) -> JobOut:
        """See :meth:`Client.cancel`."""
        return await self._transport.send(cancel_call(job_id))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressOption = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> JobOut:
        """See :meth:`Client.wait`."""
        return await self._transport.run(
            wait_plan(job_id, timeout=timeout, progress=progress, poll_interval=poll_interval)
        )

    async def report(self, job_id: str) -> Report:
        """See :meth:`Client.report`."""
        return await self._transport.send(report_call(job_id))

    async def report_html(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """See :meth:`Client.report_html`."""
        return await self._transport.send(report_html_call(job_id, path))

    async def graph(
        self, job_id: str, set_name: str, *, kind: GraphKind = "symmetric"
    ) -> sp.csr_matrix:
        """See :meth:`Client.graph`."""
        return await self._transport.send(graph_call(job_id, set_name, kind))

    async def save_graph(
        self,
        job_id: str,
        set_name: str,
        path: str | os.PathLike[str],
        *,
        kind: GraphKind = "symmetric",
    ) -> Path:
        """See :meth:`Client.save_graph`."""
        return await self._transport.send(save_graph_call(job_id, set_name, path, kind))

    async def analyze(
        self,
        embeddings: object,
        labels: object | None = None,
        *,
        name: str = "set",
        params: AnalysisParams | Mapping[str, Any] | None = None,
        query: object | None = None,
        query_labels: object | None = None,
        wait: bool = True,
        progress: ProgressOption = True,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> Report | JobOut:
        """See :meth:`Client.analyze`."""
        return await self._transport.run(
            analyze_plan(
                embeddings,
                labels,
                name=name,
                params=params,
                query=query,
                query_labels=query_labels,
                wait=wait,
                progress=progress,
                timeout=timeout,
                poll_interval=poll_interval,
            )
        )

    async def compare(
        self,
        a: object,
        b: object,
        *,
        labels: object | None = None,
        ids: object | None = None,
        names: tuple[str, str] = ("a", "b"),
        params: AnalysisParams | Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: ProgressOption = True,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> Report | JobOut:
        """See :meth:`Client.compare`."""
        return await self._transport.run(
            compare_plan(
                a,
                b,
                labels=labels,
                ids=ids,
                names=names,
                params=params,
                wait=wait,
                progress=progress,
                timeout=timeout,
                poll_interval=poll_interval,
            )
        )

    async def drift(
        self,
        reference: object,
        current: object,
        *,
        labels: object | None = None,
        current_labels: object | None = None,
        current_ids: object | None = None,
        threshold: float = 0.01,
        name: str = "reference",
        params: AnalysisParams | Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: ProgressOption = True,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> Report | JobOut:
        """See :meth:`Client.drift`."""
        return await self._transport.run(
            drift_plan(
                reference,
                current,
                labels=labels,
                current_labels=current_labels,
                current_ids=current_ids,
                threshold=threshold,
                name=name,
                params=params,
                wait=wait,
                progress=progress,
                timeout=timeout,
                poll_interval=poll_interval,
            )
        )
