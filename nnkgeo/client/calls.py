"""Requests described without sending them: the sans-IO core both clients share.

Each client method describes its HTTP exchange as a :class:`Call` (method, path, body,
how to parse the successful answer); an operation of several exchanges and pauses
(``wait``, ``analyze``) is a :data:`Plan`, a generator that yields calls and sleeps.
The synchronous and the asynchronous transport only send calls and sleep, so every
piece of request building and response parsing is written once.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import httpx

from nnkgeo.errors import UsageError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Body(Protocol):
    """A request body that can be read again for every attempt, in either client."""

    @property
    def length(self) -> int: ...

    def sync_chunks(self) -> Iterator[bytes]: ...

    def async_chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to read its successful answer; sent by either client."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] | None = None
    json: Any = None
    body: Body | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Stream the answer's body into this file (written whole, or not at all).
    download_to: Path | None = None
    # A probe (/readyz): sent once, never retried, its answer parsed whatever its status.
    probe: bool = False

    def request_headers(self) -> dict[str, str]:
        """The call's own headers, with the body's type and length when it has one."""
        headers = dict(self.headers)
        if self.body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(self.body.length)
        return headers


@dataclass(frozen=True)
class Sleep:
    """A pause in a plan, taken with ``time.sleep`` or ``anyio.sleep``."""

    seconds: float


Step: TypeAlias = "Call[Any] | Sleep"
# An operation of several calls: yields calls (and receives their parsed results) or
# sleeps (and receives None), and returns the operation's result.
Plan: TypeAlias = Generator["Step", Any, T]


def parse_model(model: type[T]) -> Callable[[httpx.Response], T]:
    """A parser reading the answer's JSON body as ``model``."""
    return lambda response: model.model_validate_json(response.content)  # type: ignore[attr-defined]


def parse_nothing(_response: httpx.Response) -> None:
    """The parser of an answer without a body worth reading (204)."""
    return None


def path_segment(value: str) -> str:
    """An id or set name as one URL path segment (never a path traversal)."""
    if not value or value in (".", ".."):
        raise UsageError(f"not a valid id or set name: {value!r}")
    return urllib.parse.quote(value, safe="")


class Page(Protocol[T_co]):
    """One page of a cursor-paged listing (JobList, DatasetList)."""

    @property
    def items(self) -> list[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


def every_item(page: Callable[[str | None], Page[T]]) -> Iterator[T]:
    """Every item of a cursor-paged listing, a page at a time; ``page(cursor)`` fetches one."""
    cursor = None
    while True:
        current = page(cursor)
        yield from current.items
        if current.next_cursor is None:
            return
        cursor = current.next_cursor


async def every_item_async(
    page: Callable[[str | None], Awaitable[Page[T]]],
) -> AsyncIterator[T]:
    """:func:`every_item` for the asynchronous client."""
    cursor = None
    while True:
        current = await page(cursor)
        for item in current.items:
            yield item
        if current.next_cursor is None:
            return
        cursor = current.next_cursor
