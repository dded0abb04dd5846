"""The synchronous client: :class:`Client`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
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
from nnkgeo.client.calls import every_item
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
    ClientSettings,
    SyncTransport,
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


class Client:
    """A synchronous client of the nnkgeo service.

    Parameters
    ----------
    url : str, optional
        The service's base URL, e.g. ``http://127.0.0.1:8000``. Default: ``NNKGEO_URL``.
    api_key : str, optional
        The tenant's API key, sent as ``Authorization: Bearer``. Default:
        ``NNKGEO_API_KEY``; none for a service run with ``NNKGEO_ALLOW_ANONYMOUS``.
    timeout : float or httpx.Timeout, default 60
        Seconds per network operation (connect, each read or write), not per request.
    retries : int, default 5
        Extra attempts for answers 429, 502, 503, 504 (and 409 with ``Retry-After``, a
        submit still in flight) and for connection errors. A connection refused before
        the service ever answered is raised at once (nothing listens at ``url``).
        Retrying for more than 2 s is logged (logger ``nnkgeo.client``, WARNING).
    backoff : float, default 0.5
        First retry delay in seconds, doubled on each retry (with jitter, at most 30 s);
        a ``Retry-After`` from the service is honoured instead.

    Raises
    ------
    UsageError
        Without a URL (argument or ``NNKGEO_URL``).

    Notes
    -----
    Every submit carries an ``Idempotency-Key`` (a random one when none is given), so a
    retried submit never starts a second job. Errors are raised as the typed exceptions
    of :mod:`nnkgeo.errors`, carrying the service's problem+json.

    Examples
    --------
    >>> with Client() as nnk:                                      # doctest: +SKIP
    ...     emb, y = nnk.upload(embeddings), nnk.upload(labels)
    ...     job = nnk.submit({"layer4": (emb.id, y.id)}, params={"k": 30})
    ...     nnk.wait(job.id)
    ...     report = nnk.report(job.id)
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
        self._transport = SyncTransport(
            ClientSettings.resolve(url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        )

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self._transport.settings.url

    def __repr__(self) -> str:
        return self._transport.settings.describe(type(self).__name__)

    def close(self) -> None:
        """Close the connection pool."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- datasets

    def upload(self, obj: object, *, format: UploadFormat | None = None) -> DatasetOut:
        """Upload one file of arrays; the same bytes give the same dataset.

        Parameters
        ----------
        obj : array-like, torch.Tensor, path, bytes, pandas.DataFrame or pyarrow.Table
            A numpy array (or anything ``np.asarray`` takes) or a torch tensor is sent as
            ``.npy`` (never pickled; object arrays are refused). A path (str or
            ``os.PathLike``) is streamed from disk, its format taken from the suffix. A
            DataFrame or a pyarrow Table is sent as parquet: one array per column, and
            ``"__columns__"`` for its float columns side by side.
        format : {"npy", "npz", "safetensors", "parquet", "onnx", "torchscript", "pt2"}, optional
            For a path with another suffix, or raw bytes. A model file (``.onnx``,
            ``.pt2``, or a TorchScript archive with ``format="torchscript"``) is for an
            ``embed`` job; it lists no arrays.

        Returns
        -------
        DatasetOut
            The dataset's id, sha256 and arrays (name, shape, dtype).
        """
        return self._transport.send(upload_call(obj, format))

    def dataset(self, dataset_id: str) -> DatasetOut:
        """A dataset's record; :class:`~nnkgeo.errors.NotFoundError` when unknown."""
        return self._transport.send(dataset_call(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset; :class:`~nnkgeo.errors.ConflictError` while a job reads it."""
        return self._transport.send(delete_dataset_call(dataset_id))

    def datasets(self, limit: int = 20, cursor: str | None = None) -> DatasetList:
        """One page of the tenant's datasets, newest first; pass ``next_cursor`` on.

        Parameters
        ----------
        limit : int, default 20
            Datasets per page (the service accepts 1 to 100).
        cursor : str, optional
            The ``next_cursor`` of the previous page; none for the first (newest) page.

        Returns
        -------
        DatasetList
            ``items`` (each a :class:`DatasetOut`) and ``next_cursor`` (None on the last page).
        """
        return self._transport.send(datasets_call(limit, cursor))

    def iter_datasets(self, *, page_size: int = 100) -> Iterator[DatasetOut]:
        """Every dataset of the tenant, newest first, fetched a page at a time."""
        return every_item(lambda cursor: self.datasets(limit=page_size, cursor=cursor))

    # -- jobs

    def submit(
        self,
        sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
        params: AnalysisParams | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """Submit an analysis job (validated by the service before it is queued).

        Parameters
        ----------
        sets : list of set specs, mapping, or JobCreate
            Either the API's form, ``[{"name": "layer4", "embeddings": {"dataset": ID},
            "labels": {"dataset": ID}, "query": {"embeddings": {"dataset": ID}}}]``
            (``query``, optional: held-out points), or the shorthand ``{"layer4": (emb, labels)}``
            where each of ``emb``, ``labels`` (and an optional third, ``ids``) is a
            dataset id, a :class:`DatasetOut` or a :class:`DatasetRef` (to name an array),
            and ``labels`` may be None. Several sets are compared in the order given.
        params : AnalysisParams or dict, optional
            ``{"k": 30, "kernel": "cosine", ...}``; the service's defaults otherwise.
        idempotency_key : str, optional
            The same key and body return the first job. A random key is sent otherwise.

        Returns
        -------
        JobOut
            The job, ``queued``, or already ``succeeded`` (``cached``) for inputs and
            params analysed before.

        Raises
        ------
        ValidationProblem
            422 for invalid input (unknown dataset, k >= N, ...), naming the field.
        """
        return self._transport.send(submit_call(sets, params, idempotency_key))

    def job(self, job_id: str) -> JobOut:
        """A job's status and progress."""
        return self._transport.send(job_call(job_id))

    def jobs(self, limit: int = 20, cursor: str | None = None) -> JobList:
        """One page of the tenant's jobs, newest first; pass ``next_cursor`` on."""
        return self._transport.send(jobs_call(limit, cursor))

    def iter_jobs(self, *, page_size: int = 100) -> Iterator[JobOut]:
        """Every job of the tenant, newest first, fetched a page at a time."""
        return every_item(lambda cursor: self.jobs(limit=page_size, cursor=cursor))

    def cancel(self, job_id: str) -> JobOut:
        """Cancel a job: a queued one at once, a running one at its next checkpoint.

        :class:`~nnkgeo.errors.ConflictError` once it has succeeded or failed.
        """
        return self._transport.send(cancel_call(job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressOption = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> JobOut:
        """Poll a job until it finishes, sleeping as the service's ``Retry-After`` says.

        Parameters
        ----------
        timeout : float, optional
            Give up after this many seconds (:class:`~nnkgeo.errors.JobTimeoutError`);
            the job goes on running.
        progress : bool or text stream, default True
            Draw a progress bar on stderr, on the given stream, or (False) not at all.
        poll_interval : float, default 1
            Seconds between polls when the service sends no ``Retry-After``.

        Returns
        -------
        JobOut
            The succeeded job.

        Raises
        ------
        JobFailedError, JobCanceledError
            When the job ends otherwise; ``.job`` is its final state, ``.problem`` the
            reason.
        """
        return self._transport.run(
            wait_plan(job_id, timeout=timeout, progress=progress, poll_interval=poll_interval)
        )

    def report(self, job_id: str) -> Report:
        """The JSON report of a succeeded job, as the pydantic model."""
        return self._transport.send(report_call(job_id))

    def report_html(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Write the report's self-contained HTML page to ``path``; returns the path."""
        return self._transport.send(report_html_call(job_id, path))

    def graph(self, job_id: str, set_name: str, *, kind: GraphKind = "symmetric") -> sp.csr_matrix:
        """A set's NNK graph, (N, N) CSR: ``symmetric`` (A) or ``directed`` (W, row i = theta_i)."""
        return self._transport.send(graph_call(job_id, set_name, kind))

    def save_graph(
        self,
        job_id: str,
        set_name: str,
        path: str | os.PathLike[str],
        *,
        kind: GraphKind = "symmetric",
    ) -> Path:
        """Stream a set's graph to ``path`` as served (``scipy.sparse.save_npz`` format)."""
        return self._transport.send(save_graph_call(job_id, set_name, path, kind))

    def analyze(
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
        """Upload, submit, wait and fetch the report: the notebook one-liner.

        Parameters
        ----------
        embeddings : array-like, tensor, path or table, or a mapping of them
            Anything :meth:`upload` takes, of shape (N, d); a mapping ``{name: embeddings}``
            gives several sets (layers), compared in order, sharing the labels.
        labels : array-like, tensor, path or table, optional
            N labels (ints or strings).
        name : str, default "set"
            The set's name, when ``embeddings`` is not a mapping.
        params : AnalysisParams or dict, optional
        query : array-like, tensor, path or table, optional
            Held-out points of shape (M, d), each interpolated from its k nearest points
            of every set (``report.sets[i].out_of_sample``).
        query_labels : array-like, tensor, path or table, optional
            M labels of the query points (needs ``labels``): the held-out errors.
        wait : bool, default True
            False: return the submitted job at once instead of the report.
        progress, timeout, poll_interval
            As for :meth:`wait`.

        Returns
        -------
        Report or JobOut
            The report (or, with ``wait=False``, the job).
        """
        return self._transport.run(
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

    def compare(
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
        """Upload two embeddings of the same points, compare them, fetch the report.

        Parameters
        ----------
        a, b : array-like, tensor, path or table
            Anything :meth:`upload` takes: the same N points, in the same order (two
            layers, models or checkpoints), of widths d_a and d_b.
        labels : array-like, tensor, path or table, optional
            N labels: per-class overlaps (``report.compare.per_class``).
        ids : array-like, tensor, path or table, optional
            N point ids, named in ``report.compare.changed``.
        names : (str, str), default ("a", "b")
            The two sets' names.
        params, wait, progress, timeout, poll_interval
            As for :meth:`analyze`.

        Returns
        -------
        Report or JobOut
            The report, whose ``compare`` section holds the per-point Jaccard and weighted
            overlaps of the NNK neighbourhoods and linear CKA (or, ``wait=False``, the job).
        """
        return self._transport.run(
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

    def drift(
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
        """Upload a reference and current embeddings, score the drift, fetch the report.

        Parameters
        ----------
        reference : array-like, tensor, path or table
            N x d reference embeddings (e.g. training data), analysed as a set.
        current : array-like, tensor, path or table
            M x d embeddings to check (e.g. production), each solved against the reference.
        labels : optional
            N reference labels.
        current_labels : optional
            M current labels: per-class shifts (``report.drift.per_class``).
        current_ids : optional
            M current ids, named in ``report.drift.drifted``.
        threshold : float, default 0.01
            The verdict is "drift" when the Kolmogorov-Smirnov p-value is below it.
        name : str, default "reference"
            The reference set's name.
        params, wait, progress, timeout, poll_interval
            As for :meth:`analyze`; the reference's neighbour search is exact.

        Returns
        -------
        Report or JobOut
            The report, whose ``drift`` section holds the scores, the KS test and the
            verdict (or, ``wait=False``, the job).
        """
        return self._transport.run(
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
