"""RFC 9457 problem details: every error the API returns, and how exceptions map to them.

The service layer raises `ProblemError`; the numeric core raises `InvalidInputError`;
FastAPI and Starlette raise their own validation and routing errors. The handlers
installed here turn all of them into `application/problem+json`, and anything unexpected
into a 500 problem that says nothing about the internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_schemas import Problem
from api_schemas.jobs import SET_NAME_PATTERN
from api_schemas.problems import FieldError
from jobstate.data_paths import PathNotAllowedError
from jobstate.errors import InvalidInputError
from jobstate.problems import problem_type

PROBLEM_MEDIA_TYPE = "application/problem+json"
SET_NAME = re.compile(SET_NAME_PATTERN)

logger = logging.getLogger(__name__)


class ProblemError(Exception):
    """An error the service answers with a problem+json body of the given status."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = problem_type(slug) if slug else "about:blank"
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def to_problem(self, *, instance: str | None = None) -> Problem:
        return Problem(
            type=self.type,
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors or None,
        )


def not_found(what: str) -> ProblemError:
    return ProblemError(404, f"{what} not found.", slug="not-found")


def media_type_of(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json` ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def unsupported_media_type(*, expected: str, got: str | None) -> ProblemError:
    return ProblemError(
        415,
        f"Send the body with Content-Type: {expected} (got {got or 'none'}).",
        slug="unsupported-media-type",
    )


def invalid_input(errors: Iterable[FieldError], *, detail: str | None = None) -> ProblemError:
    errors = list(errors)
    return ProblemError(
        422,
        detail or "; ".join(f"{e.field}: {e.message}" for e in errors),
        slug="invalid-input",
        title="Invalid input",
        errors=errors,
    )


def invalid_input_from_core(error: InvalidInputError, *, field_prefix: str = "") -> ProblemError:
    field = f"{field_prefix}.{error.field}" if field_prefix else error.field
    return invalid_input([FieldError(field=field, message=error.message)])


def path_not_allowed(error: PathNotAllowedError) -> ProblemError:
    """403: a dataset path outside the operator's allow-listed roots (NNKGEO_DATA_ROOTS)."""
    return ProblemError(
        403,
        f"{error.field}: {error.message}",
        slug="path-not-allowed",
        title="Path not allowed",
        errors=[FieldError(field=error.field, message=error.message)],
    )


def problem_response(problem: Problem, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def field_path(location: Sequence[Any], body: Any = None) -> str:
    """The one style every problem names a field in: members joined by dots, list items
    in brackets, a set by its name.

    FastAPI locates errors as ``("body", "sets", 0, "k")``; this gives ``sets[a].k`` when
    the request's set 0 is named ``a`` (as the checks that know only names write it:
    ``jobstate.checks``), ``sets[0].k`` when it has no valid name, ``study.seeds[1]`` for
    other list items, and ``query.limit`` for a query or header parameter.

    Parameters
    ----------
    location
        The error's ``loc``.
    body
        The request body as parsed JSON, to read set names from (None: use indices).
    """
    parts = list(location)
    if parts and parts[0] == "body":
        parts = parts[1:]
    path = ""
    node = body
    for part in parts:
        item = node[part] if _holds(node, part) else None
        if isinstance(part, int):
            name = item.get("name") if isinstance(item, dict) else None
            in_sets = path == "sets" or path.endswith(".sets")
            named = in_sets and isinstance(name, str) and SET_NAME.match(name)
            path += f"[{name if named else part}]"
        else:
            path += f".{part}" if path else str(part)
        node = item
    return path or "body"


def _holds(node: Any, part: Any) -> bool:
    if isinstance(part, int):
        return isinstance(node, list) and 0 <= part < len(node)
    return isinstance(node, dict) and part in node


def _validation_message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    context = error.get("ctx") or {}
    if error.get("type") == "extra_forbidden":
        return "unknown field; remove it (see the schema at /openapi.json)"
    if error.get("type") == "missing":
        return "required; add it"
    # Pydantic's message of an enum or literal already lists the allowed values, which
    # are also its context's "expected": add them only where the message lacks them.
    expected = context.get("expected")
    if expected is not None and str(expected) not in message and "expected" not in message:
        message = f"{message} (expected {expected})"
    return message


async def _handle_problem_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ProblemError)
    return problem_response(error.to_problem(instance=request.url.path), headers=error.headers)


async def _handle_invalid_input(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidInputError)
    mapped = (
        path_not_allowed(error)
        if isinstance(error, PathNotAllowedError)
        else invalid_input_from_core(error)
    )
    return problem_response(mapped.to_problem(instance=request.url.path))


async def _handle_request_validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = list(error.errors())
    if any(item.get("type") == "json_invalid" for item in details):
        decode_error = next(item for item in details if item.get("type") == "json_invalid")
        reason = (decode_error.get("ctx") or {}).get("error", "invalid JSON")
        position = decode_error.get("loc", ("body", "?"))[-1]
        problem = ProblemError(
            400,
            f"The request body is not valid JSON: {reason} at character {position}.",
            slug="malformed-json",
            title="Malformed JSON",
            errors=[FieldError(field="body", message=f"{reason} at character {position}")],
        )
        return problem_response(problem.to_problem(instance=request.url.path))
    body = getattr(error, "body", None)
    field_errors = [
        FieldError(field=field_path(item.get("loc", ()), body), message=_validation_message(item))
        for item in details
    ]
    problem = invalid_input(field_errors).to_problem(instance=request.url.path)
    return problem_response(problem)


async def _handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    detail = error.detail if isinstance(error.detail, str) else None
    if status == 404 and detail in (None, "Not Found"):
        detail = f"No resource at {request.url.path}."
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    problem = Problem(
        title=HTTPStatus(status).phrase, status=status, detail=detail, instance=request.url.path
    )
    return problem_response(problem, headers=error.headers)


async def _handle_store_unavailable(request: Request, error: Exception) -> JSONResponse:
    logger.error("Redis failed on %s %s: %s", request.method, request.url.path, error)
    problem = ProblemError(
        503,
        "The job store is unavailable; retry shortly.",
        slug="store-unavailable",
        headers={"Retry-After": "5"},
    )
    return problem_response(problem.to_problem(instance=request.url.path), headers=problem.headers)


async def _handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    problem = Problem(
        type=problem_type("internal"),
        title="Internal Server Error",
        status=500,
        detail="The server failed to answer this request; it has been logged.",
        instance=request.url.path,
    )
    return problem_response(problem)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _handle_problem_error)
    app.add_exception_handler(InvalidInputError, _handle_invalid_input)
    app.add_exception_handler(RequestValidationError, _handle_request_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(redis.RedisError, _handle_store_unavailable)
    app.add_exception_handler(Exception, _handle_unexpected)


_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request (e.g. a body that is not JSON).",
    401: "Missing or unknown API key.",
    403: "A dataset path outside the allow-listed directories (NNKGEO_DATA_ROOTS).",
    404: "No such resource for this tenant.",
    409: "The resource is not in a state that allows this.",
    410: "The result has expired.",
    413: (
        "The body is too large: an upload past NNKGEO_MAX_UPLOAD_BYTES or the tenant's "
        "NNKGEO_TENANT_MAX_STORED_BYTES, any other body past NNKGEO_MAX_JSON_BYTES."
    ),
    415: "Wrong Content-Type (a CSV upload's problem says how to convert it).",
    422: "Invalid input; `errors` names each field and what to fix.",
    429: (
        "The tenant has NNKGEO_TENANT_MAX_ACTIVE_JOBS jobs queued or running; retry after "
        "`Retry-After` seconds."
    ),
    503: "A dependency (Redis, the broker, the workers) is unavailable.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each an application/problem+json body."""
    return {
        status: {
            "description": _PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
