"""ASGI middleware: each request runs under a context with the caller's deadline and values,
cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from .._ambient import use
from .._async import scope
from .._context import Context, background, with_cancel_cause, with_timeout
from .._errors import DeadlineExceeded
from .._propagation import attach_values
from ._headers import HeaderError, parse_baggage, parse_grpc_timeout, parse_timeout_ms

__all__ = ["ClientDisconnected", "ContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_get_running_loop = asyncio._get_running_loop

_MS_HEADERS = {
    b"connect-timeout-ms": "Connect-Timeout-Ms",
    b"x-envoy-expected-rq-timeout-ms": "X-Envoy-Expected-Rq-Timeout-Ms",
}


class ClientDisconnected(ConnectionError):
    """The cause recorded on a request's context when its client disconnects."""

    __module__ = "gocontext.http"


def incoming_deadline(headers: list[tuple[bytes, bytes]]) -> tuple[float | None, dict[str, str]]:
    """The smallest timeout the headers ask for (seconds, or None) and the baggage values."""
    timeout: float | None = None
    baggage: list[str] = []
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"grpc-timeout":
            t = parse_grpc_timeout(raw_value.decode("latin-1"))
        elif name in _MS_HEADERS:
            t = parse_timeout_ms(_MS_HEADERS[name], raw_value.decode("latin-1"))
        else:
            if name == b"baggage":
                baggage.append(raw_value.decode("latin-1"))
            continue
        timeout = t if timeout is None else min(timeout, t)
    return timeout, (parse_baggage(",".join(baggage)) if baggage else {})


class ContextMiddleware:
    """Run each HTTP request of an ASGI app (Starlette, FastAPI, any) under its own context.

    The context carries the caller's deadline (``Grpc-Timeout``, ``Connect-Timeout-Ms`` or
    ``X-Envoy-Expected-Rq-Timeout-Ms``, the smallest, capped by *max_timeout*, which also
    applies when no header is sent) and its ``PropagatedKey`` values (``baggage``), and is
    cancelled with a ``ClientDisconnected`` cause when the client goes away. Handlers read it
    with ``gocontext.current()`` or ``scope["gocontext"]``. The handler runs in
    ``gocontext.scope(ctx)``: one that ignores its context is still cancelled at the deadline,
    and the response is a 504 if nothing was sent yet. A malformed deadline header gets a 400
    that says what was wrong.

    Example:
        >>> from starlette.applications import Starlette
        >>> import gocontext.http
        >>> app = gocontext.http.ContextMiddleware(Starlette(), max_timeout=30)
    """

    __module__ = "gocontext.http"

    def __init__(self, app: ASGIApp, *, max_timeout: float | None = None) -> None:
        if max_timeout is not None and (
            isinstance(max_timeout, bool)
            or not isinstance(max_timeout, (int, float))
            or math.isnan(max_timeout)
            or max_timeout <= 0
        ):
            raise ValueError(
                f"max_timeout must be a positive number of seconds, got {max_timeout!r}"
            )
        self.app = app
        self.max_timeout = max_timeout

    async def __call__(self, scope_: Scope, receive: Receive, send: Send) -> None:
        if scope_["type"] != "http":
            await self.app(scope_, receive, send)
            return
        try:
            timeout, values = incoming_deadline(scope_.get("headers") or [])
        except HeaderError as e:
            await _plain(send, 400, f"bad deadline header: {e}")
            return
        if self.max_timeout is not None:
            timeout = self.max_timeout if timeout is None else min(timeout, self.max_timeout)
        parent = attach_values(background(), values)
        ctx, cancel = with_cancel_cause(parent)
        deadline_ctx: Context = ctx
        cancel_deadline: Callable[[], None] = lambda: None  # noqa: E731
        if timeout is not None:
            deadline_ctx, cancel_deadline = with_timeout(ctx, timeout)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        send_stream, receive_stream = anyio.create_memory_object_stream[Message](1)

        async def reader() -> None:
            # Keep reading the connection, so a disconnect is seen even while the handler
            # works without reading; the handler gets the messages through the stream.
            async with send_stream:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        cancel(ClientDisconnected("the client disconnected"))
                        await send_stream.send(message)
                        return
                    await send_stream.send(message)

        async def proxied_receive() -> Message:
            try:
                return await receive_stream.receive()
            except anyio.EndOfStream:
                return {"type": "http.disconnect"}

        failure: Exception | None = None

        async def run_app() -> None:
            nonlocal failure
            try:
                async with scope(deadline_ctx) as child:
                    scope_["gocontext"] = child
                    with use(child):
                        await self.app(scope_, proxied_receive, tracked_send)
            except DeadlineExceeded:
                if not started:
                    await _plain(send, 504, "deadline exceeded")
            except Exception as e:
                # Raised by the caller, outside any task group, so never wrapped in a group;
                # unless the client is gone and nobody is left to answer.
                if ctx.err() is None or started:
                    failure = e

        try:
            loop = _get_running_loop()
            if loop is not None:  # a bare asyncio task: a tenth of a task group's cost
                task = loop.create_task(reader())
                try:
                    await run_app()
                finally:
                    task.cancel()
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait({task})
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    try:
                        await run_app()
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            cancel_deadline()
            cancel(None)
            send_stream.close()  # the reader may have been cancelled before it began
            receive_stream.close()
        if failure is not None:
            raise failure


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
