"""gRPC client interceptors (sync and ``grpc.aio``): a call's context is the ambient one.

Before the call: a done context sends nothing; the call's timeout becomes the smaller of its
own and the context's time left, so the deadline goes out as gRPC's own; ``PropagatedKey``
values go in ``baggage`` metadata. While in flight, the context's end cancels the call (gRPC
tells the server), and the error raised is the context's: ``Canceled`` or
``DeadlineExceeded``, never a bare ``RpcError`` or ``CancelledError``.

The sync API hands an interceptor of a blocking unary response (``stub.Method(request)``,
``with_call``) no call object, only a continuation that blocks until the call is over; the
interceptor makes the same call as a future instead (see ``_blocking_thunk``), so a cancel
reaches blocking calls too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from .. import _timer
from .._ambient import current
from .._context import Context
from .._errors import ContextError, DeadlineExceeded
from .._propagation import outgoing_values
from ..http._headers import format_baggage

__all__ = ["aio_client_interceptors", "client_interceptors"]


class _Details(NamedTuple):
    method: Any
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _SyncDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


def _prepare(details: Any, aio: bool) -> tuple[Context, Any, bool]:
    """The call's context, its details with the deadline and values, and whether the
    context's deadline is what limits the call. Raises the context's error if it is done."""
    ctx = current()
    err = ctx.err()
    if err is not None:
        raise err
    timeout = details.timeout
    binding = False
    deadline = ctx.deadline()
    if deadline is not None and deadline != math.inf:
        left = deadline - _timer.now()
        if left <= 0:
            raise DeadlineExceeded()
        if timeout is None or timeout > left:
            timeout, binding = left, True
    pairs = [] if details.metadata is None else list(details.metadata)
    values = outgoing_values(ctx)
    if values:
        existing = ",".join(str(v) for k, v in pairs if k == "baggage") or None
        pairs = [(k, v) for k, v in pairs if k != "baggage"]
        pairs.append(("baggage", format_baggage(values, existing)))
    if aio:
        new = grpc.aio.ClientCallDetails(
            details.method,
            timeout,
            grpc.aio.Metadata(*pairs),
            details.credentials,
            details.wait_for_ready,
        )
    else:
        new = _SyncDetails(
            details.method,
            timeout,
            pairs,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
    return ctx, new, binding


def _translate(e: BaseException, ctx: Context, binding: bool) -> BaseException:
    err = ctx.err()
    if err is not None:
        return err
    if binding and isinstance(e, grpc.RpcError):
        code = e.code() if callable(getattr(e, "code", None)) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded()
    return e


# --------------------------------------------------------------------------------------------
# sync


def _on_cancel(ctx: Context, cancel: Callable[[], object]) -> Callable[[], None]:
    """The done-callback that cancels a call: only for a cancel. At a passed deadline gRPC's
    own deadline, the same one, ends the call, so the server learns it was the deadline."""

    def on_done() -> None:
        if not isinstance(ctx.err(), DeadlineExceeded):
            cancel()

    return on_done


def _blocking_thunk(continuation: Callable[..., Any]) -> Any:
    """For the continuation of a blocking unary call (``stub.Method(request)``, ``with_call``),
    the function that gives the next layer's callable by method name; else None.

    grpc hands an interceptor of a blocking call only a continuation that blocks until the
    call is over, leaving nothing to cancel. Its closure holds the intercepted callable, whose
    ``_thunk`` gives the next layer (the channel, or the next interceptor): calling its
    ``.future()`` makes the same call, cancelable. Anything unexpected falls back to the
    continuation (a cancel then reaches the call only at its deadline).
    """
    code = getattr(continuation, "__code__", None)
    if code is None or not continuation.__qualname__.endswith("_with_call.<locals>.continuation"):
        return None
    try:
        closure = getattr(continuation, "__closure__", None) or ()
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in closure), strict=True))
        thunk = cells["self"]._thunk
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return thunk if callable(thunk) else None


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def _unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ctx, new, binding = _prepare(details, aio=False)
        thunk = _blocking_thunk(continuation)
        if thunk is not None:
            # A blocking call: start it as a future instead, which a cancel can reach.
            outcome = thunk(new.method).future(
                request,
                timeout=new.timeout,
                metadata=new.metadata,
                credentials=new.credentials,
                wait_for_ready=new.wait_for_ready,
                compression=new.compression,
            )
        else:
            outcome = continuation(new, request)
        # A future (from .future()) is still running: the context's end cancels it.
        handle = ctx.done().add_callback(_on_cancel(ctx, outcome.cancel))
        outcome.add_done_callback(lambda _: handle.cancel())
        return _SyncOutcome(outcome, ctx, binding)

    def _stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ctx, new, binding = _prepare(details, aio=False)
        call = continuation(new, request)
        handle = ctx.done().add_callback(_on_cancel(ctx, call.cancel))
        call.add_callback(handle.cancel)
        return _SyncStream(call, ctx, binding)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._unary(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._unary(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._stream(continuation, details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._stream(continuation, details, request)


class _SyncOutcome(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A unary call's outcome whose ``result()`` raises the context's error when it ended it."""

    def __init__(self, inner: Any, ctx: Context, binding: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._binding = binding

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._inner.result(timeout)
        except ContextError:
            raise
        except (grpc.RpcError, grpc.FutureCancelledError) as e:
            err = _translate(e, self._ctx, self._binding)
            if err is e:
                raise
            raise err from e

    def exception(self, timeout: float | None = None) -> Any:
        try:
            self.result(timeout)
        except grpc.FutureTimeoutError:
            raise
        except Exception as e:
            return e
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def cancel(self) -> bool:
        return bool(self._inner.cancel())

    def cancelled(self) -> bool:
        return bool(self._inner.cancelled())

    def running(self) -> bool:
        return bool(self._inner.running())

    def done(self) -> bool:
        return bool(self._inner.done())

    def traceback(self, timeout: float | None = None) -> Any:
        return self._inner.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _: fn(self))

    def is_active(self) -> bool:
        return bool(self._inner.is_active())

    def time_remaining(self) -> float | None:
        return self._inner.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._inner.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._inner.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._inner.trailing_metadata()

    def code(self) -> Any:
        return self._inner.code()

    def details(self) -> Any:
        return self._inner.details()


class _SyncStream(_SyncOutcome):
    """A streamed response whose iteration raises the context's error when it ended it."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except StopIteration:
            raise
        except ContextError:
            raise
        except grpc.RpcError as e:
            err = _translate(e, self._ctx, self._binding)
            if err is e:
                raise
            raise err from e


def client_interceptors() -> list[Any]:
    """Interceptors for ``grpc.intercept_channel(channel, *interceptors)``.

    A call's context is ``gocontext.current()``. A done context sends nothing; the deadline
    goes out as gRPC's own (a smaller ``timeout`` of the call's own still applies) and
    ``PropagatedKey`` values in ``baggage`` metadata; a cancel from any thread cancels the
    call (blocking, ``.future()`` or streamed) and raises ``Canceled``, a passed deadline
    ``DeadlineExceeded``.

    Example:
        >>> import grpc, gocontext.grpc
        >>> channel = grpc.intercept_channel(
        ...     grpc.insecure_channel("127.0.0.1:9"), *gocontext.grpc.client_interceptors()
        ... )
        >>> channel.close()
    """
    return [_SyncInterceptor()]


# --------------------------------------------------------------------------------------------
# grpc.aio


class _Canceller:
    """Cancels an aio call from whatever thread ends the context, and remembers it did: a
    ``CancelledError`` is ours to translate only then, and only if the task itself is not
    being cancelled (a framework cancellation always passes through untouched)."""

    def __init__(self, call: Any, ctx: Context) -> None:
        self.call = call
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.fired = False

    def __call__(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cancel
            self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if isinstance(self.ctx.err(), DeadlineExceeded):
            return  # gRPC's own deadline, the same, ends the call: the server sees which
        self.fired = True
        self.call.cancel()

    def owns(self, e: BaseException) -> bool:
        if not isinstance(e, asyncio.CancelledError):
            return True
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # (Python 3.11+)
        return self.fired and not (cancelling is not None and cancelling())


class _AioBase:
    async def _unary(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx, new, binding = _prepare(details, aio=True)
        call = await continuation(new, request)
        canceller = _Canceller(call, ctx)
        handle = ctx.done().add_callback(canceller)
        try:
            return await call
        except ContextError:
            raise
        except (grpc.RpcError, asyncio.CancelledError) as e:
            if not canceller.owns(e):
                raise
            err = _translate(e, ctx, binding)
            if err is e:
                raise
            raise err from e
        finally:
            handle.cancel()

    async def _stream(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx, new, binding = _prepare(details, aio=True)
        call = await continuation(new, request)
        return _aio_responses(call, ctx, binding)


# grpc.aio files each interceptor under the first kind it is an instance of: one class a kind.


class _AioUnaryUnary(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._unary(continuation, details, request)


class _AioStreamUnary(_AioBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        # grpc.aio needs the call itself back here (its writes go through it), so the error
        # stays gRPC's own; the context still sends its deadline and values and cancels it.
        ctx, new, _ = _prepare(details, aio=True)
        call = await continuation(new, request)
        handle = ctx.done().add_callback(_Canceller(call, ctx))
        call.add_done_callback(lambda _: handle.cancel())
        return call


class _AioUnaryStream(_AioBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._stream(continuation, details, request)


class _AioStreamStream(_AioBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._stream(continuation, details, request)


async def _aio_responses(call: Any, ctx: Context, binding: bool) -> AsyncIterator[Any]:
    canceller = _Canceller(call, ctx)
    handle = ctx.done().add_callback(canceller)
    try:
        async for response in call:
            yield response
        # A call we cancelled just stops yielding: say why.
        done = ctx.err()
        if done is not None and await call.code() == grpc.StatusCode.CANCELLED:
            raise done
    except ContextError:
        raise
    except (grpc.RpcError, asyncio.CancelledError) as e:
        if not canceller.owns(e):
            raise
        err = _translate(e, ctx, binding)
        if err is e:
            raise
        raise err from e
    finally:
        handle.cancel()
        call.cancel()  # (a consumer that stops early ends the call, as gRPC's iterator does)


def aio_client_interceptors() -> list[Any]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``.

    A call's context is ``gocontext.current()``. A done context sends nothing; the deadline
    goes out as gRPC's own (a smaller ``timeout`` of the call's own still applies) and
    ``PropagatedKey`` values in ``baggage`` metadata; a cancel from any thread or task cancels
    the call and raises ``Canceled``, a passed deadline ``DeadlineExceeded``; unary and
    streamed responses alike. A client-streaming call (stream in, one answer) is cancelled
    too, but raises gRPC's own error: grpc.aio needs its call object back from the
    interceptor. (grpc.aio runs on asyncio only.)

    Example:
        >>> import grpc.aio, gocontext.grpc
        >>> interceptors = gocontext.grpc.aio_client_interceptors()
        >>> # grpc.aio.insecure_channel("127.0.0.1:50051", interceptors=interceptors)
    """
    return [_AioUnaryUnary(), _AioStreamUnary(), _AioUnaryStream(), _AioStreamStream()]
