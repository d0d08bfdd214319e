"""The aiohttp client: a trace config that stamps each request with its context, and a client
middleware that aborts the request when the context ends.

A request's context is ``trace_request_ctx=ctx`` when that is a context, else the ambient one.
The trace config (on its own, or installed by ``client_session()``) refuses a done context and
sends the time left as ``Grpc-Timeout`` and ``PropagatedKey`` values in ``baggage``. The
middleware (installed by ``client_session()``; aiohttp's trace signals cannot replace an
exception, so a trace config alone cannot raise ``Canceled``) runs connect, send and the wait
for headers in ``gocontext.scope``, and once headers are in, a context that ends makes every
read of the body raise its error and closes the connection, so the pool keeps only healthy
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from .. import _timer
from .._ambient import current
from .._async import scope
from .._context import Context
from .._errors import ContextError, DeadlineExceeded
from .._propagation import outgoing_values
from ..http._headers import format_baggage, format_grpc_timeout

__all__ = ["client_session", "trace_config"]

# The context of the request being sent by this task, from the trace's request start to the
# middleware (aiohttp runs both in the caller's task, in that order, before the request ends).
_pending: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "gocontext.aiohttp.pending", default=None
)


def _context_of(trace_request_ctx: object) -> Context:
    if trace_request_ctx is not None and isinstance(trace_request_ctx, Context):
        return trace_request_ctx
    return current()


async def _on_request_start(
    session: aiohttp.ClientSession,
    trace_config_ctx: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    ctx = _context_of(trace_config_ctx.trace_request_ctx)
    err = ctx.err()
    if err is not None:
        raise err
    deadline = ctx.deadline()
    if deadline is not None and deadline != math.inf:
        left = deadline - _timer.now()
        if left <= 0:
            raise DeadlineExceeded()
        params.headers["Grpc-Timeout"] = format_grpc_timeout(left)
    values = outgoing_values(ctx)
    if values:
        params.headers["baggage"] = format_baggage(values, params.headers.get("baggage"))
    _pending.set(ctx)  # (every request sets it afresh; left set afterwards: cheaper than a
    # signal at every end, and harmless, since only the middleware reads it)


def trace_config() -> aiohttp.TraceConfig:
    """An aiohttp ``TraceConfig`` that sends each request's deadline and values.

    A request's context is ``trace_request_ctx=ctx``, else ``gocontext.current()``; a done
    context raises its error and sends nothing. On its own it cannot abort a request in flight
    (use ``client_session()`` for that).

    Example:
        >>> import aiohttp, gocontext.aiohttp
        >>> config = gocontext.aiohttp.trace_config()
        >>> # aiohttp.ClientSession(trace_configs=[config])
    """
    config = aiohttp.TraceConfig()
    config.on_request_start.append(_on_request_start)
    return config


if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only

    class _PassingDeadlineExceeded(DeadlineExceeded, asyncio.TimeoutError):
        """A ``DeadlineExceeded`` that aiohttp lets through as a timeout on Python 3.10.

        There ``asyncio.TimeoutError`` is not the builtin ``TimeoutError``, and aiohttp turns
        any other ``OSError`` leaving a client middleware (ours is one) into ``ClientOSError``.
        """

    _PassingDeadlineExceeded.__name__ = _PassingDeadlineExceeded.__qualname__ = "DeadlineExceeded"
    _PassingDeadlineExceeded.__module__ = "gocontext"

    def _passing(err: ContextError) -> ContextError:
        if type(err) is not DeadlineExceeded:
            return err
        passing = _PassingDeadlineExceeded(*err.args)
        passing.__cause__ = err.__cause__
        return passing

else:

    def _passing(err: ContextError) -> ContextError:
        return err


async def _middleware(
    req: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    ctx = _pending.get()
    if ctx is None:
        ctx = current()
    try:
        async with scope(ctx):
            resp = await handler(req)
    except ContextError as e:
        passing = _passing(e)
        if passing is e:
            raise
        raise passing from e.__cause__
    except (aiohttp.ClientError, OSError) as e:  # (asyncio.TimeoutError is an OSError)
        err = ctx.err()
        if err is None:
            raise
        raise _passing(err) from e
    _bound_body(resp, ctx)
    return resp


def _bound_body(resp: aiohttp.ClientResponse, ctx: Context) -> None:
    """Make the body of *resp* end with the context: every read raises its error."""
    conn = resp.connection
    if conn is None:  # the body is in and the connection released already
        return
    loop = asyncio.get_running_loop()

    def abort() -> None:  # on the loop
        if resp.closed:
            return
        err = ctx.err()
        resp.content.set_exception(err if err is not None else DeadlineExceeded())
        resp.close()  # the connection is dropped, never reused

    def on_done() -> None:  # in whatever thread ended the context
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to abort
            loop.call_soon_threadsafe(abort)

    handle = ctx.done().add_callback(on_done)

    def release() -> None:  # when the connection is released or closed
        handle.cancel()

    conn.add_callback(release)


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose requests honour their context.

    Takes ``ClientSession``'s arguments; adds ``trace_config()`` and a client middleware ahead
    of any given. A request's context is ``trace_request_ctx=ctx``, else
    ``gocontext.current()``. A done context sends nothing; the deadline and ``PropagatedKey``
    values go out; a cancel from any thread or task aborts the request in flight, while
    connecting, waiting for headers or reading the body, with ``Canceled``, a passed deadline
    with ``DeadlineExceeded``; the connection pool stays healthy. A request given its own
    ``middlewares=`` replaces the session's, ours included. Call it with a running loop.

    Example:
        >>> import asyncio, gocontext, gocontext.aiohttp
        >>> async def main() -> None:
        ...     ctx, cancel = gocontext.with_cancel(gocontext.background())
        ...     cancel()
        ...     async with gocontext.aiohttp.client_session() as session:
        ...         await session.get("http://127.0.0.1:9/", trace_request_ctx=ctx)
        >>> asyncio.run(main())
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """
    traces = list(kwargs.pop("trace_configs", None) or ())
    middlewares: Sequence[ClientMiddlewareType] = kwargs.pop("middlewares", None) or ()
    return aiohttp.ClientSession(
        trace_configs=[trace_config(), *traces],
        middlewares=(_middleware, *middlewares),
        **kwargs,
    )
