"""Python client of the nnkgeo REST API: :class:`Client` (sync) and :class:`AsyncClient`.

Both clients offer the same methods; the async ones are coroutines. Each method
describes its HTTP calls without sending them, and operations of several calls and
pauses (``wait``, ``analyze``) are written once as plans of calls and sleeps; the two
clients differ only in their transport. The package's modules, one job each:

- :mod:`~nnkgeo.client.calls`: a call (method, path, body, how to read the answer) and a
  plan, the sans-IO core;
- :mod:`~nnkgeo.client.transport`: settings (URL, key), the httpx session, retries and
  backoff, error answers as the exceptions of :mod:`nnkgeo.errors`;
- :mod:`~nnkgeo.client.uploads`: datasets, encoding arrays, tensors, files and tables;
- :mod:`~nnkgeo.client.jobs`: the submit body, checked before sending; job calls; wait;
- :mod:`~nnkgeo.client.results`: the report, its HTML page and the graphs;
- :mod:`~nnkgeo.client.analyze`: upload, submit, wait and report in one plan;
- :mod:`~nnkgeo.client.progress`: the bar ``wait`` draws;
- :mod:`~nnkgeo.client.sync_client`, :mod:`~nnkgeo.client.async_client`: the clients.

Importing it needs only httpx, pydantic and ``api_schemas``: numpy, scipy, pyarrow and
rich are imported when a method needs them, and torch, FastAPI, Celery and faiss never.

Examples
--------
>>> from nnkgeo.client import Client
>>> with Client("http://127.0.0.1:8000", api_key="...") as nnk:     # doctest: +SKIP
...     report = nnk.analyze(embeddings, labels, name="layer4", params={"k": 30})
...     report.sets[0].loo_error.nnk_weighted
...     graph = nnk.graph(report.job_id, "layer4")                     # scipy CSR
"""

from nnkgeo.client.async_client import AsyncClient
from nnkgeo.client.jobs import DEFAULT_POLL_INTERVAL_S, SetInputs
from nnkgeo.client.progress import ProgressOption
from nnkgeo.client.results import GraphKind
from nnkgeo.client.sync_client import Client
from nnkgeo.client.transport import DEFAULT_TIMEOUT_S
from nnkgeo.client.uploads import UploadFormat, format_for_path

__all__ = [
    "DEFAULT_POLL_INTERVAL_S",
    "DEFAULT_TIMEOUT_S",
    "AsyncClient",
    "Client",
    "GraphKind",
    "ProgressOption",
    "SetInputs",
    "UploadFormat",
    "format_for_path",
]
