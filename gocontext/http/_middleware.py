"""ASGI middleware: each request runs under a context with the caller's deadline and values,
ended by the deadline or by the client going away, whichever comes first."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import Any, Final, Union

import anyio

from .. import _loops, _timer
from .._async import scope
from .._context import Context, timeout_cancel_cause, with_cancel_cause
from .._errors import ContextError, DeadlineExceeded, describe
from .._hangups import Hangups
from .._propagation import values_context
from ._headers import HeaderError, grpc_timeout_of, parse_baggage, parse_timeout_ms

__all__ = [
    "ClientDisconnected",
    "ContextMiddleware",
    "client_left",
    "timeout_and_baggage",
    "timeout_and_values",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
MaxTimeout = Union[float, None, Callable[[Scope], Union[float, None]]]  # noqa: UP007 - 3.10 runtime


_DEFAULT_MAX_TIMEOUT: Final = 60.0  # seconds: a request with no deadline header gets this one
_LONGEST: Final = 365 * 86400.0  # an unbounded server still reads a longer ask as this
_WATCH_AFTER: Final = 0.01  # seconds a request runs before a watcher starts (most end sooner)
# A disconnect this close to the deadline is the deadline's doing: the header carries the time
# left when the caller sent it, so our deadline falls later than the caller's by the request's
# transit, and a caller that gives up at its deadline is seen leaving up to that much before ours.
_DEADLINE_SLACK: Final = 0.25
_MAX_UNREAD: Final = 4 << 20  # bytes of body a watcher holds for an app that does not read it
_ANSWER_WITHIN: Final = 5.0  # seconds a client has to take the middleware's 504 or end of body

# Header names, lowercase as ASGI servers give them (the spec only asks that they be).
_GRPC: Final = b"grpc-timeout"
_BAGGAGE: Final = b"baggage"
_MS_HEADERS: Final = {
    b"connect-timeout-ms": "Connect-Timeout-Ms",
    b"x-envoy-expected-rq-timeout-ms": "X-Envoy-Expected-Rq-Timeout-Ms",
}
_READ: Final = frozenset({_GRPC, _BAGGAGE, *_MS_HEADERS})
_LENGTHS: Final = frozenset(map(len, _READ))  # a name of another length is none of them

# Where a response stands: what the app sent so far, or that the middleware answered for it.
_IDLE, _STARTED, _COMPLETE, _TAKEN = range(4)


class ClientDisconnected(ConnectionError):
    """The cause recorded on a request's context when its client went away first.

    Example:
        >>> import gocontext, gocontext.http
        >>> ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        >>> cancel(gocontext.http.ClientDisconnected("the client disconnected"))
        >>> gocontext.cause(ctx)
        ClientDisconnected('the client disconnected')
    """

    __module__ = "gocontext.http"


def timeout_and_values(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[float | None, dict[str, str]]:
    """The smallest timeout the headers ask for (seconds, or None) and the baggage values.

    Example:
        >>> timeout_and_values([(b"grpc-timeout", b"250m"), (b"baggage", b"user=ada")])
        (0.25, {'user': 'ada'})
    """
    timeout, baggage = timeout_and_baggage(headers)
    return timeout, parse_baggage(baggage) if baggage else {}


def timeout_and_baggage(headers: Iterable[tuple[bytes, bytes]]) -> tuple[float | None, bytes]:
    """The smallest timeout the headers ask for (seconds, or None) and the ``baggage`` value,
    unparsed (every ``baggage`` header's, joined by commas; empty when none): a server reads
    the values of a value it has seen before from ``values_context``'s memo.

    Example:
        >>> timeout_and_baggage([(b"grpc-timeout", b"2S"), (b"baggage", b"a=1,b=2")])
        (2.0, b'a=1,b=2')
    """
    timeout: float | None = None
    baggage: list[bytes] = []
    for name, value in headers:
        if len(name) not in _LENGTHS:
            continue
        if name not in _READ:
            name = name.lower()
            if name not in _READ:
                continue
        if name == _GRPC:
            t = grpc_timeout_of(value)
        elif name == _BAGGAGE:
            baggage.append(value)
            continue
        else:
            t = parse_timeout_ms(_MS_HEADERS[name], value.decode("latin-1"))
        if timeout is None or t < timeout:
            timeout = t
    if not baggage:
        return timeout, b""
    return timeout, baggage[0] if len(baggage) == 1 else b",".join(baggage)


def _check_max_timeout(value: object, where: str, per_request: bool = False) -> float | None:
    """*value*, a ``max_timeout`` in seconds or None, as a float (or None); a ``TypeError`` or
    ``ValueError`` that names the call (*where*) and what came in for anything else.
    *per_request*: what a ``max_timeout`` function returned for a request.

    Example:
        >>> _check_max_timeout(30, "ContextMiddleware")
        30.0
    """
    if value is None:
        return None
    what = "what its max_timeout function returned" if per_request else "max_timeout"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = (
            "seconds or None" if per_request else "seconds, None or a function of the request"
        )
        raise TypeError(f"{where}() needs {expected} as {what}, got {describe(value)}")
    try:
        cap = float(value)
    except OverflowError:
        raise ValueError(
            f"{where}() needs {what} in seconds a float can hold, got {describe(value)}"
        ) from None
    if not cap > 0:  # (NaN too)
        raise ValueError(
            f"{where}() needs {what} to be a positive number of seconds, got {describe(value)}"
        )
    return cap


class ContextMiddleware:
    """Run each HTTP request of an ASGI app (Starlette, FastAPI, any) under its own context.

    The context carries the caller's deadline (``Grpc-Timeout``, ``Connect-Timeout-Ms`` or
    ``X-Envoy-Expected-Rq-Timeout-Ms``, the smallest) and its ``PropagatedKey`` values
    (``baggage``). Handlers read it with ``gocontext.current()`` or ``scope["gocontext"]``.

    *max_timeout* caps every deadline, and is the deadline of a request that sends none: 60
    seconds by default; ``None`` leaves requests with no header unbounded; a function of the
    ASGI scope chooses per request (a route that streams events can return ``None``).

    The context ends in one of two ways, told apart by its error, the same at every hop:
    ``DeadlineExceeded`` when the deadline passes (also when the client left because its own
    deadline passed), or ``Canceled`` with a ``ClientDisconnected`` cause when the client went
    away first. The client's leaving is seen even while the handler does not read the body: up
    to 4 MiB of it is held for the handler, and past that, under uvicorn on Linux, the
    connection's socket is watched for the client's end. The handler runs in
    ``gocontext.scope(ctx)``, so one that ignores its context is interrupted at its next
    checkpoint. At the deadline the client gets a 504 at once, even if the handler is blocked
    (in a thread, say) and runs on: its late response is discarded, as Go's
    ``http.TimeoutHandler`` does. A response already under way is ended there, cleanly: the
    client sees the body stop, the server logs nothing (but a body of declared
    ``Content-Length`` cannot end early: it is left for the server to cut, closing the
    connection). Routes that stream for long choose their own *max_timeout*. A deadline already
    passed on arrival (``Grpc-Timeout: 0n``) gets its 504 without running the handler; a
    malformed deadline header gets a 400 that says what was wrong.

    Example:
        >>> from starlette.applications import Starlette
        >>> import gocontext.http
        >>> app = gocontext.http.ContextMiddleware(Starlette(), max_timeout=30)
        >>> events = gocontext.http.ContextMiddleware(
        ...     Starlette(), max_timeout=lambda scope: None if scope["path"] == "/events" else 30
        ... )
    """

    __module__ = "gocontext.http"

    def __init__(self, app: ASGIApp, *, max_timeout: MaxTimeout = _DEFAULT_MAX_TIMEOUT) -> None:
        if not callable(app):
            raise TypeError(f"ContextMiddleware() needs an ASGI app, got {app!r}")
        if not callable(max_timeout):
            _check_max_timeout(max_timeout, "ContextMiddleware")
        self.app = app
        self.max_timeout = max_timeout
        self._watchers: _Watchers | None = None  # of the loop that ran the last request

    async def __call__(self, scope_: Scope, receive: Receive, send: Send) -> None:
        if scope_["type"] != "http":
            await self.app(scope_, receive, send)
            return
        try:
            timeout, baggage = timeout_and_baggage(scope_.get("headers") or ())
        except HeaderError as e:
            await _plain(send, 400, f"bad deadline header: {e}")
            return
        cap = self.max_timeout
        if cap is not None and not isinstance(cap, (int, float)):
            cap = _check_max_timeout(cap(scope_), "ContextMiddleware", per_request=True)
        if timeout is None or (cap is not None and timeout > cap):
            timeout = cap
        # (the context of a baggage value seen before is reused: see values_context)
        parent = values_context(baggage, lambda: parse_baggage(baggage))
        if timeout is None:
            ctx, cancel = with_cancel_cause(parent)
        elif timeout <= 0:  # nothing the handler could do would reach the client in time
            await _plain(send, 504, "deadline exceeded")
            return
        else:
            if timeout > _LONGEST:
                timeout = _LONGEST
            ctx, cancel = timeout_cancel_cause(parent, float(timeout))
        exchange = _Exchange(receive, send, ctx, cancel)
        watchers = self._watchers
        loops, here = _loops.backend_here()  # (here: the asyncio loop, or the trio run's token)
        if watchers is None or watchers.loop is not here:
            watchers = self._watchers = _Watchers(here, loops)
        watchers._new.append(exchange)
        if watchers._ticking is None:
            watchers.start_ticking()
        try:
            try:
                # `async with scope._owning(ctx, cancel) as child:`, by hand (two coroutines
                # fewer per request)
                block = scope._owning(ctx, cancel, (loops, here))
                scope_["gocontext"] = block._enter()
                try:
                    await self.app(scope_, exchange.receive, exchange.send)
                except BaseException as e:
                    if not block._exit(type(e), e, e.__traceback__):
                        raise
                else:
                    block._exit(None, None, None)
            except ContextError as e:
                err = ctx.err()
                if isinstance(err, DeadlineExceeded) or (err is None and _passed(ctx.deadline())):
                    # (An HTTP call of the handler can time out a moment before ctx's timer
                    # fires.)
                    await exchange.answer_deadline()
                elif err is None or type(e) is not type(err):  # not the request's own end
                    exchange.failure = e
            except Exception as e:
                # Raised by the app, outside any task group, so never wrapped in a group; once
                # the middleware has answered for the app, nobody is left to hear of it.
                if exchange.state != _TAKEN:
                    exchange.failure = e
        finally:
            exchange.over = True  # a watcher not started yet never will be
            # Forgotten now if it is the latest to begin (the common case: requests one after
            # another), so its objects are freed now rather than at the next tick.
            new = watchers._new
            if new and new[-1] is exchange:
                new.pop()
            if exchange.watcher_ended is not None:
                await exchange.stop_watching()
                exchange.release()
            cancel(None)  # (the scope ended ctx already, but for a failure around it)
        failure = exchange.failure or exchange.watcher_failure
        if failure is not None:
            raise failure


class _Watchers:
    """Starts a watcher for each request of one event loop (or trio run) still running
    ``_WATCH_AFTER`` seconds after it began; most are over sooner, and cost a list append.

    One ticker per loop, alive while requests begin or are pending and for one tick after (so
    back-to-back short requests share it instead of starting one each): every
    ``_WATCH_AFTER`` seconds it starts the watchers of the requests that were pending at its
    last tick and are not over, so each request that runs long gets its watcher 1 to 2 ticks
    after it began. On asyncio the ticker is a timer callback of the loop (a tick costs one
    callback, where a task would cost a task, its coroutine and a sleep); under trio, which
    has no timer callbacks, it is a system task. A request's watcher is a detached task (a
    bare asyncio task, or a trio system task), so a request that ends soon pays for no task
    and no timer of its own. Everything runs in the loop's thread.
    """

    __slots__ = ("_context", "_new", "_pending", "_ticking", "loop")

    def __init__(self, loop: object, loops: _loops.Backend) -> None:
        self.loop = loop  # the asyncio loop, or the trio run's token
        self._new: list[_Exchange] = []  # begun since the last tick
        self._pending: list[_Exchange] = []  # begun before the last tick
        self._ticking: object = None  # the ticking timer handle or task, while it ticks
        # asyncio: the context the ticks run in (one of its own: it serves every request)
        self._context = contextvars.Context() if loops is _loops.ASYNCIO else None

    def start_ticking(self) -> None:
        """Start the ticker (in a context of its own: it serves every request)."""
        if self._context is not None:
            self._ticking = self.loop.call_later(  # type: ignore[attr-defined]  # an asyncio loop
                _WATCH_AFTER, self._tick_now, context=self._context
            )
        else:
            self._ticking = self.spawn(self._tick, contextvars.Context())

    def spawn(
        self, fn: Callable[[], Coroutine[Any, Any, None]], context: contextvars.Context
    ) -> object:
        """Run *fn* in a detached task of the loop, in *context* (a copy, used once); return
        the task (hold it: asyncio's loop holds its tasks weakly)."""
        return _loops.backend_of(self.loop).spawn_detached(self.loop, fn, context)

    def _turn(self) -> bool:
        """One tick: start the watchers of the requests pending since the last tick and not
        over; whether to tick again (a request began or is pending). Raises RuntimeError if
        the loop is closing (no new tasks)."""
        due, self._pending, self._new = self._pending, self._new, []
        for exchange in due:
            if not exchange.over:
                exchange.start_watching(self)
        return bool(due or self._pending)

    def _tick_now(self) -> None:
        """A tick on asyncio (a timer callback of the loop). A loop that is closing ends the
        ticking; the next request to begin starts it again."""
        self._ticking = None
        try:
            again = self._turn()
        except RuntimeError:
            return
        if again:
            self.start_ticking()

    async def _tick(self) -> None:
        # Sleeps first: requests one after another are each over before the loop runs this
        # task, and a task that looked first would end at once, to be spawned again by the
        # next request. It ends after a tick in which no request began or was pending.
        try:
            while True:
                await anyio.sleep(_WATCH_AFTER)
                if not self._turn():
                    return
        except RuntimeError:  # the loop is closing: no new tasks (a trio system task must not
            return  # raise, or the whole run fails)
        finally:
            self._ticking = None


class _Exchange:
    """One request's traffic: the ``receive`` and ``send`` the app sees, and the watcher.

    Until the watcher starts, the app reads the connection itself. The watcher waits for a
    read the app has under way to finish, then reads every message itself into a queue the
    app's ``receive`` takes from, so the connection is always being read and a disconnect is
    seen even while the handler works without reading (up to ``_MAX_UNREAD`` bytes of body it
    has not taken; past that, the server stops reading the connection, and the watcher has
    its socket watched for the client's end: see ``_PeerWatch``). Beside the reading, the
    watcher answers for the app at the deadline. Everything runs on the request's event loop,
    in the request's task or the watcher's.
    """

    __slots__ = (
        "_app_read",
        "_app_reading",
        "_arrived",
        "_cancel",
        "_context",
        "_peer",
        "_queue",
        "_receive",
        "_send",
        "_start",
        "_unread",
        "_watcher",
        "_watcher_scope",
        "_watching",
        "ctx",
        "failure",
        "over",
        "state",
        "watcher_ended",
        "watcher_failure",
    )

    def __init__(
        self, receive: Receive, send: Send, ctx: Context, cancel: Callable[[BaseException], None]
    ) -> None:
        self._receive = receive
        self._send = send
        self.ctx = ctx
        self._cancel = cancel
        self.state = _IDLE  # _IDLE, _STARTED, _COMPLETE or _TAKEN; only moves forward
        self._start: Message | None = None  # the app's http.response.start, once sent
        self.failure: Exception | None = None  # what the app raised, for the server to see
        self._watching = False  # the watcher reads the connection from now on
        self._app_reading = False  # the app is inside the connection's receive
        self._app_read: anyio.Event | None = None  # set when that read returns
        self._queue: deque[Message] = deque()  # read by the watcher, not yet taken by the app
        self._unread = 0  # body bytes in _queue
        self._arrived: anyio.Event | None = None  # set when _queue changes or reading ends
        self.over = False  # the request is over: a watcher not started yet must not start
        # The request's context variables, for its watcher (what a layer around us set).
        self._context = contextvars.copy_context()
        self.watcher_ended: anyio.Event | None = None  # set when the watcher, once started, ends
        self.watcher_failure: Exception | None = None  # what the watcher raised
        self._watcher: object = None  # the watcher's task, held (asyncio holds tasks weakly)
        self._watcher_scope: anyio.CancelScope | None = None  # the watcher's, while it runs
        self._peer: _PeerWatch | None = None  # the socket's watch, once the held body is full

    # -- what the app sees -----------------------------------------------------------------

    async def receive(self) -> Message:
        queue = self._queue
        while not queue:
            if not self._watching:
                return await self._read_myself()
            arrived = self._arrived = anyio.Event()
            await arrived.wait()
        message = queue[0]
        if message["type"] != "http.disconnect":  # the last message stays for every later read
            queue.popleft()
            self._unread -= len(message.get("body", b""))
            self._wake()
        return message

    async def _read_myself(self) -> Message:
        self._app_reading = True
        try:
            message = await self._receive()
        finally:
            self._app_reading = False
            if self._app_read is not None:
                self._app_read.set()
        if message["type"] == "http.disconnect":
            self._disconnected()
        return message

    async def send(self, message: Message) -> None:
        state = self.state
        if state == _TAKEN:
            return  # the middleware answered for the app: its late response goes nowhere
        kind = message["type"]
        if kind == "http.response.start":
            ctx: Any = self.ctx  # (a node of ours: its _state is set once it has ended)
            if ctx._state is not None and isinstance(ctx.err(), DeadlineExceeded):
                # Begun once the deadline has passed, by a handler its end woke, which answers
                # before our cancel reaches it (a server's send need not yield): the 504 goes
                # out instead, as it would have at the deadline.
                await self.answer_deadline()
                return
            self.state = _STARTED
            self._start = message
        elif kind == "http.response.body":
            if not message.get("more_body", False):
                self.state = _COMPLETE
        elif kind == "http.response.pathsend":  # the ASGI extension that sends a file whole
            self.state = _COMPLETE
        await self._send(message)

    # -- what the middleware does ----------------------------------------------------------

    async def answer_deadline(self) -> None:
        """Answer for the app at the deadline: a 504, or the end of a response under way."""
        state = self.state
        if state in (_TAKEN, _COMPLETE):
            return
        self.state = _TAKEN
        if state == _STARTED and _declares_length(self._start):
            # Such a body cannot end early: leave it unfinished, and the server closes the
            # connection, so the client sees it cut instead of waiting for the rest.
            return
        # Shielded: the watcher may answer, and be stopped by the request's end meanwhile; the
        # answer must not be cut. Bounded: a client that takes nothing must not hold us.
        with anyio.move_on_after(_ANSWER_WITHIN, shield=True):
            try:
                if state == _IDLE:
                    await _plain(self._send, 504, "deadline exceeded")
                else:
                    await self._send({"type": "http.response.body", "body": b""})
            except Exception:  # a client already gone
                return

    def _disconnected(self) -> None:
        if self.state in (_COMPLETE, _TAKEN):
            return  # the response is out: the server says "disconnect" for every later read
        client_left(self.ctx, self._cancel)

    def _wake(self) -> None:
        # One event serves both waits, never at the same time: the app waits only on an empty
        # queue, the watcher only on one holding more than _MAX_UNREAD bytes.
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    # -- the watcher ------------------------------------------------------------------------

    def start_watching(self, watchers: _Watchers) -> None:
        """Start the watcher in a detached task of *watchers*' loop; ``stop_watching`` ends it."""
        self.watcher_ended = anyio.Event()  # before the task: an eager one runs at once
        try:
            self._watcher = watchers.spawn(self.watch, self._context)
        except BaseException:
            self.watcher_ended = None  # no watcher to wait for
            raise

    def release(self) -> None:
        """Let go of the body held for the app, once the request is over: nothing reads it
        now, and the exchange may outlive the request, in a cycle only the garbage collector
        breaks (anyio's, through a watcher's cancelled task)."""
        self._queue.clear()
        self._unread = 0

    async def stop_watching(self) -> None:
        """Stop the watcher, and wait for it to end (at once, or when a shielded answer it
        is sending is out or has given up)."""
        ended = self.watcher_ended
        assert ended is not None
        if self._watcher_scope is not None:
            self._watcher_scope.cancel()
        with anyio.CancelScope(shield=True):
            await ended.wait()

    async def watch(self) -> None:
        """Read the connection for the app, and answer for it at the deadline. What it raises
        is kept in ``watcher_failure`` for the request to raise (it runs detached)."""
        try:
            if self.over:
                return
            with anyio.CancelScope() as self._watcher_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_time)
                    await self._read()
        except Exception as e:
            self.watcher_failure = e
        finally:
            self._watcher_scope = None
            if self.watcher_ended is not None:
                self.watcher_ended.set()

    async def _keep_time(self) -> None:
        ctx = self.ctx
        await ctx.done()
        if isinstance(ctx.err(), DeadlineExceeded):
            await self.answer_deadline()

    async def _read(self) -> None:
        self._watching = True
        try:
            if self._app_reading:
                self._app_read = anyio.Event()
                await self._app_read.wait()
            while True:
                while self._unread > _MAX_UNREAD:
                    if self._peer is None:  # the server stops reading: watch the socket
                        self._peer = _PeerWatch.start(self)
                    arrived = self._arrived = anyio.Event()
                    await arrived.wait()
                message = await self._receive()
                self._queue.append(message)
                self._unread += len(message.get("body", b""))
                self._wake()
                if message["type"] == "http.disconnect":
                    self._disconnected()
                    return
        finally:
            self._watching = False  # stopped or failed: the app reads for itself again
            self._wake()
            peer, self._peer = self._peer, None  # (it refers back to this: no cycle is left)
            if peer is not None and peer.hangups is not None:
                peer.hangups.forget(peer)


class _PeerWatch:
    """The watch on a request's socket for its client's end, from when the body held for the
    app is full (the server has stopped reading the connection: only the socket can tell) to
    the watcher's end (``gocontext._hangups``). The socket is reached through the server's
    ``receive``, where the server (uvicorn) keeps its asyncio transport. Another server's
    socket, or one under trio, is not watched: a client that leaves past the held body goes
    unseen, and the request ends at its deadline."""

    __slots__ = ("__weakref__", "exchange", "fd", "hangups")

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self.hangups: Hangups | None = None
        self.fd = -1

    @classmethod
    def start(cls, exchange: _Exchange) -> _PeerWatch:
        watch = cls(exchange)
        transport = getattr(getattr(exchange._receive, "__self__", None), "transport", None)
        if transport is None:
            return watch
        # (not on asyncio, or not a transport as asyncio's are: unwatched)
        with contextlib.suppress(AttributeError, OSError, RuntimeError, TypeError, ValueError):
            Hangups.add(asyncio.get_running_loop(), transport, watch)
        return watch

    def peer_gone(self) -> None:
        self.exchange._disconnected()


def _declares_length(start: Message | None) -> bool:
    """Whether a response's start message declares a Content-Length."""
    return start is not None and any(
        name.lower() == b"content-length" for name, _ in start.get("headers", ())
    )


def client_left(ctx: Context, cancel: Callable[[BaseException], None]) -> None:
    """End a request's *ctx* with *cancel* for its client going away, unless the client left
    for the deadline (within ``_DEADLINE_SLACK`` of it), which ends *ctx* a moment later: the
    request records one cause for one event, whichever the server happened to see first."""
    if not _passed(ctx.deadline(), _DEADLINE_SLACK):
        cancel(ClientDisconnected("the client disconnected"))


def _passed(deadline: float | None, slack: float = 0.0) -> bool:
    """Whether *deadline* has passed, or will within *slack* seconds, on the deadline clock
    (``time.monotonic()``, or a test's fake clock)."""
    return deadline is not None and _timer.until(deadline) <= slack


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
