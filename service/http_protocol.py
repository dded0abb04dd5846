"""uvicorn's HTTP protocol with the limits uvicorn lacks: time to send headers, and to send
a body, and the size of the headers.

The API is started with it:

    uvicorn service.main:app --http service.http_protocol:BoundedHttpToolsProtocol

uvicorn closes idle keep-alive connections, but a client that has begun a request can
hold its connection, and on an upload a staging file, for as long as it keeps the
request unfinished: uvicorn has no header-read timeout and no body timeout. This
protocol adds, per connection:

- a header deadline, ``NNKGEO_REQUEST_HEADER_TIMEOUT_S`` from the moment the connection
  opens (or, on a kept-alive connection, from the first byte of the next request) until
  the end of the headers; past it the client gets ``408`` and the connection is closed;
- a cap of `MAX_HEADER_BYTES` on the request line and headers (``431``), since
  httptools buffers a header of any length in memory until it ends;
- a body watchdog: a body that makes no progress for ``NNKGEO_REQUEST_BODY_TIMEOUT_S``
  is cut off (``408`` if no response has started, then the connection is closed). The
  application then sees the client disconnect, so an upload's staging file is removed
  (`jobstate.blobs.BlobStore.staged`). Progress means `PROGRESS_BYTES` more bytes, so
  that a body dripped a few bytes at a time counts as stalled; time during which the
  server itself is not reading (flow control paused, or the client waiting for
  ``100 Continue``) is never held against the client.

It subclasses the httptools implementation, the one ``uvicorn[standard]`` selects by
default, and changes nothing else of its behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from jobstate.problems import problem_type
from jobstate.settings import get_settings

MAX_HEADER_BYTES = 64 * 1024
"""Most bytes of request line and headers (counted per read, so a read or so more gets
through); far above what any client of this API sends."""

PROGRESS_BYTES = 1024
"""Bytes of body that count as progress and restart the body timeout."""

logger = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a header deadline, a header size cap and a body watchdog.

    Parameters
    ----------
    config, server_state, app_state, _loop
        As uvicorn passes them to every HTTP protocol class.

    Notes
    -----
    The two timeouts are read from `jobstate.settings.get_settings` (the same cached
    `Settings` the application reads), once per connection.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self._header_timeout_s = settings.request_header_timeout_s
        self._body_timeout_s = settings.request_body_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        # Bytes of the current request's head read so far; None outside a head.
        self._header_bytes: int | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_progress_at = 0.0
        self._body_bytes_since_progress = 0

    # Connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A client that connects and sends nothing is on the header clock too.
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection changes hands; its new protocol must not be closed by our clocks.
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        # Only reads that start inside a head are counted: a read that also holds the
        # end of the previous request's body must not count against the next head.
        in_head = self._header_bytes is not None
        super().data_received(data)
        if in_head and self._header_bytes is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(
                    431,
                    f"The request line and headers exceed {MAX_HEADER_BYTES} bytes.",
                    slug="headers-too-large",
                    answer=self._between_responses(),
                )

    # Parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begin_head()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._header_bytes = None
        super().on_headers_complete()
        # Armed for every request; one without a body completes in this same read and
        # cancels it at once.
        self._body_progress_at = self.loop.time()
        self._body_bytes_since_progress = 0
        self._body_timer = self.loop.call_later(self._body_timeout_s, self._check_body_progress)

    def on_body(self, body: bytes) -> None:
        self._body_bytes_since_progress += len(body)
        if self._body_bytes_since_progress >= PROGRESS_BYTES:
            # Noted, not re-armed: a timer per read would cost more than the reads.
            self._body_progress_at = self.loop.time()
            self._body_bytes_since_progress = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    # Deadlines ------------------------------------------------------------------------

    def _begin_head(self) -> None:
        if self._header_bytes is None:
            self._header_bytes = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self._header_timeout_s, self._on_header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        logger.info(
            "closing a connection from %s: its request headers did not complete in %g s",
            self.client,
            self._header_timeout_s,
        )
        self._refuse(
            408,
            f"The request headers did not arrive within {self._header_timeout_s:g} s.",
            slug="request-timeout",
            answer=self._between_responses(),
        )

    def _check_body_progress(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        server_is_behind = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if server_is_behind:
            # The client cannot send while we do not read, nor before we say "continue".
            self._body_progress_at = now
        remaining = self._body_progress_at + self._body_timeout_s - now
        if remaining > 0:
            self._body_timer = self.loop.call_later(remaining, self._check_body_progress)
            return
        logger.info(
            "cutting off a request body from %s: no progress in %g s",
            self.client,
            self._body_timeout_s,
        )
        self._refuse(
            408,
            f"The request body made no progress for {self._body_timeout_s:g} s.",
            slug="request-timeout",
            # After a response (say an early 413) the client is only owed the close.
            answer=not self.pipeline and cycle is not None and not cycle.response_started,
        )

    def _between_responses(self) -> bool:
        """No response is being written: an unsolicited answer cannot interleave with one."""
        return not self.pipeline and (self.cycle is None or self.cycle.response_complete)

    def _refuse(self, status: int, detail: str, *, slug: str, answer: bool) -> None:
        """Answer with a problem (when `answer`), then close the connection."""
        if answer:
            body = json.dumps(
                {
                    "type": problem_type(slug),
                    "title": HTTPStatus(status).phrase,
                    "status": status,
                    "detail": detail,
                }
            ).encode()
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend(
                [
                    b"content-type: application/problem+json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                ]
            )
            self.transport.write(b"".join(head) + body)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application sees a disconnect (an upload stops and removes its staging
            # file), and nothing it still sends can follow our answer onto the wire.
            cycle.disconnected = True
            cycle.message_event.set()
        self._cancel_header_timer()
        self._cancel_body_timer()
        self.transport.close()
