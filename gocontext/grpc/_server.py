"""gRPC server interceptors (sync and ``grpc.aio``): each RPC's handler runs under a context.

The context has the RPC's deadline (gRPC's own ``time_remaining()``; none when the client sent
none) and the ``PropagatedKey`` values of the ``baggage`` metadata; it is ambient in the handler
and ``context_of(servicer_context)`` finds it. It ends when the RPC ends: ``Canceled`` when the
handler is done, ``Canceled`` with a ``ClientDisconnected`` cause when the client cancelled or
went away first, ``DeadlineExceeded`` when the deadline passed (which wins a tie: gRPC reports
a passed deadline as a termination too, and the context then ends with it at once). A handler
whose context ended with ``DeadlineExceeded`` ends the RPC with ``DEADLINE_EXCEEDED`` whatever
it returns: its late answer is not sent as a success.

On a ``grpc.aio`` server a sync handler runs, as grpc.aio runs it, in the server's thread pool,
wrapped as on the sync server; the end of the RPC's task tells it that the RPC ended.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from types import CoroutineType
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpc ships no type hints
import grpc.aio  # type: ignore[import-untyped]  # grpc ships no type hints

from .._ambient import _current, use
from .._context import (
    CancelCausePair,
    RichContext,
    background,
    timeout_cancel_cause,
    with_cancel,
    with_cancel_cause,
)
from .._done import Done
from .._errors import DeadlineExceeded
from .._propagation import values_context
from .._tree import end_with, state_of
from ..http._headers import parse_baggage

try:  # the same cause as the HTTP wires, when the http extra is there
    from ..http._middleware import ClientDisconnected
except ImportError:  # pragma: no cover - without the http extra

    class ClientDisconnected(ConnectionError):  # type: ignore[no-redef]  # the fallback when the HTTP extra is absent
        """The cause recorded on an RPC's context when its client cancels or goes away."""


__all__ = ["aio_server_interceptor", "context_of", "server_interceptor"]

# The context of every RPC being handled, by the id of its servicer context (which the RPC
# keeps alive until it is removed here: an id is never another's meanwhile). Dict operations
# are atomic: no lock.
_contexts: dict[int, RichContext] = {}


def context_of(servicer_context: object) -> RichContext:
    """The context of the RPC that *servicer_context* belongs to, while its handler runs.

    Raises ``LookupError`` for a servicer context our interceptor is not handling.

    Example:
        >>> import gocontext.grpc
        >>> gocontext.grpc.context_of(object())
        Traceback (most recent call last):
          ...
        LookupError: gocontext.grpc.context_of() found no context: ...
    """
    ctx = _contexts.get(id(servicer_context))
    if ctx is None:
        raise LookupError(
            "gocontext.grpc.context_of() found no context: is the server's interceptor "
            f"gocontext.grpc.server_interceptor() / aio_server_interceptor()? got "
            f"{type(servicer_context).__name__}"
        )
    return ctx


def _open(servicer_context: Any, left: float | None) -> CancelCausePair:
    """The context of the RPC of *servicer_context*, and its cancel: one node, the RPC's
    deadline (*left*, its ``time_remaining()``), whose cancel takes the cause (a client that
    left), or a cancel-with-cause node when the RPC has no deadline. Found by ``context_of()``
    until it is ended."""
    baggage = ""
    for k, v in servicer_context.invocation_metadata() or ():
        if k == "baggage":
            baggage = f"{baggage},{v}" if baggage else str(v)
    parent = values_context(baggage, lambda: parse_baggage(baggage))
    pair = (
        timeout_cancel_cause(parent, left)
        if left is not None and left < _NO_DEADLINE
        else with_cancel_cause(parent)
    )
    _contexts[id(servicer_context)] = pair[0]
    return pair


class _Rpc:
    """One RPC's context and how it ends. ``finished`` is set (once) when the handler is done;
    the end-of-RPC callbacks read it to tell a finished RPC from a client that left."""

    __slots__ = ("cancel", "ctx", "finished", "key", "left", "servicer_context")

    def __init__(
        self,
        servicer_context: Any,
        pair: CancelCausePair | None = None,
        left: float | None = None,
    ) -> None:
        """*pair*: the RPC's context and its cancel, made by ``_open(servicer_context, left)``
        already, else made here."""
        if pair is None:
            left = servicer_context.time_remaining()
            pair = _open(servicer_context, left)
        self.key = id(servicer_context)
        self.ctx: RichContext = pair[0]
        self.cancel: Callable[[BaseException | None], None] = pair[1]
        self.finished = False
        self.servicer_context = servicer_context
        self.left = left  # the time the RPC had when it came (see deadline_passed)

    def ended(self) -> None:
        """The RPC ended (any thread, gRPC's own among them: never blocks): end the context,
        for the deadline if it has passed, else for the client that left."""
        if self.finished:  # (the handler's end() has ended it, or is about to)
            return
        if self.deadline_passed():
            self.expire()
        else:
            self.client_left()

    def client_left(self) -> None:
        self.cancel(ClientDisconnected("the client cancelled the RPC or went away"))

    def expire(self) -> None:
        """End the context with ``DeadlineExceeded`` now: gRPC's deadline, the same one as
        our timer's, has passed (our timer may fire a moment later)."""
        end_with(self.ctx, DeadlineExceeded, None)

    def deadline_passed(self) -> bool:
        """Whether the deadline has passed, or is so close that a client leaving now left for
        its own: the client's deadline falls before ours by the transit of the RPC's start,
        and by gRPC's rounding up of the timeout it sent (three significant digits)."""
        left: float | None = self.servicer_context.time_remaining()
        if left is None:
            return False
        timeout = self.left
        if timeout is None or timeout >= _NO_DEADLINE:
            return left <= _SKEW
        return left <= _SKEW + timeout * _ROUNDING

    def end(self) -> None:
        self.finished = True
        _contexts.pop(self.key, None)  # (twice, from two threads, is harmless)
        self.cancel(None)


# The sync server reports "no deadline" as about 2**63 seconds left; anything past ten years
# is no deadline.
_NO_DEADLINE = 10 * 365 * 24 * 3600.0
_SKEW = 0.02  # seconds the client's deadline may fall before ours (the RPC's transit)
_ROUNDING = 0.01  # the most gRPC rounds a timeout up, in its grpc-timeout header, relatively


class _Wrapped:
    """The wrapped handlers an interceptor made, by the handler they wrap: a server hands the
    same handler object for a method RPC after RPC, so each is wrapped once (a bounded memo,
    keyed by identity; dict operations are atomic, so at worst a handler is wrapped twice).
    ``_made`` is the same dict for good: the interceptors look in it first themselves."""

    __slots__ = ("_made", "_wrap")
    _MAX = 1024

    def __init__(self, wrap: Callable[[Any], Any]) -> None:
        self._made: dict[int, tuple[Any, Any]] = {}
        self._wrap = wrap

    def __call__(self, handler: Any) -> Any:
        if handler is None:
            return None
        made = self._made.get(id(handler))
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(handler)
        if len(self._made) >= self._MAX:
            self._made.clear()
        self._made[id(handler)] = (handler, wrapped)  # (the handler kept: its id stays its own)
        return wrapped


_BEHAVIORS = ("unary_unary", "stream_unary", "unary_stream", "stream_stream")


class _Handler(
    collections.namedtuple(
        "_Handler",
        [
            "request_streaming",
            "response_streaming",
            "request_deserializer",
            "response_serializer",
            "unary_unary",
            "stream_unary",
            "unary_stream",
            "stream_stream",
        ],
    ),
    grpc.RpcMethodHandler,  # type: ignore[misc]  # grpc's classes are untyped (Any)
):
    """A wrapped method handler, when the handler wrapped is not a namedtuple (as grpc's own
    are): any ``grpc.RpcMethodHandler`` with the documented attributes."""


def _replaced(handler: Any, field: str, behavior: Any) -> Any:
    """*handler* with *behavior* for its *field*."""
    if isinstance(handler, tuple) and hasattr(handler, "_replace"):  # grpc's own
        return handler._replace(**{field: behavior})
    fields: dict[str, Any] = {name: getattr(handler, name, None) for name in _Handler._fields}
    fields[field] = behavior
    return _Handler(**fields)


def _wrap(wrap_unary: Any, wrap_stream: Any, handler: Any) -> Any:
    if handler.unary_unary is not None:
        return _replaced(handler, "unary_unary", wrap_unary(handler.unary_unary))
    if handler.stream_unary is not None:
        return _replaced(handler, "stream_unary", wrap_unary(handler.stream_unary))
    if handler.unary_stream is not None:
        return _replaced(handler, "unary_stream", wrap_stream(handler.unary_stream))
    if handler.stream_stream is not None:
        return _replaced(handler, "stream_stream", wrap_stream(handler.stream_stream))
    return handler


def _deadline_exceeded(servicer_context: Any) -> Any:
    """End the RPC with ``DEADLINE_EXCEEDED``, as gRPC does at a passed deadline: for a handler
    that returned once its context had ended so (an awaitable on a grpc.aio server)."""
    return servicer_context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _expired(ctx: RichContext) -> bool:
    """Whether *ctx* has ended with ``DeadlineExceeded`` (asked once an RPC: no error object
    made, as ``ctx.err()`` would)."""
    s = state_of(ctx)  # type: ignore[arg-type]  # the RPC's context is a node of ours
    return s is not None and s[0] is DeadlineExceeded


def _status_deadline_exceeded(servicer_context: Any) -> None:
    """The status a sync stream handler that has finished leaves for gRPC to send: no abort()
    there, which on a grpc.aio server would race gRPC's write of its last answer (gRPC runs
    the handler's generator in a thread of its own, ahead of that write)."""
    servicer_context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
    servicer_context.set_details("Deadline Exceeded")


# --------------------------------------------------------------------------------------------
# sync (and sync handlers on a grpc.aio server)


def _until_the_rpc_ends(rpc: _Rpc, servicer_context: Any, rpc_over: Done | None) -> None:
    """End *rpc*'s context when the RPC ends: gRPC's own callback on the sync server (which
    says whether the RPC is still on: a client may have cancelled one still queued); on a
    grpc.aio server, whose sync servicer context has no such callback, *rpc_over* (see
    ``_InPool``). (Written out in ``_sync_unary``.)"""
    if rpc_over is None:
        if not servicer_context.add_callback(rpc.ended):
            rpc.ended()
    else:
        rpc_over.add_callback(rpc.ended)  # (in the loop's thread: ended() never blocks)


def _sync_unary(behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def run(request: Any, servicer_context: Any, rpc_over: Done | None = None) -> Any:
        rpc = _Rpc(servicer_context)
        if rpc_over is None:  # (_until_the_rpc_ends(), written out: once an RPC)
            if not servicer_context.add_callback(rpc.ended):
                rpc.ended()
        else:
            rpc_over.add_callback(rpc.ended)
        token = _current.set(rpc.ctx)  # (use(rpc.ctx), written out: the context is ours)
        try:
            response = behavior(request, servicer_context)
        finally:
            _current.reset(token)
            rpc.end()
        ended = state_of(rpc.ctx)  # type: ignore[arg-type]  # (_expired(), written out)
        if ended is not None and ended[0] is DeadlineExceeded:  # (the first end stays)
            _deadline_exceeded(servicer_context)
        return response

    return run


def _sync_stream(behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def run(request: Any, servicer_context: Any, rpc_over: Done | None = None) -> Iterator[Any]:
        rpc = _Rpc(servicer_context)
        _until_the_rpc_ends(rpc, servicer_context, rpc_over)
        try:
            with use(rpc.ctx):
                responses = behavior(request, servicer_context)
            while True:
                with use(rpc.ctx):  # (each step of the handler's generator sees its context)
                    try:
                        response = next(responses)
                    except StopIteration:
                        if _expired(rpc.ctx):
                            _status_deadline_exceeded(servicer_context)
                        return
                yield response
        finally:
            rpc.end()

    return run


class _SyncServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    def __init__(self) -> None:
        self._wrapped = _Wrapped(functools.partial(_wrap, _sync_unary, _sync_stream))
        self._made = self._wrapped._made

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        made = self._made.get(id(handler))  # (self._wrapped(handler)'s commonest case)
        return made[1] if made is not None and made[0] is handler else self._wrapped(handler)


def server_interceptor() -> Any:
    """A ``grpc.ServerInterceptor`` that runs each RPC's handler under its own context.

    For ``grpc.server(..., interceptors=[...])``; unary and streaming handlers. The context
    has the RPC's deadline and ``PropagatedKey`` values, is ambient in the handler and at
    ``gocontext.grpc.context_of(servicer_context)``, and ends with the RPC (see the module).

    Example:
        >>> import grpc, gocontext.grpc
        >>> interceptor = gocontext.grpc.server_interceptor()
        >>> isinstance(interceptor, grpc.ServerInterceptor)
        True
    """
    return _SyncServerInterceptor()


# --------------------------------------------------------------------------------------------
# grpc.aio


_NOTHING: Any = object()


class _Driven:
    """Awaits a handler's step (its coroutine, or one step of its async generator) in the
    RPC's own task: no task, shield or round trip through the loop of its own.

    When gRPC cancels the RPC's task (the client left or the deadline passed), the context
    ends first (for a passed deadline at once, without waiting for our timer), then the
    cancellation goes on into the handler, so its cleanup sees why. Once a cancellation has
    gone in, the step ends cancelled whatever the handler does with it, as the RPC does.
    """

    __slots__ = ("_first", "_rpc", "_step", "_thrown")

    def __init__(self, rpc: _Rpc, awaitable: Any, first: Any = _NOTHING) -> None:
        self._rpc = rpc
        self._step: Any = awaitable.__await__()
        self._first = first  # what the handler's step yielded already (see _aio_unary)
        self._thrown = False  # a cancellation went into the handler

    def __await__(self) -> _Driven:
        return self

    def __iter__(self) -> _Driven:
        return self

    def __next__(self) -> Any:
        first = self._first
        if first is not _NOTHING:  # (the first step, the await's own next())
            self._first = _NOTHING
            return first
        return self.send(None)

    def send(self, value: Any) -> Any:
        return self._run(self._step.send, value)

    def throw(self, exc: Any, *rest: Any) -> Any:
        if rest and rest[0] is not None:  # the (type, value, traceback) form
            exc = rest[0]
        elif isinstance(exc, type):
            exc = exc()
        if not isinstance(exc, asyncio.CancelledError):
            return self._run(self._step.throw, exc)
        self._rpc.ended()
        self._thrown = True
        return self._run(self._step.throw, exc)

    def close(self) -> None:
        self._step.close()

    def _run(self, step: Callable[[Any], Any], arg: Any) -> Any:
        if not self._thrown:  # (whatever the step raises passes as it is)
            return step(arg)
        try:
            return step(arg)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # (StopIteration too: the handler's step is over)
            raise asyncio.CancelledError() from e


def _aio_unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def run(request: Any, servicer_context: Any) -> Any:
        # The RPC's context, and its _Rpc only once the handler suspends (only _Driven needs
        # it; nothing else here reads its `finished`): rpc.end(), written out.
        left = servicer_context.time_remaining()
        pair = _open(servicer_context, left)
        token = _current.set(pair[0])  # (use(ctx), written out: the context is ours)
        try:
            step = behavior(request, servicer_context)
            if type(step) is not CoroutineType:
                response = await _Driven(_Rpc(servicer_context, pair, left), step)
            else:
                # The handler's first step, run here as _Driven would (no cancellation can
                # come in before it suspends): a handler that answers without suspending
                # needs no more.
                try:
                    first = step.send(None)
                except StopIteration as e:
                    response = e.value
                else:
                    response = await _Driven(_Rpc(servicer_context, pair, left), step, first)
        finally:
            _current.reset(token)
            _contexts.pop(id(servicer_context), None)
            pair[1](None)
        ended = state_of(pair[0])  # type: ignore[arg-type]  # (_expired(), written out)
        if ended is not None and ended[0] is DeadlineExceeded:  # (the first end stays)
            await _deadline_exceeded(servicer_context)
        return response

    return run


def _aio_stream(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def run(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
        rpc = _Rpc(servicer_context)
        try:
            with use(rpc.ctx):
                responses = behavior(request, servicer_context)
                if not hasattr(responses, "__anext__"):  # a coroutine using context.write()
                    await _Driven(rpc, responses)
                    if _expired(rpc.ctx):
                        await _deadline_exceeded(servicer_context)
                    return
            while True:
                with use(rpc.ctx):  # (not across the yield: gRPC's code runs there)
                    try:
                        response = await _Driven(rpc, responses.__anext__())
                    except StopAsyncIteration:
                        if _expired(rpc.ctx):
                            await _deadline_exceeded(servicer_context)
                        return
                try:
                    yield response
                except BaseException:  # (cancelled, or closed, while gRPC was sending it)
                    rpc.ended()  # the RPC ended before the handler did
                    raise
        finally:
            rpc.end()

    return run


def _aio_wrap(handler: Any) -> Any:
    """Wrap *handler* to run as grpc.aio runs it: in the RPC's task when it is async (grpc's
    test, ``_is_async_handler``: a coroutine or async generator function, or an awaitable),
    else in the server's thread pool, with a sync servicer context. Our wrapper is of the
    same kind, so grpc.aio runs it the same way: the async one, or the sync server's (bound to
    each RPC, see ``_InPool``)."""
    behavior = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )
    if behavior is None or (
        inspect.isawaitable(behavior)
        or inspect.iscoroutinefunction(behavior)
        or inspect.isasyncgenfunction(behavior)
    ):
        return _wrap(_aio_unary, _aio_stream, handler)
    return _InPool(_wrap(_sync_unary, _sync_stream, handler))


class _InPool:
    """A sync handler's wrapped handler on a grpc.aio server, bound to each RPC in turn.

    grpc.aio runs it in its thread pool, where no callback says the RPC ended (the sync
    servicer context's callbacks run once a unary handler has returned, a stream's never).
    The end of the task gRPC runs the RPC in does (gRPC cancels it when the client leaves or
    the deadline passes), handed to the thread through a ``Done`` of our own.
    """

    __slots__ = ("_field", "_handler", "_run")

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self._field = next(f for f in _BEHAVIORS if getattr(handler, f) is not None)
        self._run = getattr(handler, self._field)

    def bind(self) -> Any:
        """The handler for the RPC whose task is running (an interceptor runs in it)."""
        over, end = with_cancel(background())
        task = asyncio.current_task()
        assert task is not None  # (an interceptor runs in the RPC's task)
        task.add_done_callback(lambda _: end())
        run = functools.partial(self._run, rpc_over=over.done())
        return self._handler._replace(**{self._field: run})


class _AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    def __init__(self) -> None:
        self._wrapped = _Wrapped(_aio_wrap)
        self._made = self._wrapped._made

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        made = self._made.get(id(handler))  # (self._wrapped(handler)'s commonest case)
        handler = made[1] if made is not None and made[0] is handler else self._wrapped(handler)
        if type(handler) is _InPool:
            return handler.bind()
        return handler


def aio_server_interceptor() -> Any:
    """A ``grpc.aio.ServerInterceptor`` that runs each RPC's handler under its own context.

    For ``grpc.aio.server(interceptors=[...])``; unary and streaming handlers, async (run in
    the RPC's task) or sync (run in the server's ``migration_thread_pool``, as grpc.aio runs
    them). Otherwise as ``server_interceptor()``.

    Example:
        >>> import grpc.aio, gocontext.grpc
        >>> interceptor = gocontext.grpc.aio_server_interceptor()
        >>> isinstance(interceptor, grpc.aio.ServerInterceptor)
        True
    """
    return _AioServerInterceptor()
