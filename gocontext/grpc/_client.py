"""gRPC client interceptors (sync and ``grpc.aio``): a call's context is the ambient one.

Before the call: a done context sends nothing; the call's timeout becomes the smaller of its
own and the context's time left, so the deadline goes out as gRPC's own; ``PropagatedKey``
values go in ``baggage`` metadata. While in flight, the context's end cancels the call (gRPC
tells the server), and the error raised is the context's: ``Canceled`` or
``DeadlineExceeded``, never a bare ``RpcError`` or ``CancelledError``. An answer, or a stream's
end, that comes once the context's deadline passed in flight raises ``DeadlineExceeded`` too: a
handler that stops at its deadline may answer with what it has.

The sync API hands an interceptor of a blocking unary response (``stub.Method(request)``,
``with_call``) no call object, only a continuation that blocks until the call is over; the
interceptor makes the same call as a future instead (see ``_blocking_thunk``), so a cancel
reaches blocking calls too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any, NamedTuple

import grpc  # type: ignore[import-untyped]  # grpc ships no type hints
import grpc._channel  # type: ignore[import-untyped]  # grpc ships no type hints
import grpc.aio  # type: ignore[import-untyped]  # grpc ships no type hints
from grpc._cython import cygrpc  # type: ignore[import-untyped]  # grpc ships no type hints

from .._ambient import current
from .._context import _NEVER, Context
from .._done import Done
from .._errors import ContextError, DeadlineExceeded
from ..http._outgoing import baggage, deadline_passed, time_left

__all__ = ["aio_channel", "aio_client_interceptors", "channel", "client_interceptors"]


class _Details(NamedTuple):
    method: Any
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _SyncDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    pass


class _Outgoing(NamedTuple):
    """What a call sends under its context: its timeout (the smaller of its own and the
    context's time left), its metadata (with the context's values), and whether the
    context's deadline is what limits the call (so gRPC's DEADLINE_EXCEEDED is ours)."""

    timeout: float | None
    metadata: Any
    binding: bool


# A NamedTuple's own __new__ is a Python function: the tuple's, with the fields, costs less.
_new_outgoing: Callable[[type[_Outgoing], tuple[float | None, Any, bool]], _Outgoing] = (
    tuple.__new__
)


def _outgoing(ctx: Context, timeout: float | None, metadata: Any) -> _Outgoing:
    """A call's *timeout* and *metadata* under *ctx*; raises the context's error if it is
    done. Metadata without values to add is passed on as it came."""
    binding = False
    left = time_left(ctx)
    if left is not None and (timeout is None or timeout > left):
        timeout, binding = left, True
    if not metadata:  # (_metadata_with()'s first case, written out: the commonest)
        value = baggage(ctx, None)
        if value is not None:
            metadata = (("baggage", value),)
    else:
        metadata = _metadata_with(ctx, metadata)
    return _new_outgoing(_Outgoing, (timeout, metadata, binding))


# Metadata that can be read again: passed on as it came (anything else, as the pairs read).
_REREAD = (tuple, list, grpc.aio.Metadata)


def _metadata_with(ctx: Context, metadata: Any) -> Any:
    """*metadata* with *ctx*'s values in its ``baggage``: pairs, or *metadata* as it came when
    there are none to add."""
    if not metadata:  # (none, or empty: grpc.aio hands an empty Metadata)
        value = baggage(ctx, None)
        return metadata if value is None else (("baggage", value),)
    pairs = tuple(metadata)  # (read once: *metadata* may be any iterable of pairs, as grpc takes)
    existing = ",".join([_text(v) for k, v in pairs if k == "baggage"]) or None
    value = baggage(ctx, existing)
    if value is None:
        return metadata if isinstance(metadata, _REREAD) else pairs
    return [*((k, v) for k, v in pairs if k != "baggage"), ("baggage", value)]


def _text(value: Any) -> str:
    """A metadata value as text: grpc takes an ASCII key's value as bytes too."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _sync_details(details: Any, out: _Outgoing) -> Any:
    return _SyncDetails(
        details.method,
        out.timeout,
        out.metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _aio_details(ctx: Context, details: Any) -> tuple[Any, bool]:
    """The call's details under *ctx* (see ``_outgoing``), and whether its deadline binds."""
    timeout = details.timeout
    binding = False
    left = time_left(ctx)
    if left is not None and (timeout is None or timeout > left):
        timeout, binding = left, True
    metadata = _aio_metadata(ctx, details.metadata)
    return _new_aio_details(
        _AioDetails,
        (details.method, timeout, metadata, details.credentials, details.wait_for_ready),
    ), binding


_Metadata: Any = grpc.aio.Metadata
_AioDetails: Any = grpc.aio.ClientCallDetails
# grpc.aio's call details are a namedtuple: the tuple's own __new__, with the fields, skips its
# Python-level one (as _new_outgoing).
_new_aio_details: Callable[[Any, tuple[Any, ...]], Any] = tuple.__new__


def _metadata_inside() -> bool:
    """Whether grpc.aio's ``Metadata`` keeps its pairs as this module expects: an
    ``OrderedDict`` of each key's values in ``_metadata`` (grpc's, since grpc.aio began);
    if so, ``_aio_metadata`` reads and makes one without its Python-level methods."""
    try:
        probe = _Metadata(("a", "1"), ("b", "2"), ("a", "3"))
        inside = probe._metadata
        made = object.__new__(_Metadata)
        made._metadata = OrderedDict(a=["1"])
    except Exception:  # any surprise: the public way
        return False
    return (
        type(inside) is OrderedDict
        and inside == OrderedDict(a=["1", "3"], b=["2"])
        and tuple(made) == (("a", "1"),)
        and len(made) == 1
        and not object.__new__(_Metadata).__dict__
    )


_METADATA_INSIDE = _metadata_inside()


def _aio_metadata(ctx: Context, metadata: Any) -> Any:
    """*metadata* (grpc.aio hands a ``Metadata``, empty when the caller sent none) with the
    context's values: a new ``Metadata`` when there are values to add, else *metadata*."""
    if _METADATA_INSIDE and type(metadata) is _Metadata and not metadata._metadata:
        value = baggage(ctx, None)
        if value is None:
            return metadata
        made = object.__new__(_Metadata)  # (Metadata(("baggage", value)), without its calls)
        inside = made._metadata = OrderedDict()
        inside["baggage"] = [value]
        return made
    metadata = _metadata_with(ctx, metadata)
    if metadata is not None and not isinstance(metadata, _Metadata):
        metadata = _Metadata(*metadata)
    return metadata


# When the context's deadline passes, gRPC's own for the call (the same one, sent as the time
# left) ends it, unless that is further off than this (the context's passed on a fake clock).
_DUE = 0.05


def _ours_to_end(ctx: Context, call: Any) -> bool:
    """Whether the context, now done, is to end *call* itself: for a cancel, or for a passed
    deadline that gRPC's own for the call (real time) is not about to end it with, as a deadline
    passed on a fake clock (``gocontext.testing``). gRPC's own ends it otherwise, so the call
    says ``DEADLINE_EXCEEDED``, as it does without us."""
    if not isinstance(ctx.err(), DeadlineExceeded):
        return True
    try:
        left = call.time_remaining()
    except Exception:  # (a call another interceptor made may not say): end it ourselves
        return True
    return left is None or left > _DUE


def _translate(e: BaseException, ctx: Context, binding: bool, ours: bool) -> BaseException:
    """What a call's error *e* is raised as: the context's error when the context's end is what
    ended the call (*ours*: it cancelled the call in flight), ``DeadlineExceeded`` for gRPC's
    DEADLINE_EXCEEDED when the call's deadline is the context's (*binding*) and has passed,
    else *e* itself: an error the server gave (a DEADLINE_EXCEEDED of its own, as its call
    downstream timing out, while the context has time left), or a cancel of the caller's own,
    stays what it is however the context ends after it."""
    if ours:
        err = ctx.err()
        if err is not None:
            return err
    if binding and isinstance(e, grpc.RpcError):
        code = e.code() if callable(getattr(e, "code", None)) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            err = ctx.err()
            if isinstance(err, DeadlineExceeded):
                return err
            if deadline_passed(ctx):  # (passed: our timer may mark the context a moment later)
                return DeadlineExceeded()
    return e


# --------------------------------------------------------------------------------------------
# sync


class _CallWatch:
    """A call (a future or a stream) under its context: the context's end cancels it (see
    ``_ours_to_end``; ``fired``: it did), and notes that it ended while the call was in flight
    (``ended``); the call's end releases it. It holds the call, and what the caller holds
    (``_SyncOutcome``) holds it, never the other way: a caller that drops the call lets it go
    (see ``_SyncOutcome.__del__``)."""

    __slots__ = ("call", "ctx", "ended", "fired", "handle")

    def __init__(self, call: Any, ctx: Context) -> None:
        self.call = call
        self.ctx = ctx
        self.ended = False
        self.fired = False
        self.handle = ctx.done().add_callback(self.on_done)

    def on_done(self) -> None:  # in whatever thread ended the context
        self.ended = True
        if _ours_to_end(self.ctx, self.call):
            # Set first: the caller, woken by the cancel, reads it at once.
            self.fired = True
            if not self.call.cancel():  # (over already: whatever ended it is the outcome)
                self.fired = False

    def release(self, _: object = None) -> None:
        self.handle.cancel()


# The code object of grpc's continuation for a blocking call, and where its closure keeps the
# intercepted callable: found once, then recognised by identity.
_blocking_code: tuple[Any, int] | None = None


def _blocking_owner(continuation: Callable[..., Any]) -> Any:
    """For the continuation of a blocking unary call (``stub.Method(request)``, ``with_call``),
    grpc's intercepted callable (whose ``_thunk``, checked by the caller, gives the next
    layer's callable by method name); else None.

    grpc hands an interceptor of a blocking call only a continuation that blocks until the
    call is over, leaving nothing to cancel. Its closure holds the intercepted callable, whose
    ``_thunk`` gives the next layer (the channel, or the next interceptor). Anything
    unexpected falls back to the continuation (a cancel then reaches the call only at its
    deadline).
    """
    global _blocking_code
    code = getattr(continuation, "__code__", None)
    if code is None:
        return None
    known = _blocking_code
    if known is None or known[0] is not code:
        if not continuation.__qualname__.endswith("_with_call.<locals>.continuation"):
            return None
        try:
            known = _blocking_code = (code, code.co_freevars.index("self"))
        except ValueError:
            return None
    try:
        return continuation.__closure__[known[1]].cell_contents  # type: ignore[index]  # grpc's closure cell, found by name above
    except (IndexError, TypeError, ValueError):
        return None


# The channel's own callables whose blocking call goes through ``_channel.segregated_call``.
_SEGREGATED = tuple(
    getattr(grpc._channel, name)
    for name in ("_UnaryUnaryMultiCallable", "_StreamUnaryMultiCallable")
    if isinstance(getattr(grpc._channel, name, None), type)
)
_CANCELLED = getattr(getattr(cygrpc, "StatusCode", None), "cancelled", None)
_DEADLINE_EXCEEDED = getattr(getattr(cygrpc, "StatusCode", None), "deadline_exceeded", None)


class _Watching:
    """One blocking call under its context: the call, once made, is cancelled when the
    context ends; at a passed deadline with gRPC's own status, as its own deadline (the same,
    unless the context's passed on a fake clock) does."""

    __slots__ = ("call", "ctx", "ended", "handle")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.call: Any = None
        self.handle: Any = None
        self.ended = False  # the context ended while the call was in flight

    def on_done(self) -> None:  # in whatever thread ended the context
        self.ended = True
        if isinstance(self.ctx.err(), DeadlineExceeded):
            self.call.cancel(_DEADLINE_EXCEEDED, "Deadline Exceeded")
        else:
            self.call.cancel(_CANCELLED, "Locally cancelled by context")


# The blocking call this thread is making through a ``_WatchedCore`` (set around the call).
_watching: contextvars.ContextVar[_Watching | None] = contextvars.ContextVar(
    "gocontext.grpc.watching", default=None
)


class _WatchedCore:
    """Stands in for a channel's core in a channel callable of our own (see ``_callable``):
    the blocking call it makes for a watched call (``_watching``, in the caller's thread) is
    handed to that call's context."""

    __slots__ = ("_core",)

    def __init__(self, core: Any) -> None:
        self._core = core

    def segregated_call(self, *args: Any, **kwargs: Any) -> Any:
        call = self._core.segregated_call(*args, **kwargs)
        watching = _watching.get()
        if watching is not None:
            watching.call = call
            watching.handle = watching.ctx.done().add_callback(watching.on_done)
        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def _callable(owner: Any, method: Any) -> Any:
    """The next layer's callable for *method*, made by *owner*'s ``_thunk``. When it is the
    channel's own, its core is put behind a ``_WatchedCore``, and it is kept on *owner* for
    the calls after (grpc makes one per call, the same each time: a stub's method keeps its
    callable, as a caller without interceptors keeps the channel's)."""
    kept = getattr(owner, "_gocontext_callable", None)
    if kept is not None and kept[0] == method:
        return kept[1]
    callable_ = owner._thunk(method)
    if _watch_core(callable_):
        with contextlib.suppress(AttributeError):  # (one without a __dict__ keeps none)
            owner._gocontext_callable = (method, callable_)
    return callable_


def _watch_core(callable_: Any) -> bool:
    """Put the core of *callable_*, if it is a channel's own callable whose blocking call goes
    through ``segregated_call``, behind a ``_WatchedCore``; whether it did."""
    if (
        _SEGREGATED
        and _CANCELLED is not None
        and _DEADLINE_EXCEEDED is not None
        and isinstance(callable_, _SEGREGATED)
    ):
        callable_._channel = _WatchedCore(callable_._channel)
        return True
    return False


def _blocking_call(owner: Any, ctx: Context, details: Any, out: _Outgoing, request: Any) -> Any:
    """Make a blocking call in this thread, cancelable: the next layer's callable, when it is
    the channel's own, makes it with its core behind a ``_WatchedCore``, which hands the call
    to the context's done-callback. Else the same call as a future (a thread hop per call)."""
    callable_ = _callable(owner, details.method)
    if type(getattr(callable_, "_channel", None)) is not _WatchedCore:
        outcome = callable_.future(
            request,
            timeout=out.timeout,
            metadata=out.metadata,
            credentials=details.credentials,
            wait_for_ready=getattr(details, "wait_for_ready", None),
            compression=getattr(details, "compression", None),
        )
        return _watch_future(outcome, ctx, out)
    return _watched_call(callable_, ctx, details, out, request)


def _watched_call(callable_: Any, ctx: Context, details: Any, out: _Outgoing, request: Any) -> Any:
    """Make a blocking call in this thread through *callable_*, a channel's own callable whose
    core is behind a ``_WatchedCore`` (see ``_watched``): the call, or its error as grpc's
    continuation gives it."""
    try:
        return _watched(
            callable_.with_call,
            ctx,
            out,
            request,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )[1]  # (grpc's rendezvous of an answered call: its result() is the response)
    except grpc.RpcError as e:
        return e  # (as grpc's continuation does: the error is the outcome)


def _watched(
    invoke: Callable[..., Any],
    ctx: Context,
    out: _Outgoing,
    request: Any,
    credentials: Any,
    wait_for_ready: Any,
    compression: Any,
) -> Any:
    """What *invoke* (a channel's own callable whose core is behind a ``_WatchedCore``, or its
    ``with_call``) returns for a blocking call made in this thread: the call it makes is handed
    to the context, whose end cancels it. Raises the context's error when that ended the call,
    and for an answer that comes once the context's deadline passed in flight (a handler may
    stop at that deadline and answer what it has); gRPC's other errors as they come."""
    watching = _Watching(ctx)
    token = _watching.set(watching)
    try:
        answer = invoke(
            request, out.timeout, out.metadata, credentials, wait_for_ready, compression
        )
    except grpc.RpcError as e:
        err = _translate(e, ctx, out.binding, watching.ended)
        if err is e:
            raise
        raise err from e
    finally:
        _watching.reset(token)
        handle = watching.handle
        released = handle is None or handle.cancel()
    if not released:  # (the context ended in flight)
        late = ctx.err()
        if isinstance(late, DeadlineExceeded):
            raise late
    return answer


def _watch_future(outcome: Any, ctx: Context, out: _Outgoing) -> Any:
    """*outcome*, a call still running, cancelled when the context ends, and raising the
    context's error from ``result()`` when that is what ended it."""
    watch = _CallWatch(outcome, ctx)
    outcome.add_done_callback(watch.release)
    return _SyncOutcome(outcome, ctx, out.binding, watch)


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]  # grpc's classes are untyped (Any)
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]  # grpc's classes are untyped (Any)
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]  # grpc's classes are untyped (Any)
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]  # grpc's classes are untyped (Any)
):
    def _unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ctx = current()
        out = _outgoing(ctx, details.timeout, details.metadata)
        if ctx.done() is _NEVER:  # it can never end: nothing to watch, nothing to translate
            return continuation(_sync_details(details, out), request)
        owner = _blocking_owner(continuation)
        if owner is not None:
            kept = getattr(owner, "_gocontext_callable", None)  # (see _callable)
            if kept is not None and kept[0] == details.method:
                return _watched_call(kept[1], ctx, details, out, request)
            if callable(getattr(owner, "_thunk", None)):
                return _blocking_call(owner, ctx, details, out, request)
        return _watch_future(continuation(_sync_details(details, out), request), ctx, out)

    def _stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ctx = current()
        out = _outgoing(ctx, details.timeout, details.metadata)
        call = continuation(_sync_details(details, out), request)
        if ctx.done() is _NEVER:
            return call
        watch = _CallWatch(call, ctx)
        if not call.add_callback(watch.release):  # (it has ended already)
            watch.release()
        return _SyncStream(call, ctx, out.binding, watch)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._unary(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._unary(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._stream(continuation, details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._stream(continuation, details, request)


class _SyncOutcome(grpc.Call, grpc.Future):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """A unary call's outcome whose ``result()`` raises the context's error when it ended it
    (an answer that came once its deadline passed in flight too: see ``_watched_call``).
    Dropped while in flight, it cancels the call, as gRPC's own does."""

    def __init__(self, inner: Any, ctx: Context, binding: bool, watch: _CallWatch) -> None:
        self._inner = inner
        self._ctx = ctx
        self._binding = binding
        self._watch = watch

    def __del__(self) -> None:
        watch = self.__dict__.get("_watch")  # (not through __getattr__)
        if watch is not None:
            watch.release()
            with contextlib.suppress(Exception):  # (at exit, grpc may be half gone)
                watch.call.cancel()  # (an ended call's is nothing)

    def _late(self) -> ContextError | None:
        """The context's ``DeadlineExceeded`` if it passed while the call was in flight."""
        if self._watch.ended:
            err = self._ctx.err()
            if isinstance(err, DeadlineExceeded):
                return err
        return None

    def result(self, timeout: float | None = None) -> Any:
        try:
            response = self._inner.result(timeout)
        except ContextError:
            raise
        except (grpc.RpcError, grpc.FutureCancelledError) as e:
            err = _translate(e, self._ctx, self._binding, self._watch.fired)
            if err is e:
                raise
            raise err from e
        late = self._late()
        if late is not None:
            raise late
        return response

    def exception(self, timeout: float | None = None) -> Any:
        try:
            self.result(timeout)
        except (grpc.FutureTimeoutError, grpc.FutureCancelledError):
            raise  # (as grpc.Future's: a cancelled future has no outcome to give)
        except Exception as e:
            return e
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def cancel(self) -> bool:
        if not self._inner.cancel():
            return False
        self._watch.release()  # (at once: gRPC runs the call's own callbacks a moment later)
        return True

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
        return self._inner.time_remaining()  # type: ignore[no-any-return]  # grpc's call is untyped

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
    """A streamed response whose iteration raises the context's error when it ended it; its
    end, when the deadline passed in flight, ``DeadlineExceeded`` (a handler that stops at its
    deadline ends the stream as if whole)."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except StopIteration:
            late = self._late()
            if late is not None:
                raise late from None
            raise
        except ContextError:
            raise
        except grpc.RpcError as e:
            err = _translate(e, self._ctx, self._binding, self._watch.fired)
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


class _OneAnswer(grpc.UnaryUnaryMultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """A ``channel()``'s callable for a call with one answer (unary-unary or stream-unary),
    under the ambient context. A blocking call (``stub.Method(request)``, ``with_call``) goes
    straight to the channel's own callable, whose core is behind a ``_WatchedCore``: the
    interceptor's work without grpc's interceptor machinery. ``future()``, and every call when
    the channel's callable is not one of grpc's own, goes through ``_SyncInterceptor``."""

    __slots__ = ("_raw", "_via")

    def __init__(self, raw: Any, via: Any) -> None:
        self._raw = raw if _watch_core(raw) else None
        self._via = via  # (the same call through grpc.intercept_channel and our interceptor)

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return _one_answer(
            self._raw,
            self._via,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        raw = self._raw
        return _one_answer(
            None if raw is None else raw.with_call,
            self._via.with_call,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return self._via.future(
            request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamInAnswer(_OneAnswer):
    """``_OneAnswer`` for a stream-unary call: its request is ``request_iterator``, as grpc
    names it (a caller may pass it by that name)."""

    __slots__ = ()

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return super().__call__(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return super().with_call(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return super().future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


def _one_answer(
    raw: Callable[..., Any] | None,
    via: Callable[..., Any],
    request: Any,
    timeout: float | None,
    metadata: Any,
    credentials: Any,
    wait_for_ready: Any,
    compression: Any,
) -> Any:
    """A blocking call with one answer: through *raw* (a channel's own callable, or its
    ``with_call``, whose core is behind a ``_WatchedCore``) under the ambient context, or through
    *via* (the same through ``_SyncInterceptor``) when there is none."""
    if raw is None:
        return via(request, timeout, metadata, credentials, wait_for_ready, compression)
    ctx = current()
    out = _outgoing(ctx, timeout, metadata)
    if ctx.done() is _NEVER:  # it can never end: nothing to watch, nothing to translate
        return raw(request, out.timeout, out.metadata, credentials, wait_for_ready, compression)
    return _watched(raw, ctx, out, request, credentials, wait_for_ready, compression)


def _maker(kind: str) -> Callable[..., Any]:
    """A channel wrapper's maker of callables of *kind* (``unary_unary`` and the like): it hands
    the channel's arguments to the wrapper's ``_wrap(kind, args)``."""

    def make(
        self: Any,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        args = _callable_args(method, request_serializer, response_deserializer, _registered_method)
        return self._wrap(kind, args)

    make.__name__ = make.__qualname__ = kind
    return make


class _Callables:
    """A channel wrapper's four makers of callables (see ``_maker``)."""

    unary_unary = _maker("unary_unary")
    unary_stream = _maker("unary_stream")
    stream_unary = _maker("stream_unary")
    stream_stream = _maker("stream_stream")


class _Channel(_Callables, grpc.Channel):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """What ``channel()`` returns: *inner*'s calls under the ambient context."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._intercepted = grpc.intercept_channel(inner, _SyncInterceptor())

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self._inner.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._inner.unsubscribe(callback)

    def _wrap(self, kind: str, args: tuple[Any, ...]) -> Any:
        via = getattr(self._intercepted, kind)(*args)
        if kind == "unary_unary":
            return _OneAnswer(self._inner.unary_unary(*args), via)
        if kind == "stream_unary":
            return _StreamInAnswer(self._inner.stream_unary(*args), via)
        return via

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> _Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _callable_args(
    method: str, request_serializer: Any, response_deserializer: Any, registered: bool
) -> tuple[Any, ...]:
    """The arguments of a channel's ``unary_unary()`` and the like (``_registered_method``, as
    generated stubs of grpc 1.62 on pass it, only when set: an older grpc takes three)."""
    if registered:
        return (method, request_serializer, response_deserializer, True)
    return (method, request_serializer, response_deserializer)


def channel(inner: Any) -> Any:
    """*inner*, a ``grpc.Channel``, with its calls under the ambient context.

    The same promises as ``client_interceptors()``, for less: a blocking call with one answer
    (``stub.Method(request)``, ``with_call``) skips grpc's interceptor machinery, which costs
    more per call than the context's own work. Every kind of call is covered (``.future()``
    and streamed ones through ``client_interceptors()``). Closing it closes *inner*. A value
    that is not a ``grpc.Channel`` is a ``TypeError``.

    Example:
        >>> import grpc, gocontext.grpc
        >>> channel = gocontext.grpc.channel(grpc.insecure_channel("127.0.0.1:9"))
        >>> channel.close()
    """
    if not isinstance(inner, grpc.Channel):
        raise TypeError(
            f"gocontext.grpc.channel() needs a grpc.Channel, got {type(inner).__name__}: {inner!r}"
        )
    return _Channel(inner)


# --------------------------------------------------------------------------------------------
# grpc.aio


class _AioCall:
    """An aio call under its context from the moment it is made: the context's end cancels it
    (from whatever thread or task ends it; see ``_ours_to_end``), and what it answers, awaited
    or read, raises the context's error when that is what ended it; a stream's end, when the
    deadline passed in flight, ``DeadlineExceeded`` (a handler that stops at its deadline ends
    the stream as if whole).

    A ``CancelledError`` is ours to translate only if we cancelled the call and the task
    itself is not being cancelled (a framework cancellation always passes through untouched).
    grpc.aio needs a client-streaming call itself back from the interceptor (the caller's
    ``write()`` goes through it): this stands in for it, and passes the rest to the call.
    """

    __slots__ = ("_binding", "_call", "_ctx", "_ended", "_fired", "_handle", "_loop")

    def __init__(self, call: Any, ctx: Context, binding: bool, done: Done | None = None) -> None:
        self._call = call
        self._ctx = ctx
        self._binding = binding
        self._loop = asyncio.get_running_loop()
        self._fired = False  # we cancelled the call (only ever set in the loop's thread)
        self._ended = False  # the context ended while the call was watched
        self._handle = (ctx.done() if done is None else done).add_callback(self._on_done)

    def _on_done(self) -> None:  # in whatever thread ended the context
        self._ended = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cancel
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        call = self._call
        if not _ours_to_end(self._ctx, call):
            return
        self._fired = call.cancel()  # (False: over already, and whatever ended it stands)
        # grpc.aio leaves a write that waits for the call to start waiting when the call is
        # cancelled (its wait is on an event only the start sets): set it, and the write sees
        # the call over.
        started = getattr(call, "_metadata_sent", None)
        if self._fired and isinstance(started, asyncio.Event):
            started.set()

    def released_when_done(self) -> _AioCall:
        """Self, unwatched once the call is done (whether or not anyone reads its answer)."""
        self._call.add_done_callback(self._release)
        return self

    def _release(self, _: object) -> None:
        self._handle.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """As the call's: *callback* is given this, the call the caller holds."""
        self._call.add_done_callback(lambda _: callback(self))

    async def write(self, request: Any) -> None:
        """As the call's, raising the context's error when the context ended the call."""
        await self._writing(self._call.write(request))

    async def done_writing(self) -> None:
        """As the call's, raising the context's error when the context ended the call."""
        await self._writing(self._call.done_writing())

    async def _writing(self, step: Any) -> None:
        try:
            await step
        except ContextError:
            raise
        except (Exception, asyncio.CancelledError) as e:
            # (grpc.aio's own for a call cancelled meanwhile: its RpcError, CancelledError,
            # InvalidStateError, or its internal ExecuteBatchError)
            self._raise_translated(e)
            raise

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except ContextError:
            raise
        except (grpc.RpcError, asyncio.CancelledError) as e:
            self._raise_translated(e)
            raise
        finally:
            self._handle.cancel()
        if self._ended:  # (an answer after the deadline passed in flight is late)
            late = self._ctx.err()
            if isinstance(late, DeadlineExceeded):
                raise late
        return response

    async def responses(self) -> AsyncIterator[Any]:
        """The streamed answers."""
        call = self._call
        try:
            async for response in call:
                yield response
            # A call we cancelled just stops yielding, and one whose handler stopped at the
            # deadline ends as if whole: say why.
            self._raise_if_cut()
        except ContextError:
            raise
        except (grpc.RpcError, asyncio.CancelledError) as e:
            self._raise_translated(e)
            raise
        finally:
            self._handle.cancel()
            call.cancel()  # (a consumer that stops early ends the call, as gRPC's iterator does)

    def _raise_if_cut(self) -> None:
        """At a stream's end: raise the context's error if the context cut it (we cancelled
        it, or its handler stopped at the deadline that passed in flight, ending the stream as
        if whole)."""
        done = self._ctx.err()
        if done is not None and (
            self._fired or (self._ended and isinstance(done, DeadlineExceeded))
        ):
            raise done

    def _raise_translated(self, e: BaseException) -> None:
        """Raise the context's error for *e* (a gRPC error or a cancellation) if the context
        is what ended the call; return if *e* is to pass through as it is."""
        err = self._translated(e)
        if err is not None:
            raise err from e

    def _translated(self, e: BaseException) -> BaseException | None:
        """The context's error for *e* if the context is what ended the call, else None."""
        if isinstance(e, asyncio.CancelledError) and (not self._fired or _task_cancelling()):
            return None
        err = _translate(e, self._ctx, self._binding, self._fired)
        return None if err is e else err


def _task_cancelling() -> bool:
    """Whether the running task is being cancelled (Python 3.11+; before, never told)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is not None and bool(cancelling())


class _AioEnded:
    """A unary call its context ended (see ``_AioUnaryUnary``): awaited, it raises the
    context's error; the rest (``code()``, ``details()``, metadata, ``cancelled()``) is the
    call's own. grpc.aio takes it for the call: a ``UnaryUnaryCall`` (registered below)."""

    __slots__ = ("_call", "_err")

    def __init__(self, call: Any, err: BaseException) -> None:
        self._call = call
        self._err = err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            yield from self._call.__await__()  # (done: its error, or its late answer, at once)
        except (grpc.RpcError, asyncio.CancelledError) as e:
            raise self._err from e
        raise self._err


grpc.aio.UnaryUnaryCall.register(_AioEnded)


def _aio_prepare(details: Any) -> tuple[Context, Any, bool]:
    """The ambient context, the call's details under it, and whether its deadline binds."""
    ctx = current()
    new_details, binding = _aio_details(ctx, details)
    return ctx, new_details, binding


# grpc.aio files each interceptor under the first kind it is an instance of: one class a kind.
# A unary call is awaited here, then handed back as the call (its metadata, code and details
# stay the caller's to read; handing it back unawaited, for the caller's await, measured ~4 %
# more instructions a call, though it saves a turn of the loop), or, when its context ended it,
# as an ``_AioEnded``; a client-streaming call goes back watched; streamed answers go back as
# their reader. A context that can never end leaves the call as it is: nothing to watch,
# nothing to translate.


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx = current()  # (_aio_prepare() and _AioCall.__await__, written out: the commonest)
        new_details, binding = _aio_details(ctx, details)
        call = await continuation(new_details, request)
        done = ctx.done()
        if done is _NEVER:
            await call
            return call
        watched = _AioCall(call, ctx, binding, done)
        try:
            await call
        except ContextError:
            raise
        except (grpc.RpcError, asyncio.CancelledError) as e:
            err = watched._translated(e)
            if err is None:
                raise
            return _AioEnded(call, err)
        finally:
            released = watched._handle.cancel()
        if not released:  # the context ended in flight: an answer after its deadline is late
            err = ctx.err()
            if isinstance(err, DeadlineExceeded):
                return _AioEnded(call, err)
        return call


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    async def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx, new_details, binding = _aio_prepare(details)
        call = await continuation(new_details, request)
        if ctx.done() is _NEVER:
            return call
        return _AioCall(call, ctx, binding).released_when_done()


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx, new_details, binding = _aio_prepare(details)
        call = await continuation(new_details, request)
        if ctx.done() is _NEVER:
            return call
        return _AioCall(call, ctx, binding).released_when_done().responses()


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    async def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        ctx, new_details, binding = _aio_prepare(details)
        call = await continuation(new_details, request)
        if ctx.done() is _NEVER:
            return call
        return _AioCall(call, ctx, binding).released_when_done().responses()


def aio_client_interceptors() -> list[Any]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``.

    A call's context is ``gocontext.current()``. A done context sends nothing; the deadline
    goes out as gRPC's own (a smaller ``timeout`` of the call's own still applies) and
    ``PropagatedKey`` values in ``baggage`` metadata; a cancel from any thread or task cancels
    the call at once (read or not yet) and raises ``Canceled``, a passed deadline
    ``DeadlineExceeded``; unary, client-streaming, server-streaming and bidirectional calls
    alike. (grpc.aio runs on asyncio only.)

    Example:
        >>> import grpc.aio, gocontext.grpc
        >>> interceptors = gocontext.grpc.aio_client_interceptors()
        >>> # grpc.aio.insecure_channel("127.0.0.1:50051", interceptors=interceptors)
    """
    return [_AioUnaryUnary(), _AioStreamUnary(), _AioUnaryStream(), _AioStreamStream()]


class _AioStreamed(_AioCall):
    """A ``aio_channel()`` call with streamed answers, under its context: read with ``async
    for`` or ``read()``, either raising the context's error when that ended the call."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.responses()

    async def read(self) -> Any:
        try:
            response = await self._call.read()
        except ContextError:
            raise
        except (grpc.RpcError, asyncio.CancelledError) as e:
            self._raise_translated(e)
            raise
        if response is grpc.aio.EOF:  # (as in responses(): a cut stream is not a whole one)
            self._raise_if_cut()
        return response


# What an aio_channel()'s calls stand in for, as grpc.aio's own calls are: a caller may check.
grpc.aio.UnaryUnaryCall.register(_AioCall)
grpc.aio.StreamUnaryCall.register(_AioCall)
grpc.aio.UnaryStreamCall.register(_AioStreamed)
grpc.aio.StreamStreamCall.register(_AioStreamed)


class _AioCallable:
    """An ``aio_channel()``'s callable: the call, made by the channel's own callable with the
    context's deadline and values, and watched by its context (see ``_AioCall``), without
    grpc.aio's interceptor machinery (a task of its own per call)."""

    __slots__ = ("_raw", "_watched")

    def __init__(self, raw: Any, watched: type[_AioCall]) -> None:
        self._raw = raw
        self._watched = watched

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        ctx = current()
        out = _outgoing(ctx, timeout, metadata)
        call = self._raw(
            request,
            timeout=out.timeout,
            metadata=out.metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        done = ctx.done()
        if done is _NEVER:  # it can never end: nothing to watch, nothing to translate
            return call
        return self._watched(call, ctx, out.binding, done).released_when_done()


class _AioStreamInCallable(_AioCallable):
    """``_AioCallable`` for a call with streamed requests, taking its arguments as grpc.aio's
    does: ``request_iterator`` (None: written with ``write()``) and the rest, by position or
    by name."""

    __slots__ = ()

    def __call__(  # (grpc.aio's own signature for these calls)
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return _AioCallable.__call__(
            self,
            request_iterator,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


class _AioChannel(_Callables, grpc.aio.Channel):  # type: ignore[misc]  # grpc's classes are untyped (Any)
    """What ``aio_channel()`` returns: *inner*'s calls under the ambient context."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aenter__(self) -> _AioChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._inner.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> Any:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    def _wrap(self, kind: str, args: tuple[Any, ...]) -> Any:
        watched = _AioCall if kind.endswith("_unary") else _AioStreamed
        made = _AioStreamInCallable if kind.startswith("stream_") else _AioCallable
        return made(getattr(self._inner, kind)(*args), watched)


def aio_channel(inner: Any) -> Any:
    """*inner*, a ``grpc.aio.Channel``, with its calls under the ambient context.

    The promises of ``aio_client_interceptors()``, for less: no interceptor machinery (grpc.aio
    runs a task per intercepted call). A done context raises its error at the call, sending
    nothing. A call is the channel's own, watched: awaited (or read, for streamed answers, with
    ``async for`` or ``read()``) it raises ``Canceled`` when a cancel from any thread or task
    ended it, ``DeadlineExceeded`` for a passed deadline; ``write()``, ``code()``,
    ``details()`` and the metadata are the call's own. Closing it closes *inner*. A value that
    is not a ``grpc.aio.Channel`` is a ``TypeError``.

    Example:
        >>> import asyncio, grpc.aio, gocontext.grpc
        >>> async def main() -> None:
        ...     async with gocontext.grpc.aio_channel(grpc.aio.insecure_channel("127.0.0.1:9")):
        ...         pass
        >>> asyncio.run(main())
    """
    if not isinstance(inner, grpc.aio.Channel):
        raise TypeError(
            f"gocontext.grpc.aio_channel() needs a grpc.aio.Channel, got "
            f"{type(inner).__name__}: {inner!r}"
        )
    return _AioChannel(inner)
