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

The names below are imported on first use, so that ``nnkgeo analyze`` can draw its bar
with :mod:`~nnkgeo.client.progress` without loading httpx. The clients need only httpx,
pydantic and ``api_schemas``: numpy, scipy, pyarrow and rich are imported when a method
needs them, and torch, FastAPI, Celery and faiss never.

Examples
--------
>>> from nnkgeo.client import Client
>>> with Client("http://127.0.0.1:8000", api_key="...") as nnk:     # doctest: +SKIP
...     report = nnk.analyze(embeddings, labels, name="layer4", params={"k": 30})
...     report.sets[0].loo_error.nnk_weighted
...     graph = nnk.graph(report.job_id, "layer4")                     # scipy CSR
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnkgeo.client.async_client import AsyncClient
    from nnkgeo.client.jobs import DEFAULT_POLL_INTERVAL_S, SetInputs
    from nnkgeo.client.progress import ProgressOption
    from nnkgeo.client.results import GraphKind
    from nnkgeo.client.sync_client import Client
    from nnkgeo.client.transport import DEFAULT_TIMEOUT_S
    from nnkgeo.client.uploads import UploadFormat, format_for_path

# Each public name's module, imported on first access (PEP 562): ``nnkgeo analyze``
# draws its bar with ``nnkgeo.client.progress`` and must not pay for httpx (~50 ms).
_EXPORTS = {
    "AsyncClient": "nnkgeo.client.async_client",
    "Client": "nnkgeo.client.sync_client",
    "DEFAULT_POLL_INTERVAL_S": "nnkgeo.client.jobs",
    "DEFAULT_TIMEOUT_S": "nnkgeo.client.transport",
    "GraphKind": "nnkgeo.client.results",
    "ProgressOption": "nnkgeo.client.progress",
    "SetInputs": "nnkgeo.client.jobs",
    "UploadFormat": "nnkgeo.client.uploads",
    "format_for_path": "nnkgeo.client.uploads",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
