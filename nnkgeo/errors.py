"""The exceptions the nnkgeo client raises.

Everything the service refuses arrives as an RFC 9457 problem (``application/problem+json``);
the client raises it as a :class:`NNKGeoHTTPError` subclass chosen by status, carrying the
parsed :class:`~api_schemas.Problem` so that callers can read ``.problem.errors`` (the
offending fields) without parsing anything. A job that ends ``failed`` or ``canceled``
while the client waits for it raises a :class:`JobError`, carrying the job and its problem.

Hierarchy::

    NNKGeoClientError
    ├── UsageError                the client was configured or called wrongly (no URL,
    │                             an unknown file format, an object it cannot upload)
    ├── ServiceUnreachableError   connection errors, after the retries
    ├── JobTimeoutError           wait(timeout=...) ran out before the job finished
    └── NNKGeoHTTPError           .status, .problem
        ├── ValidationProblem     400, 413, 415, 422: the request or its input is invalid
        ├── AuthenticationError   401: missing or unknown API key
        ├── NotFoundError         404: no such dataset, job or set (for this tenant)
        ├── ConflictError         409: e.g. the report of an unfinished job
        ├── GoneError             410: the job's results expired
        ├── ServerError           5xx, after the retries
        └── JobError              .job: the job ended without succeeding
            ├── JobFailedError    status failed; .problem is the job's error
            └── JobCanceledError  status canceled
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api_schemas import Problem

if TYPE_CHECKING:
    from api_schemas import JobOut

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "GoneError",
    "JobCanceledError",
    "JobError",
    "JobFailedError",
    "JobTimeoutError",
    "NNKGeoClientError",
    "NNKGeoHTTPError",
    "NotFoundError",
    "ServerError",
    "ServiceUnreachableError",
    "UsageError",
    "ValidationProblem",
    "error_for_problem",
]


class NNKGeoClientError(Exception):
    """Base of every error the nnkgeo client raises."""


class UsageError(NNKGeoClientError, ValueError):
    """The client was configured or called wrongly; nothing was sent."""


class ServiceUnreachableError(NNKGeoClientError, ConnectionError):
    """The service could not be reached, or closed the connection, on every attempt."""


class JobTimeoutError(NNKGeoClientError, TimeoutError):
    """``wait`` gave up before the job finished; the job itself goes on running."""

    def __init__(self, message: str, *, job: JobOut) -> None:
        super().__init__(message)
        self.job = job


class NNKGeoHTTPError(NNKGeoClientError):
    """The service answered with an error: ``.problem`` is its problem+json body.

    Attributes
    ----------
    problem : Problem
        The parsed body (a synthesised one when the answer was not problem+json, as from
        a proxy in front of the service).
    status : int
        The HTTP status (for :class:`JobError`, the status of the job's problem).
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.status = problem.status
        super().__init__(_describe(problem))

    @property
    def field_errors(self) -> dict[str, str]:
        """The problem's per-field messages, ``{"sets[0].embeddings": "..."}``."""
        return {error.field: error.message for error in self.problem.errors or []}


class ValidationProblem(NNKGeoHTTPError):
    """400, 413, 415 or 422: the request, or the input it names, is invalid."""


class AuthenticationError(NNKGeoHTTPError):
    """401: the API key is missing or unknown (set ``api_key`` or ``NNKGEO_API_KEY``)."""


class NotFoundError(NNKGeoHTTPError):
    """404: no such dataset, job or set for this tenant."""


class ConflictError(NNKGeoHTTPError):
    """409: not possible in the resource's current state (e.g. the report of a running job)."""


class GoneError(NNKGeoHTTPError):
    """410: the job's report and graphs expired (``NNKGEO_RESULT_TTL_S``)."""


class ServerError(NNKGeoHTTPError):
    """5xx: the service failed, or stayed unavailable through every retry."""


class JobError(NNKGeoHTTPError):
    """A job ended without succeeding; ``.job`` is its final state."""

    def __init__(self, job: JobOut, problem: Problem) -> None:
        self.job = job
        super().__init__(problem)


class JobFailedError(JobError):
    """The job failed; ``.problem`` is the job's ``error`` (a 422-like one names the field)."""


class JobCanceledError(JobError):
    """The job was canceled before it finished."""


_ERROR_BY_STATUS: dict[int, type[NNKGeoHTTPError]] = {
    400: ValidationProblem,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: ValidationProblem,
    415: ValidationProblem,
    422: ValidationProblem,
}


def error_for_problem(problem: Problem) -> NNKGeoHTTPError:
    """The exception of the right class for an error answer's problem."""
    if problem.status >= 500:
        return ServerError(problem)
    return _ERROR_BY_STATUS.get(problem.status, NNKGeoHTTPError)(problem)


def _describe(problem: Problem) -> str:
    message = f"{problem.status} {problem.title}"
    if problem.detail:
        message += f": {problem.detail}"
    for error in problem.errors or []:
        message += f"; {error.field}: {error.message}"
    return message
