"""Problem `type` URIs, and the problems a failed job carries.

Free of FastAPI, so that workers can build the `error` of a job they fail.
"""

from __future__ import annotations

from api_schemas import Problem
from api_schemas.problems import FieldError

PROBLEM_TYPE_PREFIX = "urn:nnkgeo:problem:"


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


def job_problem(
    job_id: str,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
) -> Problem:
    """The `error` of a failed job, as GET /v1/jobs/{id} shows it."""
    return Problem(
        type=problem_type(slug),
        title=title,
        status=status,
        detail=detail,
        instance=f"/v1/jobs/{job_id}",
        errors=errors,
    )
