"""A succeeded job's results: the JSON report, its HTML page, and each set's NNK graph."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from api_schemas import Report
from nnkgeo.client.calls import Call, parse_model, path_segment
from nnkgeo.errors import UsageError

if TYPE_CHECKING:
    import scipy.sparse as sp

GraphKind = Literal["symmetric", "directed"]
"""``symmetric``: the undirected graph A; ``directed``: W, row i holding theta_i."""


def report_call(job_id: str) -> Call[Report]:
    """``GET /v1/jobs/{id}/report``, parsed as the Report model."""
    return Call("GET", f"/v1/jobs/{path_segment(job_id)}/report", parse_model(Report))


def report_html_call(job_id: str, path: str | os.PathLike[str]) -> Call[Path]:
    """``GET /v1/jobs/{id}/report.html``, streamed to ``path``."""
    target = Path(path)
    return Call(
        "GET",
        f"/v1/jobs/{path_segment(job_id)}/report.html",
        lambda _response: target,
        headers={"Accept": "text/html"},
        download_to=target,
    )


def graph_call(job_id: str, set_name: str, kind: GraphKind) -> Call[sp.csr_matrix]:
    """A set's graph, read into a scipy CSR matrix (scipy is imported here, not before)."""

    def parse(response: httpx.Response) -> sp.csr_matrix:
        import scipy.sparse as sp

        return sp.csr_matrix(sp.load_npz(io.BytesIO(response.content)))

    return Call(
        "GET",
        _graph_path(job_id, set_name),
        parse,
        params={"kind": _check_kind(kind)},
        headers={"Accept": "application/octet-stream"},
    )


def save_graph_call(
    job_id: str, set_name: str, path: str | os.PathLike[str], kind: GraphKind
) -> Call[Path]:
    """A set's graph, streamed to ``path`` as served (``scipy.sparse.save_npz`` format)."""
    target = Path(path)
    return Call(
        "GET",
        _graph_path(job_id, set_name),
        lambda _response: target,
        params={"kind": _check_kind(kind)},
        headers={"Accept": "application/octet-stream"},
        download_to=target,
    )


def _graph_path(job_id: str, set_name: str) -> str:
    return f"/v1/jobs/{path_segment(job_id)}/graphs/{path_segment(set_name)}"


def _check_kind(kind: str) -> str:
    if kind not in ("symmetric", "directed"):
        raise UsageError(f"kind must be 'symmetric' or 'directed', got {kind!r}")
    return kind
