"""Contexts and event loops: awaiting a Done, ``scope()`` and ``sleep()``, under asyncio and trio.

One small section per event loop, picked by the running library: asyncio (any loop, uvloop
included, several loops in several threads) and trio, whose module is imported on first use. A
context ends in whatever thread cancels it; the loop learns of it through its thread-safe entry
(``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), one wake-up per batch of calls,
never by running loop code in the canceller's thread.

Deadlines enter a loop as time *remaining*: trio's clock is deliberately offset from
``time.monotonic()`` and asyncio's is the loop's own, so absolute times are never compared
across clocks.

A scope's cancellation is an anyio cancel scope on asyncio (so anyio's shields and task groups
see it) and a trio cancel scope on trio (what anyio's wraps). Its registration on the context is
removed before the cancel scope is left, so a wake-up that was already on its way only reaches a
cancel scope that has been left, where ``cancel()`` does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
from collections.abc import Callable
from contextvars import Token
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

from . import _timer
from ._ambient import _current
from ._context import (
    _OURS,
    CancelCauseFunc,
    Context,
    RichContext,
    _check_foreign,
    with_cancel_cause,
    with_timeout,
)
from ._done import CallbackHandle, Done
from ._errors import ContextError, describe

if TYPE_CHECKING:
    from types import TracebackType

_sniffio_thread: Any
try:  # trio marks the thread it runs in here (guest mode too); trio itself depends on it
    from sniffio import thread_local as _sniffio_thread
except ImportError:  # pragma: no cover - no sniffio means no trio either
    _sniffio_thread = None

__all__ = ["FrameworkCancelled", "scope", "sleep", "wait_done"]

_get_running_loop = asyncio._get_running_loop  # the quick check, as asyncio itself uses it
_current_task = asyncio.current_task
_INF = math.inf
_NO_LOOP = "gocontext: no asyncio event loop or trio run in this thread"
_log = logging.getLogger("gocontext")
_HAS_CANCELLING = sys.version_info >= (3, 11)  # Task.cancelling() and uncancel()


class FrameworkCancelled(Exception):
    """The cause recorded on a scope's child when its task was cancelled by its framework.

    Example:
        >>> import anyio, gocontext
        >>> async def main():
        ...     with anyio.CancelScope() as outer:
        ...         async with gocontext.scope(gocontext.background()) as child:
        ...             outer.cancel()
        ...             await anyio.sleep(1)
        ...     return gocontext.cause(child)
        >>> anyio.run(main)
        FrameworkCancelled('task cancelled by asyncio')
        >>> anyio.run(main, backend="trio")
        FrameworkCancelled('task cancelled by trio')
    """


def _backend() -> _AsyncioBackend | _TrioBackend:
    """The backend of the library running the current task (sniffio's order of looking)."""
    name: str | None = None if _sniffio_thread is None else _sniffio_thread.name
    if name is None:
        if _get_running_loop() is not None:
            return _ASYNCIO
        raise RuntimeError(_NO_LOOP)
    if name == "trio":
        return _TRIO
    if name == "asyncio":
        return _ASYNCIO
    raise RuntimeError(f"gocontext supports asyncio and trio, not {name}")


def _library() -> str:
    """``"asyncio"`` or ``"trio"``: the library running the current task."""
    return _backend().name


async def wait_done(done: Done) -> None:
    """Suspend the current task until *done* is set (what ``await done`` runs).

    The wake-up comes from whichever thread ends the context, through the loop's thread-safe
    entry. A framework cancellation of the waiting task raises as usual and unregisters the
    callback. Awaiting a *done* that is already set is still a checkpoint.

    Example:
        >>> import anyio, gocontext
        >>> async def main():
        ...     ctx, cancel = gocontext.with_cancel(gocontext.background())
        ...     cancel()
        ...     await gocontext._async.wait_done(ctx.done())  # what `await ctx.done()` runs
        ...     return ctx.err()
        >>> anyio.run(main)
        Canceled('context canceled')
    """
    await _backend().wait(done)


async def sleep(ctx: Context, seconds: float) -> None:
    """Sleep *seconds*; raise ``ctx.err()`` as soon as *ctx* is done.

    Works under asyncio and trio, from any thread's cancel. A *ctx* that is already done raises
    at once; a zero or negative *seconds* still yields to the loop; ``math.inf`` sleeps until
    *ctx* is done. NaN raises ValueError.

    Example:
        >>> import anyio, gocontext
        >>> async def main():
        ...     ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.01)
        ...     await gocontext.sleep(ctx, 10)
        >>> anyio.run(main)
        Traceback (most recent call last):
          ...
        gocontext.DeadlineExceeded: context deadline exceeded
    """
    if type(ctx) not in _OURS:
        _check_foreign(ctx, "sleep", "ctx")
    seconds = _check_seconds(seconds)
    err = ctx.err()
    if err is not None:
        raise err
    if _timer.timer._manual and 0 < seconds < math.inf:
        # Under gocontext.testing.fake_clock() the sleep is a deadline on the fake clock.
        sub, cancel = with_timeout(ctx, seconds)
        try:
            await _backend().wait(sub.done())
        finally:
            cancel()
    else:
        await _backend().sleep(ctx.done(), seconds)
    err = ctx.err()
    if err is not None:
        raise err


def _check_seconds(seconds: object) -> float:
    """*seconds* as a float: TypeError for what is no number, ValueError for NaN and for an int
    too large for a float, both naming sleep()."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"sleep() needs a number of seconds, got {describe(seconds)}")
    try:
        f = float(seconds)
    except OverflowError:
        raise ValueError(
            f"sleep() got a number of seconds too large for a float: {describe(seconds)}"
        ) from None
    except Exception as e:  # a number subclass whose __float__ is broken
        raise TypeError(f"sleep() needs a number of seconds, got {describe(seconds)}") from e
    if f != f:
        raise ValueError("sleep() got a NaN number of seconds")
    return f


@final
class scope:  # noqa: N801 - used like a function: `async with gocontext.scope(ctx) as child:`
    """Run the block under *ctx*: its body is cancelled the moment *ctx* is done, from any thread.

    ``async with gocontext.scope(ctx) as child:`` runs the body in a cancel scope (anyio's on
    asyncio, trio's on trio) that *ctx* cancels. If that cancellation interrupted the body,
    leaving the block raises ``ctx.err()`` (``Canceled`` or ``DeadlineExceeded``): never a bare
    framework cancellation, never a silent fall-through. A body that completes returns normally.
    The body's own exceptions and exception groups pass through unchanged, with one exception:
    once *ctx* is done, a group made only of ``ContextError``s (tasks of the body that saw *ctx*
    end and raised its error before the cancellation reached them) ends the block with
    ``ctx.err()`` too, the group kept as its ``__context__``.

    ``child`` is a ``with_cancel(ctx)`` for the threads, HTTP calls and Ray tasks the body
    starts, and the ambient context (``gocontext.current()``) inside the block. Its deadline is
    the earlier of *ctx*'s and the enclosing anyio or trio effective deadline (an outer
    ``fail_after``), translated to ``time.monotonic()``; an ``asyncio.timeout()`` keeps its
    deadline to itself, so ``child`` learns of one only when it fires. When the task is
    cancelled by its framework (a failing task group, ``task.cancel()``, an outer cancel scope
    or ``asyncio.timeout``), ``child`` is cancelled with a ``FrameworkCancelled`` cause and the
    framework's cancellation propagates untouched (an asyncio ``CancelledError`` that can be
    uncancelled, trio's ``Cancelled``). ``child`` is cancelled on exit in every case. (On
    Python 3.10, which has no ``Task.cancelling()``, a ``task.cancel()`` landing in the same loop
    iteration as *ctx*'s cancellation can be taken for ours, as with anyio's own scopes.)

    Shields are respected: a shielded region inside the body is not interrupted by *ctx*, and
    the body learns of it at its first checkpoint after the shield. A scope object is entered
    once; the check that *ctx* is a Context happens here, not at ``async with``.

    Example:
        >>> import anyio, gocontext
        >>> async def main():
        ...     ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.01)
        ...     try:
        ...         async with gocontext.scope(ctx) as child:
        ...             await anyio.sleep(10)
        ...     except gocontext.DeadlineExceeded as e:
        ...         return str(e), str(child.err())
        >>> anyio.run(main)
        ('context deadline exceeded', 'context deadline exceeded')
    """

    # Fields: set by __aenter__ in the task that runs the block, read by __aexit__ in the same
    # task. _cs and _mailbox are also read by _fire in the thread that ends ctx, only while the
    # registration held in _handle is live (it is removed first thing in __aexit__). _cancel
    # ends the child, with a cause.
    __slots__ = (
        "_baseline",
        "_cancel",
        "_cs",
        "_ctx",
        "_handle",
        "_mailbox",
        "_task",
        "_token",
    )
    __module__ = "gocontext"
    _baseline: int  # asyncio: the task's cancelling() at entry; -1 when not guarded
    _task: Any  # asyncio: the task running the block (read only when _baseline >= 0)
    _cancel: CancelCauseFunc
    _mailbox: _Mailbox

    def __init__(self, ctx: Context) -> None:
        if type(ctx) not in _OURS:
            _check_foreign(ctx, "scope", "ctx")
        self._ctx = ctx
        self._cs: Any = None  # the cancel scope: None until entered, then fixed

    async def __aenter__(self) -> RichContext:
        if self._cs is not None:
            raise RuntimeError("gocontext.scope() is entered once: use a new scope(ctx)")
        ctx = self._ctx
        name = None if _sniffio_thread is None else _sniffio_thread.name
        backend = _TRIO if name == "trio" else _ASYNCIO if name == "asyncio" else _backend()
        child = backend.prepare(self, ctx)  # sets _baseline, _task, _cancel, _cs, _mailbox
        cs: Any = self._cs
        # Registered before the cancel scope is entered, so nothing can fail between entering
        # it and returning (a cancel scope left entered would corrupt the task's scope stack);
        # a cancel() that arrives before the entry takes effect at the entry.
        try:
            if ctx.err() is None:
                self._handle: CallbackHandle | None = ctx.done().add_callback(self._fire)
                if type(ctx) not in _OURS:  # a user-written Done: check its handle now
                    _check_handle(ctx.done(), self._handle)
            else:  # interrupt the body at its first checkpoint, with no round trip via the loop
                self._handle = None
                cs.cancel()
            cs.__enter__()
        except BaseException:
            handle = getattr(self, "_handle", None)
            if handle is not None:
                _unwatch_quietly(handle)
            self._cancel(None)
            raise
        self._token: Token[RichContext] = _current.set(child)
        return child

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        handle, cancel = self._handle, self._cancel
        if handle is not None:
            try:
                handle.cancel()  # from here on, ctx ending cannot reach this scope
            except Exception as exc:  # a user-written Done's handle: say whose, once the
                broken = _broken_handle(self._ctx.done(), handle, exc)  # cancel scope is left
                self._handle = None
                try:
                    await self.__aexit__(et, e, tb)
                finally:
                    raise broken from exc  # what leaving raised, if anything, is its __context__
        try:
            # True when the cancel scope swallowed e, our cancellation. trio's also answers True
            # for a body that completed (nothing left to raise): that is no interruption.
            swallowed = self._cs.__exit__(et, e, tb) and e is not None
        except BaseException as raised:  # what is left of a group once ours is taken out
            cancel(_framework_cause(raised))
            err = self._ctx.err()
            if err is not None and _only_context_errors(raised):
                raise err  # noqa: B904 - the group stays reachable as __context__
            raise
        finally:
            _current.reset(self._token)
        if swallowed:
            # Our cancellation interrupted the body.
            if self._baseline >= 0 and self._task.cancelling() > self._baseline:
                assert e is not None  # a native cancel folded into ours: never swallowed
                cancel(_framework_cause(e))
                raise e
            err = self._ctx.err()
            cancel(None)
            if err is None:  # pragma: no cover - the cancel scope is cancelled once ctx is done
                return True
            raise err
        if e is None:
            cancel(None)
            return False
        cancel(_framework_cause(e))
        err = self._ctx.err()
        if err is not None and _only_context_errors(e):
            # Tasks of the body saw ctx end before our cancellation reached them, and raised
            # its error themselves: the block ends with ctx's error all the same.
            raise err
        return False

    def _fire(self) -> None:
        # Runs once, in the thread that ends ctx: hand the cancel to the scope's own loop.
        self._mailbox.put(self._cs.cancel)


def _check_handle(done: Done, handle: object) -> None:
    """Raise the TypeError for a *handle* from ``done.add_callback()`` that has no cancel()."""
    try:
        ok = callable(getattr(handle, "cancel", None))
    except Exception:
        ok = False
    if not ok:  # the caller unregisters what it can
        raise _broken_handle(done, handle, AttributeError("cancel"))


def _unwatch_quietly(handle: object) -> None:
    """Unregister through *handle* while another error is on its way out: it stays the one."""
    try:
        handle.cancel()  # type: ignore[attr-defined]  # any object: a user-written Done's
    except Exception:
        _log.debug("gocontext: a callback handle failed to cancel", exc_info=True)


def _child_of(
    ctx: Context, outer: float, loop_time: Callable[[], float], library: str
) -> tuple[RichContext, CancelCauseFunc]:
    """A child of *ctx* with the enclosing deadline *outer* (on the loop's clock), and the
    function that cancels it with a cause."""
    if outer == _INF:
        return with_cancel_cause(ctx)
    if outer == -_INF:  # an enclosing cancel scope is already cancelled
        pair = with_cancel_cause(ctx)
        pair[1](FrameworkCancelled(f"task cancelled by {library}"))
        return pair
    # The deadline below the node that takes a cause: cancelling that one ends both.
    base, cancel = with_cancel_cause(ctx)
    return with_timeout(base, outer - loop_time())[0], cancel


def _framework_cause(e: BaseException | None) -> BaseException | None:
    """A ``FrameworkCancelled`` if *e* is (or holds) a framework's cancellation, else None."""
    if isinstance(e, asyncio.CancelledError):
        return FrameworkCancelled("task cancelled by asyncio")
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(e, trio.Cancelled):
        return FrameworkCancelled("task cancelled by trio")
    if isinstance(e, BaseExceptionGroup) and e.subgroup(_is_cancellation) is not None:
        return FrameworkCancelled(f"task cancelled by {_library()}")
    return None


def _only_context_errors(e: BaseException) -> bool:
    """True for an exception group whose every leaf is a ContextError."""
    return isinstance(e, BaseExceptionGroup) and e.split(ContextError)[1] is None


def _is_cancellation(e: BaseException) -> bool:
    trio = sys.modules.get("trio")
    return isinstance(e, asyncio.CancelledError) or (
        trio is not None and isinstance(e, trio.Cancelled)
    )


# --------------------------------------------------------------------------------------------
# Hand-offs to a loop from other threads


@final
class _Mailbox:
    """Calls handed to one event loop from any thread, run there in batches.

    One wake-up of the loop per batch, not one per call: ending a context that 10,000 scopes
    watch makes 10,000 calls, and a wake-up is a system call plus a GIL hand-off each.
    """

    __slots__ = ("_key", "_lock", "_pending", "_post")

    def __init__(self, key: object, post: Callable[[Callable[[], object]], object]) -> None:
        self._key = key  # the loop or trio token it serves
        self._post = post  # the loop's thread-safe entry
        self._lock = threading.Lock()
        # Guarded by _lock: calls not run yet. Non-empty exactly while a _drain is posted (or
        # about to be, by the put() that made it non-empty); _drain takes it whole.
        self._pending: list[Callable[[], object]] = []

    def put(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` soon in the loop; callable from any thread, never blocks for long."""
        with self._lock:
            pending = self._pending
            pending.append(fn)
            if len(pending) > 1:  # a drain is on its way and will take this one too
                return
        try:
            self._post(self._drain)
        except RuntimeError:  # a closed loop or a finished trio run: nobody is left to run it
            with self._lock:
                self._pending = []

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for fn in batch:
            try:
                fn()
            except Exception:  # pragma: no cover - our calls do not raise; one must not stop all
                _log.exception("gocontext: a call handed to the event loop failed")


_mailboxes = threading.local()  # .last: the mailbox of the loop this thread ran last


def _mailbox(key: object, post: Callable[[Callable[[], object]], object]) -> _Mailbox:
    """The mailbox of the loop (or trio run) identified by *key*, running in this thread."""
    box: _Mailbox | None = getattr(_mailboxes, "last", None)
    if box is None or box._key is not key:
        box = _mailboxes.last = _Mailbox(key, post)
    return box


# --------------------------------------------------------------------------------------------
# asyncio


@final
class _AsyncioBackend:
    """What the fronts need of asyncio (any loop, uvloop included): one shared instance."""

    __slots__ = ("_parts",)
    name = "asyncio"

    def __init__(self) -> None:
        # anyio's asyncio cancel scope class and its effective deadline, taken on first use:
        # anyio's detection of the library is skipped after that.
        self._parts: tuple[Callable[[], Any], Callable[[], float]] | None = None

    async def wait(self, done: Done) -> None:
        if done.is_set():
            await asyncio.sleep(0)
        else:
            await _asyncio_wait(done, None)

    async def sleep(self, done: Done, seconds: float) -> None:
        await _asyncio_wait(done, seconds)

    def prepare(self, scope: scope, ctx: Context) -> RichContext:
        """Make *scope*'s child and cancel scope in the running loop; return the child."""
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(_NO_LOOP)
        cancel_scope, effective_deadline = self._parts or self._load()
        if _HAS_CANCELLING:  # a native task.cancel() folded into ours is never swallowed
            task: Any = _current_task(loop)
            scope._task = task
            scope._baseline = -1 if task is None else task.cancelling()
        else:  # pragma: no cover - 3.10 has no Task.cancelling() to guard with
            scope._baseline = -1
        child, scope._cancel = _child_of(ctx, effective_deadline(), loop.time, "asyncio")
        scope._cs = cancel_scope()
        scope._mailbox = _mailbox(loop, loop.call_soon_threadsafe)
        return child

    def cancel_scope_class(self) -> Callable[[], Any]:
        """anyio's asyncio cancel scope class, for integrations that make bare scopes."""
        return (self._parts or self._load())[0]

    def _load(self) -> tuple[Callable[[], Any], Callable[[], float]]:
        try:  # public in recent anyio releases
            from anyio.lowlevel import get_async_backend  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - anyio releases that keep it private
            from anyio._core._eventloop import get_async_backend
        backend = get_async_backend("asyncio")
        self._parts = type(backend.create_cancel_scope()), backend.current_effective_deadline
        return self._parts


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _asyncio_wait(done: Done, timeout: float | None) -> None:
    """Wait until *done* is set, or *timeout* seconds have passed (None: no limit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    put = _mailbox(loop, loop.call_soon_threadsafe).put

    def wake() -> None:
        put(partial(_set_result, fut))

    handle = done.add_callback(wake)
    timer = (
        None if timeout is None or timeout == _INF else loop.call_later(timeout, _set_result, fut)
    )
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        try:
            handle.cancel()
        except Exception as exc:  # a user-written Done's handle: say whose
            raise _broken_handle(done, handle, exc) from exc


# --------------------------------------------------------------------------------------------
# trio

_trio_module: Any = None  # the trio module, once a trio run has used this file


def _trio() -> Any:
    global _trio_module
    if _trio_module is None:
        import trio

        _trio_module = trio
    return _trio_module


@final
class _TrioBackend:
    """What the fronts need of trio (guest mode too): one shared instance."""

    __slots__ = ()
    name = "trio"

    async def wait(self, done: Done) -> None:
        trio = _trio()
        if done.is_set():
            await trio.lowlevel.checkpoint()
        else:
            await _trio_wait(trio, done)

    async def sleep(self, done: Done, seconds: float) -> None:
        trio = _trio()
        with trio.move_on_after(max(seconds, 0.0)):
            await _trio_wait(trio, done)

    def prepare(self, scope: scope, ctx: Context) -> RichContext:
        """Make *scope*'s child and cancel scope in the running trio run; return the child."""
        trio = _trio()
        scope._baseline = -1
        child, scope._cancel = _child_of(
            ctx, trio.current_effective_deadline(), trio.current_time, "trio"
        )
        scope._cs = trio.CancelScope()
        token = trio.lowlevel.current_trio_token()
        scope._mailbox = _mailbox(token, token.run_sync_soon)
        return child


async def _trio_wait(trio: Any, done: Done) -> None:
    """Wait until *done* is set; a trio cancellation unregisters the callback."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    put = _mailbox(token, token.run_sync_soon).put
    waiting = True  # read and written in the trio thread only (reschedule and abort)

    def reschedule() -> None:
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task)

    def wake() -> None:
        put(reschedule)

    handle = done.add_callback(wake)

    def abort(_: object) -> Any:
        # Runs inside trio's scheduler, where an exception ends the whole run: nothing of the
        # user's runs here. A wake-up after this finds `waiting` False and does nothing.
        nonlocal waiting
        waiting = False
        return trio.lowlevel.Abort.SUCCEEDED

    try:
        await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        try:
            handle.cancel()
        except Exception as exc:  # a user-written Done's handle: say whose
            raise _broken_handle(done, handle, exc) from exc


def _broken_handle(done: object, handle: object, exc: Exception) -> Exception:
    """The error for *handle*, from ``done.add_callback()``, whose ``cancel()`` raised *exc*."""
    where = f"{type(done).__qualname__}.add_callback()"
    try:
        cancel = getattr(handle, "cancel", None)
    except Exception:
        cancel = None
    if not callable(cancel):
        return TypeError(
            f"gocontext: {where} must return a handle with a cancel() method, "
            f"got a {type(handle).__qualname__}"
        )
    return RuntimeError(f"gocontext: cancel() of the handle {where} returned raised {exc!r}")


_ASYNCIO: Final = _AsyncioBackend()
_TRIO: Final = _TrioBackend()

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup
