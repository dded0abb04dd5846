"""RFC 9457 problem details, as every nnkgeo error is returned."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field or parameter.")
    message: str = Field(description="What is wrong and how to fix it.")


class Problem(BaseModel):
    """An `application/problem+json` body."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
