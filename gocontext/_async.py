"""Contexts in event loops: ``scope()`` and ``sleep()``, under asyncio and trio.

What each library offers (its cancel scopes, clock, effective deadline and thread-safe entry)
comes from its backend in ``_loops``; this module makes the contexts.

Deadlines enter a loop as time *remaining*: trio's clock is deliberately offset from
``time.monotonic()`` and asyncio's is the loop's own, so absolute times are never compared
across clocks.

A scope's cancellation is a trio cancel scope on trio (what anyio's wraps), and on asyncio a
``NativeCancelScope``: ``Task.cancel()`` and ``uncancel()``, as ``asyncio.timeout()`` uses them,
delivered by anyio's rules (anyio's shields inside hold it off; an anyio cancel scope where
Python 3.10 has no ``uncancel()``). Its registration on the context is removed before the cancel
scope is left, so a wake-up that was already on its way only reaches a cancel scope that has
been left, where ``cancel()`` does nothing.
"""

from __future__ import annotations

import asyncio
import math
import sys
from contextvars import Token
from typing import TYPE_CHECKING, Any, final

from . import _timer
from ._ambient import _current
from ._context import (
    _OURS,
    CancelCauseFunc,
    Context,
    RichContext,
    _DeadlineCauseContext,
    become_owner,
    check_context,
    with_cancel_cause,
    with_timeout,
)
from ._done import CallbackHandle
from ._errors import ContextError, describe
from ._loops import (
    ASYNCIO,
    HAS_CANCELLING,
    Backend,
    Mailbox,
    NativeCancelScope,
    backend,
    backend_here,
    broken_handle,
    check_handle,
    library,
    unwatch_quietly,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FrameworkCancelled", "scope", "sleep"]

_INF = math.inf


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
    check_context(ctx, "sleep", "ctx")
    seconds = _check_seconds(seconds)
    err = ctx.err()
    if err is not None:
        raise err
    if _timer.timer._manual and 0 < seconds < math.inf:
        # Under gocontext.testing.fake_clock() the sleep is a deadline on the fake clock.
        sub, cancel = with_timeout(ctx, seconds)
        try:
            await backend().wait(sub.done())
        finally:
            cancel()
    else:
        await backend().sleep(ctx.done(), seconds)
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

    ``async with gocontext.scope(ctx) as child:`` runs the body in a cancel scope that *ctx*
    cancels: trio's on trio; on asyncio, the task's own cancellation (``task.cancel()``, counted
    and taken back with ``uncancel()`` as ``asyncio.timeout()`` does) delivered by anyio's rules:
    at the next checkpoint, again at every later one until the block is left, never inside an
    anyio shield (on Python 3.10, an anyio cancel scope). If that cancellation interrupted the body,
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
        "_at",
        "_baseline",
        "_cancel",
        "_cs",
        "_ctx",
        "_handle",
        "_mailbox",
        "_own",
        "_task",
        "_token",
    )
    _baseline: int  # asyncio: the task's cancelling() at entry; -1 when not guarded
    _task: Any  # asyncio: the task running the block (read only when _baseline >= 0)
    _cancel: CancelCauseFunc
    _mailbox: Mailbox

    def __init__(self, ctx: Context) -> None:
        check_context(ctx, "scope", "ctx")
        self._ctx = ctx
        self._cs: Any = None  # the cancel scope: None until entered, then fixed
        self._own: CancelCauseFunc | None = None
        self._at: tuple[Backend, object] | None = None  # (backend, here()), if known

    @classmethod
    def _owning(
        cls, ctx: RichContext, cancel: CancelCauseFunc, at: tuple[Backend, object] | None = None
    ) -> scope:
        """A scope whose child is *ctx* itself, ended by *cancel*, when no enclosing deadline
        is earlier: for a caller that made *ctx* for this block alone (a server's request),
        which saves the child node and its registration on *ctx*. *at*: the running loop's
        backend and ``here()``, if the caller knows them (each look costs a system call on
        Python 3.10 and 3.11, where asyncio checks the process id)."""
        self = cls.__new__(cls)
        self._ctx = ctx
        self._cs = None
        self._own = cancel
        self._at = at
        return self

    async def __aenter__(self) -> RichContext:
        return self._enter()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return self._exit(et, e, tb)

    # Entering and leaving take no await: a caller of ours that runs a block by hand (the HTTP
    # middleware) calls these two, and saves the two coroutines of `async with`.

    def _enter(self) -> RichContext:
        if self._cs is not None:
            raise RuntimeError("gocontext.scope() is entered once: use a new scope(ctx)")
        ctx = self._ctx
        at = self._at
        if at is None:
            loops, here = backend_here()
        else:
            loops, here = at
        cs, outer = loops.scope_parts(here)
        self._cs = cs
        self._baseline = -1
        if HAS_CANCELLING and loops is ASYNCIO and type(cs) is not NativeCancelScope:
            task: Any = loops.current_task(here)  # a native task.cancel() folded into ours is
            if task is not None:  # never swallowed (NativeCancelScope sees to it itself)
                self._task = task
                self._baseline = task.cancelling()
        own = self._own
        owning = own is not None and outer == _INF  # ctx itself is the child
        if owning:
            child: RichContext = ctx  # type: ignore[assignment]  # _owning() takes a RichContext
            self._cancel = own  # type: ignore[assignment]  # (not None: owning)
        else:
            child, self._cancel = _child_of(ctx, outer, loops)
        self._mailbox = loops.mailbox(here)
        # Registered before the cancel scope is entered, so nothing can fail between entering
        # it and returning (a cancel scope left entered would corrupt the task's scope stack);
        # a cancel() that arrives before the entry takes effect at the entry.
        try:
            # ctx tells this scope of its end as its owner, if it can (cs.cancel() is
            # idempotent: the ender may call _fire too)
            ended = become_owner(ctx, self._fire) if owning else None
            if ended is not None:
                self._handle: CallbackHandle | None = None
                if ended:
                    cs.cancel()
            elif ctx.err() is None:
                self._handle = ctx.done().add_callback(self._fire)
                if type(ctx) not in _OURS:  # a user-written Done: check its handle now
                    check_handle(ctx.done(), self._handle)
            else:  # interrupt the body at its first checkpoint, with no round trip via the loop
                self._handle = None
                cs.cancel()
            cs.__enter__()
        except BaseException:
            handle = getattr(self, "_handle", None)
            if handle is not None:
                unwatch_quietly(handle)
            elif owning and type(ctx) is _DeadlineCauseContext:
                ctx._owner = None
            self._cancel(None)
            raise
        self._token: Token[RichContext] = _current.set(child)
        return child

    def _exit(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        handle, cancel = self._handle, self._cancel
        if handle is None:
            if self._own is not None and type(self._ctx) is _DeadlineCauseContext:
                self._ctx._owner = None  # from here on, ctx ending cannot reach this scope
        else:
            try:
                handle.cancel()  # from here on, ctx ending cannot reach this scope
            except Exception as exc:  # a user-written Done's handle: say whose, once the
                broken = broken_handle(self._ctx.done(), handle, exc)  # cancel scope is left
                self._handle = None
                try:
                    self._exit(et, e, tb)
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


def _child_of(ctx: Context, outer: float, loops: Backend) -> tuple[RichContext, CancelCauseFunc]:
    """A child of *ctx* with the enclosing deadline *outer* (on the clock of *loops*' running
    loop), and the function that cancels it with a cause."""
    if outer == _INF:
        return with_cancel_cause(ctx)
    if outer == -_INF:  # an enclosing cancel scope is already cancelled
        pair = with_cancel_cause(ctx)
        pair[1](FrameworkCancelled(f"task cancelled by {loops.name}"))
        return pair
    # The deadline below the node that takes a cause: cancelling that one ends both.
    base, cancel = with_cancel_cause(ctx)
    return with_timeout(base, outer - loops.time())[0], cancel


def _framework_cause(e: BaseException | None) -> BaseException | None:
    """A ``FrameworkCancelled`` if *e* is (or holds) a framework's cancellation, else None."""
    if isinstance(e, asyncio.CancelledError):
        return FrameworkCancelled("task cancelled by asyncio")
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(e, trio.Cancelled):
        return FrameworkCancelled("task cancelled by trio")
    if isinstance(e, BaseExceptionGroup) and e.subgroup(_is_cancellation) is not None:
        return FrameworkCancelled(f"task cancelled by {library()}")
    return None


def _only_context_errors(e: BaseException) -> bool:
    """True for an exception group whose every leaf is a ContextError."""
    return isinstance(e, BaseExceptionGroup) and e.split(ContextError)[1] is None


def _is_cancellation(e: BaseException) -> bool:
    trio = sys.modules.get("trio")
    return isinstance(e, asyncio.CancelledError) or (
        trio is not None and isinstance(e, trio.Cancelled)
    )


if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup
