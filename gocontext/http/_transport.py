"""httpx transports that make every request honour its context.

A request's context is ``request.extensions["gocontext"]`` when given, else the ambient one.
Before sending: a done context sends nothing; the time left becomes a ``Grpc-Timeout`` header
and caps every httpx timeout; ``PropagatedKey`` values go out in ``baggage``. While in flight:

- ``AsyncTransport`` registers on the context once per request, and the context's end, from
  any thread, interrupts the step in flight (headers, then every body chunk) at once, so
  httpcore drops the connection: under asyncio each step runs in a cancel scope that the end
  cancels; under trio the end aborts the wait the step's task is blocked in. A connection that
  a cancelled request leaves stranded in httpcore's pool is taken out of it.
- ``Transport`` (blocking) registers on the context for the request's lifetime; a cancel or a
  deadline shuts down the sockets the request is using (a connecting socket included: new
  connections are made here, one handshake each; and one in its TLS handshake), which wakes
  the blocked thread with an error that is raised as ``Canceled`` / ``DeadlineExceeded``; a
  request waiting for a free connection is woken too. The connection is discarded, so the pool
  stays healthy. This needs the pool's network backend, so it works with the default inner
  transport or any ``httpx.HTTPTransport``; other inner transports get the headers, the
  timeouts and the check before sending. A shut-down socket reads as the peer's close: once
  the context has ended, no end of a body is taken for a clean one (a body that the close
  delimits would be cut short).

A context that can never end (``background()``, values only) takes a fast path: its headers
and nothing else.
"""

from __future__ import annotations

import _thread
import contextlib
import contextvars
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import httpcore
import httpx
from httpcore._backends.sync import SyncBackend as _SyncBackend
from httpcore._backends.sync import SyncStream as _SyncStream

from .. import _loops
from .._ambient import current
from .._context import _NEVER, Context, check_context
from .._done import CallbackHandle, Done
from .._errors import DeadlineExceeded
from . import _connect as _connect_mod
from ._headers import format_grpc_timeout
from ._outgoing import baggage, deadline_passed, time_left

if TYPE_CHECKING:
    from types import TracebackType

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup

__all__ = ["AsyncTransport", "Transport"]


_EXTENSION = "gocontext"  # the request extension that carries a context


# httpx keeps a request's headers as (raw name, lowercase name, value) byte triples in
# Headers._list; its public get and set re-detect the encoding of every header on each call
# (about 1 µs each). Where that list is as described, our two headers go straight into it.
_FAST_HEADERS = getattr(httpx.Headers({"a": "b"}), "_list", None) == [(b"a", b"a", b"b")]

_TIMEOUT_KINDS = ("connect", "read", "write", "pool")  # httpx's timeout extension
_NO_TIMEOUTS: dict[str, float | None] = {}


def _request_context(request: httpx.Request) -> Context:
    ctx = request.extensions.get(_EXTENSION)
    if ctx is None:
        return current()
    check_context(ctx, "an httpx request", 'extensions["gocontext"]')
    return ctx  # type: ignore[no-any-return]  # extensions are typed Any


def _prepare(request: httpx.Request, ctx: Context) -> bool:
    """Stamp *request* with what *ctx* carries; return True if its deadline caps a timeout.

    Raises ``ctx.err()`` if the context is done: nothing is sent. Where httpx's header list is
    as we expect (``_FAST_HEADERS``), the request is given a new list with our headers, and
    the transport puts the caller's own back once the request is sent: ``Grpc-Timeout`` and
    ``baggage`` are the wire's, made afresh for each hop, and httpx reads every header of the
    request again after its response (its cookie jar, and a redirect's next request), at a
    cost that grows with their number.
    """
    capped = False
    left = time_left(ctx)
    value = baggage(ctx, None)  # (first: a context with no values leaves the header alone)
    if left is not None:
        extensions = request.extensions
        own: Any = extensions.get("timeout") or _NO_TIMEOUTS
        for k in _TIMEOUT_KINDS:
            t = own.get(k)
            if t is None or t > left:
                break
        else:  # every timeout of its own is shorter: the request stays as it is
            own = None
        if own is not None:
            timeouts = dict(own)
            for k in _TIMEOUT_KINDS:
                t = timeouts.get(k)
                if t is None or t > left:
                    timeouts[k] = left
            capped = True
            request.extensions = {**extensions, "timeout": timeouts}
        timeout: str | None = format_grpc_timeout(left)
    elif not value:  # (None, or "": every value was dropped, too big or not encodable)
        return False
    else:
        timeout = None
    headers = request.headers
    if not _FAST_HEADERS:
        if timeout is not None:
            headers["grpc-timeout"] = timeout
        if value is not None:
            existing = headers.get("baggage")
            headers["baggage"] = baggage(ctx, existing) if existing else value  # type: ignore[assignment]  # not None: ctx has values
        return capped
    # One pass over httpx's list takes out the headers we set, keeping the caller's baggage.
    # The caller's list is left as it is: a new one goes out (see the docstring).
    items: list[tuple[bytes, bytes, bytes]] = headers._list
    for item in items:
        name = item[1]
        if (name == b"grpc-timeout" and timeout is not None) or (name == b"baggage" and value):
            theirs = [v for _, n, v in items if n == b"baggage"]
            items = [
                i
                for i in items
                if not (i[1] == b"baggage" and value)
                and not (i[1] == b"grpc-timeout" and timeout is not None)
            ]
            if value and theirs:
                value = baggage(ctx, b",".join(theirs).decode("latin-1"))
            break
    if timeout is None:
        headers._list = [*items, (b"baggage", b"baggage", value.encode("latin-1"))]  # type: ignore[union-attr]  # (a value: see above)
    elif value:
        headers._list = [
            *items,
            (b"grpc-timeout", b"grpc-timeout", timeout.encode("latin-1")),
            (b"baggage", b"baggage", value.encode("latin-1")),
        ]
    else:
        headers._list = [*items, (b"grpc-timeout", b"grpc-timeout", timeout.encode("latin-1"))]
    return capped


def _raise_as_context_error(e: BaseException, ctx: Context, capped: bool) -> None:
    """Raise the transport failure *e* as the context's error if the context caused it.

    An ``httpx.HTTPError`` (or our own ``_Aborted`` signal) after the context ended becomes
    ``ctx.err()``; a timeout that the context's deadline imposed (*capped*, and the deadline
    has come) becomes ``DeadlineExceeded``. Returns for anything else: the caller lets *e*
    pass unchanged.
    """
    if not isinstance(e, (httpx.HTTPError, _Aborted)):
        return
    err: BaseException | None = ctx.err()
    if err is None and capped and isinstance(e, httpx.TimeoutException) and deadline_passed(ctx):
        err = DeadlineExceeded()  # (a timeout of the request's own, shorter, stays as it is)
    if err is None:
        if isinstance(e, _Aborted):  # pragma: no cover - only raised once ctx has ended
            raise httpx.NetworkError(str(e)) from e
        return
    raise err from e


class _Aborted(Exception):
    """Raised inside httpcore by a blocking request whose context ended: never escapes to users.

    Not an httpcore error on purpose, so httpx passes it through unmapped and
    ``_raise_as_context_error`` turns it into the context's error.
    """


# --------------------------------------------------------------------------------------------
# async


class AsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport (asyncio and trio) that makes each request honour its context.

    Wraps *inner* (default: ``httpx.AsyncHTTPTransport()``). A cancel raises ``Canceled``, a
    passed deadline ``DeadlineExceeded``, promptly and with the pool left healthy, whether the
    request is connecting, sending, waiting for headers or streaming its body. A response that
    arrived is always handed over, even if the context ends in the same instant; reading its body
    then raises. Headers go out as with ``Transport``.

    Example:
        >>> import httpx, gocontext, gocontext.http
        >>> client = httpx.AsyncClient(transport=gocontext.http.AsyncTransport())
        >>> # await client.get(url, extensions={"gocontext": ctx})
    """

    __module__ = "gocontext.http"

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._loop: _Loop | None = None  # of the last request that needed a watch

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _request_context(request)
        headers = request.headers
        theirs = headers._list if _FAST_HEADERS else None  # (put back once sent: see _prepare)
        capped = _prepare(request, ctx)
        try:
            done = ctx.done()
            if done is _NEVER:  # it can never end: nothing to watch, nothing to translate
                try:
                    return await self._inner.handle_async_request(request)
                except BaseException:
                    await _release_stranded(self._inner)
                    raise
            watch = _Watch(ctx, capped, self._loop, done)
            self._loop = watch._bound
            try:
                with watch:
                    response = await self._inner.handle_async_request(request)
            except BaseException:
                watch.close()
                await _release_stranded(self._inner)
                raise
        finally:
            if theirs is not None:
                headers._list = theirs
        response.stream = _AsyncBoundedStream(response.stream, watch)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _release_stranded(inner: httpx.AsyncBaseTransport) -> None:
    """Take out of httpcore's pool the connections that cancelled requests left stranded.

    httpcore (1.0) makes a new connection for a queued request and hands it over; a request
    cancelled before it starts connecting (at the checkpoint of an event already set) leaves the
    pool, but its connection stays: never connected, it is neither idle nor closed nor
    available, and holds its slot for good, so a pool of such connections answers nothing (plain
    httpx under ``move_on_after`` does the same). Run after a request fails: a connection still
    connecting that no live request owns is removed, and queued requests get the free slots.
    Nothing is awaited unless something was stranded. A pool laid out otherwise is left alone.
    """
    pool = getattr(inner, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        return
    try:
        with pool._optional_thread_lock:
            owned = [r.connection for r in pool._requests if r.connection is not None]
            stranded = [
                c
                for c in pool._connections
                if c.info() == "CONNECTING" and not any(c is o for o in owned)
            ]
            if not stranded:
                return
            for c in stranded:
                pool._connections.remove(c)
            closing = pool._assign_requests_to_connections()
    except AttributeError:  # pragma: no cover - an httpcore whose pool is laid out otherwise
        return
    await pool._close_connections([*stranded, *closing])  # shielded by httpcore


class _Loop:
    """What a request's watch needs of the event loop running it: made once per loop and
    transport, not once per request (``_Watch`` checks it is the running one)."""

    __slots__ = ("backend", "key", "new_scope", "put", "trio", "where")

    def __init__(self) -> None:
        try:
            backend = _loops.backend()
            key = backend.here()
        except RuntimeError:
            raise RuntimeError(
                "gocontext.http.AsyncTransport needs a running asyncio or trio loop"
            ) from None
        self.backend: _loops.Backend = backend
        self.key = key  # the asyncio loop, or the trio run's token
        self.put = backend.mailbox(key).put
        self.where: Callable[[], object] = backend.here_or_none
        self.trio = _trio_interrupter() if backend is _loops.TRIO else None
        self.new_scope: Callable[[], Any] = backend.cancel_scope_type()


class _Watch:
    """One async request's watch on its context: each step (``with watch:`` around an await)
    is interrupted when the context ends, from any thread; a transport failure the context
    caused is raised as its error (see ``_raise_as_context_error``).

    One registration on the context for the request's lifetime (until ``close()``), not one
    per step; the end reaches the request's event loop through its mailbox and interrupts the
    step in flight there, if any (read and written in the loop's thread only). A step that
    begins after the end raises at once. A framework's own cancellation passes untouched.

    Under asyncio each step runs in a cancel scope that the end cancels. Under trio, where a
    cancel scope costs more than the rest of the request's watch, a step only records its task
    (``_task``, and ``_status``, the task's cancel status as the step began), and the end
    interrupts that task where it blocks, as trio delivers a KeyboardInterrupt: its wait is
    aborted and ``_Interrupted`` raised there, at each blocking point until the step is left,
    never inside a shield entered within the step (see ``_TrioInterrupter``).
    """

    __slots__ = (
        "_bound",
        "_capped",
        "_cs",
        "_ctx",
        "_handle",
        "_loop",
        "_new_scope",
        "_put",
        "_status",
        "_step",
        "_task",
        "_trio",
        "_where",
    )

    def __init__(
        self, ctx: Context, capped: bool, loop: _Loop | None = None, done: Done | None = None
    ) -> None:
        self._ctx = ctx
        self._capped = capped
        self._cs: Any = None
        self._task: Any = None
        self._status: Any = None
        self._bind(loop)
        self._handle = (ctx.done() if done is None else done).add_callback(self._fire)

    def _bind(self, loop: _Loop | None = None) -> None:
        """Serve the running asyncio loop or trio run (*loop*, if it is the one running): a
        body may be read in another."""
        if loop is None or loop.where() is not loop.key:
            loop = _Loop()
        self._bound = loop
        self._put = loop.put
        self._where = loop.where
        self._loop = loop.key
        self._trio = loop.trio
        if loop.trio is None:
            self._new_scope = loop.new_scope
            self._step = loop.backend.step_scope(loop.key)  # one scope for every step, if it can

    def _fire(self) -> None:  # in the thread that ends ctx
        self._put(self._cancel)

    def _cancel(self) -> None:  # in the loop's thread
        if self._trio is not None:
            task = self._task
            if task is not None:  # a step is in flight
                self._trio.interrupt(task, self._status)
                self._put(self._cancel)  # again, until the step is left
            return
        cs = self._cs
        if cs is not None:
            cs.cancel()

    def __enter__(self) -> None:
        err = self._ctx.err()
        if err is not None:
            raise err
        if self._where() is not self._loop:
            self._bind()
        trio = self._trio
        if trio is not None:
            task = self._task = trio.current_task()
            self._status = task._cancel_status
            return
        cs = self._step
        if cs is None:
            cs = self._new_scope()
        cs.__enter__()
        self._cs = cs

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._trio is not None:
            self._task = self._status = None
            if e is None:
                return
            if _interrupted(e):
                # The context's end interrupted the step: raise its error in its place.
                raise self._ctx.err() or _Aborted("the request's context ended") from None
        else:
            cs, self._cs = self._cs, None
            if e is None:
                cs.__exit__(None, None, None)  # (trio's says True for a clean exit too)
                return
            if cs.__exit__(et, e, tb):
                # Our cancellation interrupted the step (nothing else cancels this scope):
                # raise the context's error in its place. A framework's cancellation is never
                # swallowed.
                raise self._ctx.err() or _Aborted("the request's context ended") from None
        if et is not StopAsyncIteration:  # (a body's end)
            _raise_as_context_error(e, self._ctx, self._capped)

    def close(self) -> None:
        self._handle.cancel()


class _Interrupted(BaseException):
    """Raised where a trio task blocks inside a step whose context ended: never escapes to
    users (``_Watch`` raises the context's error in its place). A ``BaseException``, as a
    cancellation is, so that ``except Exception`` does not take it for a failure."""


def _raise_interrupted() -> NoReturn:
    raise _Interrupted("the request's context ended")


def _interrupted(e: BaseException) -> bool:
    """Whether *e* is ``_Interrupted``, or a group of nothing else (a nursery inside the step
    that the interrupt stopped, trio's own ``open_tcp_stream`` for one)."""
    if isinstance(e, _Interrupted):
        return True
    return isinstance(e, BaseExceptionGroup) and e.split(_Interrupted)[1] is None


class _TrioInterrupter:
    """What ``_Watch`` needs of trio to interrupt a task: its current task, and the abort of
    the task's wait, through the parts of trio's task that deliver a KeyboardInterrupt
    (``_abort_func``, ``_attempt_abort``) and that say where the task is in its cancel
    scopes (``_cancel_status``, each status's ``_parent`` and ``_scope``)."""

    __slots__ = ("current_task",)

    def __init__(self, current_task: Callable[[], Any]) -> None:
        self.current_task = current_task

    def interrupt(self, task: Any, entered: Any) -> None:
        """Abort *task*'s wait with ``_Interrupted`` if it is blocked, and not in a shield
        entered since its cancel status was *entered*; else do nothing (call again later).
        In the trio thread."""
        if task._abort_func is None:  # running, or at a checkpoint that cannot be aborted
            return
        status = task._cancel_status
        while status is not entered:
            if status is None or status._scope.shield:
                return
            status = status._parent
        task._attempt_abort(_raise_interrupted)


_trio_parts: list[_TrioInterrupter | None] = []  # once known: [the interrupter or None]


def _trio_interrupter() -> _TrioInterrupter | None:
    """The interrupter, in a trio task, if trio's task is laid out as it expects; else None
    (and each step runs in a cancel scope of its own)."""
    if _trio_parts:
        return _trio_parts[0]
    import trio

    current_task = trio.lowlevel.current_task
    task = current_task()
    status = getattr(task, "_cancel_status", None)
    ok = (
        callable(getattr(task, "_attempt_abort", None))
        and hasattr(task, "_abort_func")
        and hasattr(status, "_parent")
        and isinstance(getattr(getattr(status, "_scope", None), "shield", None), bool)
    )
    _trio_parts.append(_TrioInterrupter(current_task) if ok else None)
    return _trio_parts[0]


class _AsyncBoundedStream(httpx.AsyncByteStream):
    """A response body whose every read is bounded by the request's context.

    Its own iterator, not an async generator: trio registers every async generator with its
    run as it starts, a cost per response for nothing here. Once the body has ended, the
    watch ends and this stream lets go of it (and of the inner stream once closed): httpx's
    response and its stream refer to each other, a cycle that only the garbage collector
    frees, and whatever this stream still held would wait for it too (and make it run
    sooner, at a cost to every request).
    """

    __slots__ = ("_inner", "_it", "_watch")

    def __init__(self, inner: Any, watch: _Watch) -> None:
        self._inner: Any = inner
        self._watch: _Watch | None = watch
        self._it: Any = None

    def __aiter__(self) -> _AsyncBoundedStream:
        if self._inner is not None:
            self._it = self._inner.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        watch = self._watch
        if watch is None:  # ended or closed (httpx raises StreamClosed before asking)
            raise StopAsyncIteration
        err = watch._ctx.err()
        if err is not None:  # it ended between two reads: the inner iterator is finished
            await self._finish_it()  # here, not left suspended for the garbage collector
            raise err
        try:
            with watch:
                return await self._it.__anext__()  # type: ignore[no-any-return]  # httpx's: Any
        except StopAsyncIteration:
            self._end_watch()
            raise

    def _end_watch(self) -> None:
        self._it = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    async def _finish_it(self) -> None:
        """Finish the inner iterator if a read left it suspended (a body read in part).

        httpx's and httpcore's body iterators are async generators nested in one another:
        closing the outer one leaves the inner ones suspended, for the garbage collector to
        finish (trio warns of each). So the iterator is first read on in a scope cancelled
        from the start: a read meets the cancel at its first checkpoint, before any I/O, and
        every generator of the chain ends with it, as a cancel inside a read ends them. Reads
        that need no checkpoint (chunks already received) are dropped on the way.
        """
        it, self._it = self._it, None
        if it is None:
            return
        with anyio.CancelScope() as cs:
            cs.cancel()
            with contextlib.suppress(Exception):  # it ends, one way or another (its end too)
                while True:
                    await it.__anext__()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()

    async def aclose(self) -> None:
        try:
            if self._it is not None:
                await self._finish_it()
        finally:
            self._end_watch()
            inner, self._inner = self._inner, None
            if inner is not None:
                await inner.aclose()


# --------------------------------------------------------------------------------------------
# sync


class _Aborter:
    """The sockets one blocking request is using, and the switch that shuts them down.

    ``lock`` guards ``aborted``, ``finished`` and ``sockets``, which are shut down under it
    (``release()`` closes a socket of ``hold()``'s under it too). A socket is registered
    before it is used (before ``connect()`` for a new connection), so an abort interrupts
    whatever the request is blocked in. Once the response is closed (``finished``), aborting
    does nothing: the connection may already serve another request.
    """

    __slots__ = ("aborted", "extensions", "finished", "lock", "pool", "sockets")

    def __init__(
        self, pool: httpcore.ConnectionPool | None = None, extensions: object = None
    ) -> None:
        # Reentrant: a finalizer run by the garbage collector while this thread holds the lock
        # may end the context, and so call abort() here.
        self.lock = _thread.RLock()  # the C lock itself: threading.RLock is a factory call
        self.aborted = False
        self.finished = False
        self.sockets: set[socket.socket] = set()
        # The pool the request may queue in, and the extensions dict that identifies its
        # requests there (httpx hands the same dict to httpcore).
        self.pool = pool
        self.extensions = extensions

    def attach(self, sock: socket.socket) -> None:
        """Register *sock*; raise ``_Aborted`` if the request's context has already ended."""
        with self.lock:
            if not self.aborted:
                self.sockets.add(sock)
        if self.aborted:  # read after the add: an abort run inside it is seen too
            raise _Aborted("the request's context ended")

    def hold(self, sock: socket.socket) -> socket.socket | None:
        """Register a duplicate of *sock* (a descriptor of our own for its connection), until
        ``release``.

        For a step that hands *sock*'s descriptor over to a socket object of its own, the
        registered one then being detached and its shutdown a no-op: a TLS handshake, run
        inside ``SSLContext.wrap_socket``. A shutdown through the duplicate reaches the
        connection whichever object owns it, and never another file that reuses a number:
        the duplicate is ours, and closed under the lock. None if *sock* is closed already;
        raises ``_Aborted`` if the request's context has already ended.
        """
        try:
            held = sock.dup()  # (in *sock*'s blocking mode)
        except OSError:  # closed already
            return None
        try:
            self.attach(held)
        except _Aborted:
            held.close()
            raise
        return held

    def release(self, held: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(held)
            held.close()

    def abort(self) -> None:
        with self.lock:
            if self.finished or self.aborted:
                return
            self.aborted = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # already closed, or never connected
                    sock.shutdown(socket.SHUT_RDWR)
        if self.pool is not None:
            _dequeue(self.pool, self.extensions)

    def finish(self) -> None:
        with self.lock:
            self.finished = True
            self.sockets.clear()


class _AbortedConnection:
    """What a request waiting in httpcore's queue is handed when its context ends: a
    connection that fails at once, so the waiting thread wakes and the pool drops the request
    as it drops any that fails. It is in no pool's list of connections."""

    def handle_request(self, request: object) -> None:
        raise _Aborted("the request's context ended while it waited for a connection")


_ABORTED_CONNECTION = _AbortedConnection()


def _dequeue(pool: httpcore.ConnectionPool, extensions: object) -> None:
    """Wake the request of ours (by its *extensions*) that waits in *pool*'s queue, if any.

    httpcore's blocking pool waits for a free connection on an event with the pool timeout
    alone; a cancel would otherwise wait for a connection to free up, or forever. Takes the
    pool's lock (a short wait: httpcore holds it for bookkeeping only), and gives up rather than
    wait long for it. A request that has not reached the queue yet is not found: it learns of
    the end when it first uses a connection.
    """
    try:
        lock = pool._optional_thread_lock._lock
        requests = pool._requests
    except AttributeError:  # pragma: no cover - an httpcore whose pool is laid out otherwise
        return
    if not lock.acquire(timeout=1.0):  # pragma: no cover - the pool's lock is held for long
        return
    try:
        for r in requests:
            if r.request.extensions is extensions and r.connection is None:
                # a stand-in that only ever fails, not a full connection
                r.assign_to_connection(_ABORTED_CONNECTION)  # type: ignore[arg-type]  # httpcore's request slot takes a connection; this one refuses
    finally:
        lock.release()


_current: contextvars.ContextVar[_Aborter | None] = contextvars.ContextVar(
    "gocontext.http.aborter", default=None
)


class _AbortableStream(httpcore.NetworkStream):
    """A connection's stream that registers its socket with the aborter of the request using
    it, before each write or TLS start (once per request: ``_aborter`` is the last), and for
    a TLS handshake a duplicate of its descriptor as well.

    Not before a read: a request writes before it reads, and a read may be another
    request's (a response body piped into a request's body is read inside that request's
    transport call): registered with the request reading it, the socket would be shut down
    by that request's abort even once it serves a third request.
    """

    __slots__ = ("_aborter", "_inner", "_sock")

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._sock: socket.socket | None = inner.get_extra_info("socket")
        self._aborter: _Aborter | None = None

    def _enter(self) -> None:
        aborter = _current.get()
        if aborter is not None and aborter is not self._aborter and self._sock is not None:
            aborter.attach(self._sock)  # raises if the request's context has already ended
            self._aborter = aborter

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._enter()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        aborter = _current.get()
        held = None
        try:
            self._enter()
            if aborter is not None and self._sock is not None:
                # The handshake runs on a socket object that takes the descriptor over from
                # the registered one: an abort reaches it through a duplicate (see hold()).
                held = aborter.hold(self._sock)
        except _Aborted:
            self.close()
            raise
        try:
            return _AbortableStream(self._inner.start_tls(ssl_context, server_hostname, timeout))
        finally:
            if aborter is not None and held is not None:
                aborter.release(held)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _connect(
    aborter: _Aborter,
    host: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: Iterable[Any] | None,
) -> socket.socket:
    """``socket.create_connection`` as httpcore's SyncBackend uses it, abortable by *aborter*
    (see ``_connect``: one handshake per address, however long it takes)."""
    try:
        sock = _connect_mod.connect(
            host,
            port,
            timeout,
            attach=aborter.attach,
            aborted=lambda: aborter.aborted,
            source_address=None if local_address is None else (local_address, 0),
        )
    except _connect_mod.ConnectAborted as e:
        raise _Aborted(str(e)) from e.__cause__
    except TimeoutError as e:
        raise httpcore.ConnectTimeout("timed out") from e
    except OSError as e:
        raise httpcore.ConnectError(str(e)) from e
    try:
        for option in socket_options or ():  # (after the connect, as httpcore sets them)
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _registered(connected: httpcore.NetworkStream) -> _AbortableStream:
    """A new connection's stream, its socket registered with the aborter of the request that
    made it, if any; closed, and ``_Aborted`` raised, if that request's context has ended."""
    stream = _AbortableStream(connected)
    try:
        stream._enter()
    except _Aborted:
        stream.close()
        raise
    return stream


class _AbortableBackend(httpcore.NetworkBackend):
    """The pool's network backend, wrapped: every stream registers its socket with the
    request's aborter. New connections of httpcore's own ``SyncBackend`` are made here, so a
    connect is abortable too; another backend connects as it likes, and an abort that comes
    while it does takes effect when it returns."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        aborter = _current.get()
        if aborter is not None and type(self._inner) is _SyncBackend and _connect_mod.HAS_POLL:
            sock = _connect(aborter, host, port, timeout, local_address, socket_options)
            connected = _AbortableStream(_SyncStream(sock))
            connected._aborter = aborter  # the socket is registered already
            return connected
        return _registered(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _registered(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class Transport(httpx.BaseTransport):
    """An httpx transport (blocking) that makes each request honour its context.

    Wraps *inner* (default: ``httpx.HTTPTransport()``). A cancel from any thread aborts the
    request in flight, connecting included, and raises ``Canceled``; a passed deadline raises
    ``DeadlineExceeded``; the connection pool stays healthy. The time left and the
    ``PropagatedKey`` values go out as ``Grpc-Timeout`` and ``baggage`` headers, made afresh
    for each hop; the request object keeps the caller's own headers (but with an httpx whose
    headers are laid out otherwise than we know: then ours are set on it).

    Example:
        >>> import httpx, gocontext, gocontext.http
        >>> client = httpx.Client(transport=gocontext.http.Transport())
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> client.get("http://127.0.0.1:9/", extensions={"gocontext": ctx})
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """

    __module__ = "gocontext.http"

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        pool = getattr(self._inner, "_pool", None)
        self._pool = pool if isinstance(pool, httpcore.ConnectionPool) else None
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(
            backend, _AbortableBackend
        ):
            pool._network_backend = _AbortableBackend(backend)  # type: ignore[union-attr]  # has a backend

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        ctx = _request_context(request)
        headers = request.headers
        theirs = headers._list if _FAST_HEADERS else None  # (put back once sent: see _prepare)
        capped = _prepare(request, ctx)
        try:
            done = ctx.done()
            if done is _NEVER:  # it can never end: nothing to watch, nothing to translate
                return self._inner.handle_request(request)
            aborter = _Aborter(self._pool, request.extensions)
            handle = done.add_callback(aborter.abort)
            token = _current.set(aborter)
            try:
                response = self._inner.handle_request(request)
            except BaseException as e:
                aborter.finish()
                handle.cancel()
                _raise_as_context_error(e, ctx, capped)
                raise
            finally:
                _current.reset(token)
        finally:
            if theirs is not None:
                headers._list = theirs
        response.stream = _SyncBoundedStream(response.stream, ctx, capped, aborter, handle)
        return response

    def close(self) -> None:
        self._inner.close()


class _SyncBoundedStream(httpx.SyncByteStream):
    """A blocking response body whose every read is bounded by the request's context.

    Once closed, it lets go of what it held (see ``_AsyncBoundedStream``): httpx's response
    and its stream refer to each other, and would carry it all to the garbage collector.
    """

    __slots__ = ("_aborter", "_capped", "_ctx", "_handle", "_inner")

    def __init__(
        self, inner: Any, ctx: Context, capped: bool, aborter: _Aborter, handle: CallbackHandle
    ) -> None:
        self._inner: Any = inner
        self._ctx = ctx
        self._capped = capped
        self._aborter: _Aborter | None = aborter
        self._handle: CallbackHandle | None = handle

    def __iter__(self) -> Iterator[bytes]:
        if self._aborter is None:  # closed (httpx raises StreamClosed before asking)
            return
        ctx, capped = self._ctx, self._capped
        # The connection's socket is registered with the request's aborter already (it was
        # used to send the request): an abort interrupts a read of the body in whatever thread
        # reads it.
        try:
            for chunk in self._inner:
                err = ctx.err()  # the chunk may have been buffered before an abort
                if err is not None:
                    raise err  # noqa: TRY301 - passes the except below unchanged (not httpx's)
                yield chunk
            # The end may be the abort's own doing: a socket shut down reads as the peer's
            # close, which ends a body that the close delimits (no length, no chunks). Once
            # the context has ended, no end is a clean one.
            err = ctx.err()  # (an abort comes only from the context's end)
            if err is not None:
                raise err  # noqa: TRY301 - as above
        except BaseException as e:
            _raise_as_context_error(e, ctx, capped)
            raise

    def close(self) -> None:
        aborter, handle, inner = self._aborter, self._handle, self._inner
        if aborter is None:
            return
        self._aborter = self._handle = self._inner = None
        # Finish first: from here on a cancel must not touch the connection, which closing the
        # stream may hand back to the pool for another request.
        aborter.finish()
        if handle is not None:
            handle.cancel()
        inner.close()
