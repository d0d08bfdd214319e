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

        channel = _Receiver(receive, lambda: cancel(ClientDisconnected("the client disconnected")))

        failure: Exception | None = None

        async def run_app() -> None:
            nonlocal failure
            try:
                async with scope(deadline_ctx) as child:
                    scope_["gocontext"] = child
                    with use(child):
                        await self.app(scope_, channel.receive, tracked_send)
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
            if loop is not None:
                # Most requests are over before a watcher would matter: start one (a bare
                # asyncio task, a tenth of a task group's cost) only for those still running.
                task: asyncio.Task[None] | None = None

                def start_watcher() -> None:
                    nonlocal task
                    task = loop.create_task(channel.watch())

                timer = loop.call_later(WATCH_AFTER, start_watcher)
                try:
                    await run_app()
                finally:
                    timer.cancel()
                    if task is not None:
                        task.cancel()
                        with anyio.CancelScope(shield=True):
                            await asyncio.wait({task})
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(channel.watch, WATCH_AFTER)
                    try:
                        await run_app()
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            cancel_deadline()
            cancel(None)
            channel.close()
        if failure is not None:
            raise failure


WATCH_AFTER = 0.01  # seconds a request runs before its connection is watched for a disconnect


class _Receiver:
    """The request's ``receive``, shared by the app and a watcher that sees a disconnect.

    Until the watcher starts, the app reads the connection itself. The watcher waits for a
    read the app has under way to finish, then reads every message itself and hands them to
    the app through a small stream, so the connection is always being read: a disconnect is
    seen even while the handler works without reading. (Single-threaded, on the event loop.)
    """

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._watching = False
        self._app_reading = False
        self._app_done: anyio.Event | None = None
        self._stream: Any = None

    async def receive(self) -> Message:
        if not self._watching:
            self._app_reading = True
            try:
                message = await self._receive()
            finally:
                self._app_reading = False
                if self._app_done is not None:
                    self._app_done.set()
            if message["type"] == "http.disconnect":
                self._on_disconnect()
            return message
        try:
            return await self._stream[1].receive()  # type: ignore[no-any-return]
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return {"type": "http.disconnect"}

    async def watch(self, delay: float = 0.0) -> None:
        if delay:
            await anyio.sleep(delay)
        self._stream = anyio.create_memory_object_stream[Message](1)
        self._watching = True
        if self._app_reading:
            self._app_done = anyio.Event()
            await self._app_done.wait()
        send_stream = self._stream[0]
        async with send_stream:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self._on_disconnect()
                    await send_stream.send(message)
                    return
                await send_stream.send(message)

    def close(self) -> None:
        if self._stream is not None:
            self._stream[0].close()
            self._stream[1].close()


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
