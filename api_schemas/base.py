"""The two kinds of wire model: what a client sends, and what the service answers.

The service and its clients are upgraded at different times, so the two directions
tolerate change differently:

- a **request** refuses unknown fields: a typo must be a 422 naming the field, never a
  silent fall back to a default, and a hostile body gets nothing past the schema;
- a **response** keeps unknown fields: a client must read a report or a job resource
  from a newer server, which may carry fields this version does not know. They are kept
  (``model_extra``, and in ``model_dump``), so that a report checked, stored or passed on
  by an older client loses nothing.

Every model of this package derives from one of the two, so the rule shows at each
class, and the OpenAPI document says it: ``additionalProperties: false`` on request
schemas, ``true`` on response schemas.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """A body a client sends: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    """An answer of the service: unknown fields (from a newer server) are kept."""

    model_config = ConfigDict(extra="allow")
