"""The size bound on request bodies other than uploads (``NNKGEO_MAX_JSON_BYTES``).

FastAPI reads a route's whole body into memory before it validates anything, whatever
its Content-Type, so the bound has to be applied before the application sees the
request. `BodySizeLimitMiddleware` refuses a declared Content-Length over the limit at
once, and otherwise reads the body itself, counting, up to the limit: a chunked body
(no Content-Length) is cut off as soon as it passes it, so no more than the limit is
ever held. The body read is then handed to the application unchanged.

Uploads (``POST /v1/datasets``) are streamed to disk under their own bound
(``NNKGEO_MAX_UPLOAD_BYTES``, see `service.datasets`) and pass through untouched.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ProblemError, problem_response


def body_too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"The request body is larger than the limit of {limit} bytes (NNKGEO_MAX_JSON_BYTES).",
        slug="body-too-large",
        title="Request body too large",
    )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                # The HTTP parser refuses a malformed Content-Length before we are called.
                return None
    return None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


class BodySizeLimitMiddleware:
    """Refuse (413 problem) any request body larger than `max_bytes`, except on the
    `streamed` routes.

    Parameters
    ----------
    app : ASGIApp
        The application wrapped.
    max_bytes : int
        Largest body accepted, in bytes.
    streamed : collection of (method, path)
        Routes that stream their body and bound it themselves, e.g.
        ``("POST", "/v1/datasets")``; paths are taken without the root path.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, streamed: Collection[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = frozenset(streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], _route_path(scope)) in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            # Refused before a byte of it is read (and before "100 Continue" is sent).
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left: there is no one to answer
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Later calls wait for the disconnect, as on the original channel.
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = body_too_large(self.max_bytes).to_problem(instance=scope["path"])
        await problem_response(problem)(scope, receive, send)
