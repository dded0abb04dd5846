"""RFC 9457 problem details, as every nnkgeo error is returned."""

from __future__ import annotations

from pydantic import Field

from api_schemas.base import ResponseModel


class FieldError(ResponseModel):
    field: str = Field(
        description=(
            "Path of the offending field or parameter: members joined by dots, list items "
            "in brackets, a set by its name (`sets[layer4].embeddings.dataset`, "
            "`study.seeds[0]`), a query or header parameter as `query.limit`, the file of "
            "an upload as `file`."
        )
    )
    message: str = Field(description="What is wrong and how to fix it.")


class Problem(ResponseModel):
    """An `application/problem+json` body; extension members (RFC 9457, 3.2) are kept."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
