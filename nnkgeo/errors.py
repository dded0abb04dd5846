"""The exceptions the nnkgeo client raises.

Everything the service refuses arrives as an RFC 9457 problem (``application/problem+json``);
the client raises it as a :class:`NNKGeoHTTPError` subclass chosen by status, carrying the
parsed :class:`~api_schemas.Problem` so that callers can read ``.problem.errors`` (the
offending fields) without parsing anything. A job that ends ``failed`` or ``canceled``
while the client waits for it raises a :class:`JobError`, carrying the job and its problem.

Advice is said in the caller's terms: an error's ``str()`` speaks to the Python caller
(``pass url=...``), and :meth:`NNKGeoClientError.message_for` gives the same message as
the ``nnkgeo`` command says it (``pass --url URL``), from the error's :class:`Hint`.

Hierarchy::

    NNKGeoClientError
    ├── UsageError                the client was configured or called wrongly (no URL,
    │                             an unknown file format, an object it cannot upload)
    ├── ServiceUnreachableError   connection errors (refused at once; others after retries)
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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from api_schemas import Problem

if TYPE_CHECKING:
    from api_schemas import JobOut

__all__ = [
    "AuthenticationError",
    "Caller",
    "ConflictError",
    "GoneError",
    "Hint",
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
    "problem_text",
]

Caller: TypeAlias = Literal["python", "cli"]
"""Who reads an error: a Python program (the client) or a person at the ``nnkgeo`` command."""


@dataclass(frozen=True)
class Hint:
    """How to fix an error, once in each caller's terms.

    Attributes
    ----------
    python : str
        For the Python client: ``"pass url=... or set NNKGEO_URL"``.
    cli : str
        For the ``nnkgeo`` command: ``"pass --url URL or set NNKGEO_URL"``.
    """

    python: str
    cli: str

    def for_caller(self, caller: Caller) -> str:
        """The advice in ``caller``'s terms."""
        return self.cli if caller == "cli" else self.python


API_KEY_HINT = Hint(
    python="pass api_key=... or set NNKGEO_API_KEY",
    cli="pass --api-key KEY or set NNKGEO_API_KEY",
)

# Advice the service words for HTTP callers, and how each client caller would say it.
# The problem itself (``.problem``) keeps the service's words.
_SERVICE_ADVICE: dict[str, Hint] = {
    "upload it with POST /v1/datasets": Hint(
        python="upload it with Client.upload",
        cli="upload it with `nnkgeo upload FILE`",
    ),
    "Send your API key as `Authorization: Bearer <key>`.": Hint(
        python=f"No API key was sent: {API_KEY_HINT.python}.",
        cli=f"No API key was sent: {API_KEY_HINT.cli}.",
    ),
}


class NNKGeoClientError(Exception):
    """Base of every error the nnkgeo client raises.

    Parameters
    ----------
    reason : str
        What is wrong.
    hint : Hint, optional
        How to fix it; ``str()`` appends its Python spelling, :meth:`message_for`
        the spelling its caller needs.
    """

    def __init__(self, reason: str, *, hint: Hint | None = None) -> None:
        self.reason = reason
        self.hint = hint
        super().__init__(self.message_for("python"))

    def message_for(self, caller: Caller) -> str:
        """The message, its advice in ``caller``'s terms (``str()`` is the Python one)."""
        if self.hint is None:
            return self.reason
        return f"{self.reason}; {self.hint.for_caller(caller)}"


class UsageError(NNKGeoClientError, ValueError):
    """The client was configured or called wrongly; nothing was sent."""


class ServiceUnreachableError(NNKGeoClientError, ConnectionError):
    """The service could not be reached (refused at once; other failures after the retries)."""


class JobTimeoutError(NNKGeoClientError, TimeoutError):
    """``wait`` gave up before the job finished; the job itself goes on running."""

    def __init__(self, reason: str, *, job: JobOut, hint: Hint | None = None) -> None:
        self.job = job
        super().__init__(reason, hint=hint)


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
        super().__init__(problem.title)

    def message_for(self, caller: Caller) -> str:
        """See :meth:`NNKGeoClientError.message_for`."""
        return f"{self.problem.status} {problem_text(self.problem, caller)}"

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

    def message_for(self, caller: Caller) -> str:
        """``job ID failed: TITLE: DETAIL``: the job's problem, not an HTTP answer."""
        return f"job {self.job.id} failed: {problem_text(self.problem, caller)}"


class JobCanceledError(JobError):
    """The job was canceled before it finished."""

    def message_for(self, caller: Caller) -> str:
        """``job ID was canceled``."""
        return f"job {self.job.id} was canceled"


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


def problem_text(problem: Problem, caller: Caller = "python") -> str:
    """A problem in one line: its title, its detail, and each field error not already said.

    The service's detail of a 422 often lists its field errors already (``"params.k:
    must be < N"``): each is said once. Advice worded for HTTP callers is said in
    ``caller``'s terms.

    Parameters
    ----------
    problem : Problem
        The problem+json body.
    caller : {"python", "cli"}, default "python"
        Whose terms the advice is in.

    Returns
    -------
    str
        ``"TITLE: DETAIL; FIELD: MESSAGE; ..."``, without the status.
    """
    text = problem.title
    if problem.detail:
        text += f": {problem.detail}"
    for error in problem.errors or []:
        said = f"{error.field}: {error.message}"
        if said not in text:
            text += f"; {said}"
    for service_words, hint in _SERVICE_ADVICE.items():
        text = text.replace(service_words, hint.for_caller(caller))
    return text
