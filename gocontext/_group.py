"""Go's errgroup: ``Group`` for threads and ``TaskGroup`` for asyncio and trio tasks (and threads).

Both give every function the group's context, ``g.ctx``, a ``with_cancel_cause`` child of the
parent. The first function to raise cancels ``g.ctx`` with its exception as the cause, so the
siblings (and everything they handed ``g.ctx`` to) stop; leaving the block waits for every
function and raises that first exception itself, never a group of exceptions. Functions that all
return raise nothing, even if the parent ended meanwhile (Go's ``Wait`` returns nil).
"""

from __future__ import annotations

import collections
import contextvars
import inspect
import itertools
import logging
import math
import operator
import os
import signal
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import anyio
from typing_extensions import TypeVarTuple, Unpack

from . import _wakeup
from ._async import _framework_cause
from ._context import (
    _BACKGROUND,
    Context,
    RichContext,
    cause,
    check_context,
    with_cancel,
    with_cancel_cause,
)
from ._errors import ContextError, async_callable, describe, refuse_coroutine
from ._loops import wait_done
from ._signal import SignalReceived

_log = logging.getLogger("gocontext")

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["Group", "TaskGroup"]

Ts = TypeVarTuple("Ts")
_names = itertools.count(1)
_SIGNAL_CHECK = 0.1  # seconds between checks for a Ctrl-C while the main thread waits


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _check_limit(limit: object, fname: str) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"{fname}() needs limit=None or a positive int, got {_shown(limit)}")
    value = operator.index(limit)  # by its value: a plain int (an int subclass's hooks not called)
    if value < 1:
        raise ValueError(f"{fname}() needs limit=None or a positive int, got {_shown(value)}")
    return value


def _shown(x: object) -> str:
    """``repr(x)``, or ``describe(x)`` for a huge int or where ``repr`` raises."""
    if type(x) is int and x.bit_length() > 64:
        return describe(x)
    try:
        return repr(x)
    except Exception:
        return describe(x)


# --------------------------------------------------------------------------------------------
# Threads


@final
class Group:
    """Run functions in worker threads under one context; the first failure stops the rest.

    ``with gocontext.Group(parent) as g:`` then ``g.go(fn, *args)`` runs ``fn(g.ctx, *args)`` in
    a new worker thread, with the context variables of the thread that called ``go()`` (so
    ``gocontext.current()`` there is the caller's). ``g.ctx`` is a child of *parent*: it ends when
    *parent* does, when a function raises (the exception is its cause), when the block's body
    raises (likewise), and on exit.

    Leaving the block waits for every function, then raises the first exception a function
    raised (the object itself, not a group); ``g.errors`` lists every exception raised, in the
    order raised. A ``KeyboardInterrupt`` or ``SystemExit`` from a function counts as a failure
    and is re-raised on exit. If the body raises, ``g.ctx`` is cancelled with that exception as
    cause, the functions are waited for, and the body's exception propagates; but if it is
    ``g.ctx``'s own error after a function's failure ended ``g.ctx`` (the body's
    ``g.ctx.check()``, say), that failure is raised in its place, with the body's error as its
    ``__context__``.

    With *limit*, at most *limit* functions run at once: ``go()`` blocks until a slot is free,
    and ``try_go()`` returns False instead. If ``g.ctx`` is done when ``go()`` finds no free
    slot, or ends while it waits for one, ``go()`` raises ``g.ctx.err()`` without starting the
    function, so a loop that feeds the group stops feeding it; leaving the block then raises
    the first failure, if a function failed, in place of that error.

    A Ctrl-C (``KeyboardInterrupt``) while the block waits on exit cancels ``g.ctx`` with it as
    cause, waits for the functions and re-raises it; a second Ctrl-C stops the waiting at once
    (the worker threads are daemon threads, so a stuck one cannot keep the process alive). If
    the body had raised, ``g.ctx``'s cause stays the body's exception, and the Ctrl-C is raised
    in its place with the body's exception as its ``__context__``, as Python chains an
    exception raised while another is handled (a second Ctrl-C has the first as its own).
    A ``KeyboardInterrupt`` or ``SystemExit`` out of ``g.ctx``'s done callbacks (a Ctrl-C
    landing there) while a failing function cancels it, in that function's thread, is raised
    by the block the same way, once every function has returned; the failure stays in
    ``errors``.
    Thread-safe: ``go()`` may be called from the functions themselves. A group is entered once.

    Example:
        >>> import gocontext
        >>> def fetch(ctx, n):
        ...     if n == 3:
        ...         raise LookupError(f"shard {n} is missing")
        ...     ctx.done().wait(5)  # stands for work that stops when ctx ends
        ...     ctx.check()
        >>> try:
        ...     with gocontext.Group(gocontext.background()) as g:
        ...         for n in range(4):
        ...             g.go(fetch, n)
        ... except LookupError as e:
        ...     print(e, "| cause:", gocontext.cause(g.ctx) is e)
        shard 3 is missing | cause: True
        >>> sorted(type(e).__name__ for e in g.errors)
        ['Canceled', 'Canceled', 'Canceled', 'LookupError']
    """

    # Guarded by _lock (through _cond): _state ("new", "open", "closing" once the exit waits:
    # then only the functions may call go(), "closed" once all have returned), _running
    # (functions started and not yet returned), _errors, _first (None until the first failure,
    # then fixed), _threads (worker threads not yet joined; an insertion-ordered dict used as a
    # set), _refusal (the last error go() raised instead of starting a function), _interrupt
    # (the first exception out of a failing function's cancel of g.ctx). _idle ends
    # once _running is 0 while closing. _limit, _ctx and _cancel are fixed at construction.
    __slots__ = (
        "__weakref__",
        "_before",
        "_cancel",
        "_cond",
        "_ctx",
        "_errors",
        "_first",
        "_idle",
        "_interrupt",
        "_limit",
        "_lock",
        "_mark_idle",
        "_refusal",
        "_running",
        "_state",
        "_threads",
        "_wake",
    )

    def __init__(self, parent: Context, *, limit: int | None = None) -> None:
        check_context(parent, "Group")
        self._limit = _check_limit(limit, "Group")
        self._ctx, self._cancel = with_cancel_cause(parent)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = "new"
        self._running = 0
        self._errors: list[BaseException] = []
        self._first: BaseException | None = None
        self._threads: dict[threading.Thread, None] = {}
        self._refusal: BaseException | None = None
        self._interrupt: BaseException | None = None
        self._wake: Any = None  # the done callback that wakes go() waiting for a slot
        self._idle, self._mark_idle = with_cancel(_BACKGROUND)  # ended once all have returned
        self._before: BaseException | None = None  # what was being handled at entry

    @property
    def ctx(self) -> RichContext:
        """The group's context, passed to every function as its first argument.

        Example:
            >>> import gocontext
            >>> with gocontext.Group(gocontext.background()) as g:
            ...     print(g.ctx.err())
            None
            >>> g.ctx.err()  # cancelled on exit
            Canceled('context canceled')
        """
        return self._ctx

    @property
    def errors(self) -> list[BaseException]:
        """Every exception the functions raised so far, in the order raised (a copy).

        Example:
            >>> import gocontext
            >>> with gocontext.Group(gocontext.background()) as g:
            ...     g.go(lambda ctx: None)
            >>> g.errors
            []
        """
        with self._lock:
            return list(self._errors)

    def __enter__(self) -> Self:
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a gocontext.Group is entered once: make a new Group")
            self._state = "open"
        _open_groups.add(self)  # (until closed: a forked child forgets the parent's functions)
        self._before = sys.exc_info()[1]  # (a Ctrl-C chained to it is counted from there)
        if self._limit is not None:
            self._wake = self._ctx.done().add_callback(self._notify)
        return self

    def go(self, fn: Callable[[RichContext, Unpack[Ts]], object], /, *args: Unpack[Ts]) -> None:
        """Run ``fn(g.ctx, *args)`` in a new worker thread; with a limit, wait for a free slot.

        Raises ``g.ctx.err()`` instead of starting *fn* if ``g.ctx`` ends while waiting for a
        slot, and RuntimeError outside the ``with`` block, or when the block ended while it
        waited (a ``go()`` from a thread that is none of the group's functions).

        Example:
            >>> import gocontext
            >>> squares = {}
            >>> with gocontext.Group(gocontext.background(), limit=2) as g:
            ...     for n in range(5):
            ...         g.go(lambda ctx, n: squares.update({n: n * n}), n)
            >>> sorted(squares.values())
            [0, 1, 4, 9, 16]
        """
        self._start(fn, args, block=True)

    def try_go(self, fn: Callable[[RichContext, Unpack[Ts]], object], /, *args: Unpack[Ts]) -> bool:
        """Start ``fn(g.ctx, *args)`` like ``go()`` if a slot is free and return True; else
        return False at once without starting it.

        Example:
            >>> import gocontext, threading
            >>> release = threading.Event()
            >>> with gocontext.Group(gocontext.background(), limit=1) as g:
            ...     g.try_go(lambda ctx: release.wait(5)), g.try_go(lambda ctx: None)
            ...     release.set()
            (True, False)
        """
        return self._start(fn, args, block=False)

    def _start(self, fn: Callable[..., object], args: tuple[Any, ...], block: bool) -> bool:
        name = "go" if block else "try_go"
        if not callable(fn):
            raise TypeError(f"Group.{name}() needs a callable, got {fn!r}")
        if async_callable(fn):
            raise TypeError(
                f"Group.{name}() runs functions in threads, got async function {fn!r}: "
                "use gocontext.TaskGroup"
            )
        context = contextvars.copy_context()
        with self._cond:
            state = self._state
            if state != "open" and (state != "closing" or self._running == 0):
                raise RuntimeError(f"Group.{name}() called outside the group's with block")
            limit = self._limit
            if limit is not None and self._running >= limit:
                if not block:
                    return False
                # Once g.ctx is done, a go() that had to wait starts nothing: a function that
                # fails ends g.ctx before it frees its slot, so this never races with it.
                while True:
                    state = self._state
                    if state != "open" and (state != "closing" or self._running == 0):
                        # The block is over (a go() from a thread outside the group, which
                        # waited while the last function returned): what it accepted is done.
                        raise RuntimeError(
                            f"Group.{name}() waited for a slot until the group's with block "
                            f"ended: {fn!r} was not started"
                        )
                    err = self._ctx.err()
                    if err is not None:
                        self._refusal = err
                        raise err
                    if self._running < limit:
                        break
                    self._cond.wait(_SIGNAL_CHECK if _in_main_thread() else None)
            self._running += 1
            if len(self._threads) > 64 and len(self._threads) > 2 * self._running:
                # Forget threads that have ended (not ones another go() is still starting).
                self._threads = {t: None for t in self._threads if t.ident is None or t.is_alive()}
            ticket = [False]  # True once the thread or a failed start() has claimed it
            t = threading.Thread(
                target=self._run,
                args=(ticket, context, fn, args),
                name=f"gocontext.Group-{next(_names)}",
                daemon=True,
            )
            self._threads[t] = None
        try:
            t.start()
        except BaseException:
            # A Ctrl-C can land in start() after the thread exists (start() waits for it to
            # run): whoever claims the ticket first decides whether fn runs, so the count of
            # running functions stays exact either way.
            with self._cond:
                if not ticket[0]:
                    ticket[0] = True
                    self._threads.pop(t, None)
                    self._running -= 1
                    self._cond.notify_all()
            raise
        return True

    def _run(
        self,
        ticket: list[bool],
        context: contextvars.Context,
        fn: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        with self._lock:
            if ticket[0]:
                return  # go() raised while starting us: fn is not to run
            ticket[0] = True
        try:
            result = context.run(fn, self._ctx, *args)
            refuse_coroutine(result, fn, "Group.go()", "use gocontext.TaskGroup")
        except BaseException as e:  # KeyboardInterrupt and SystemExit too: raised on exit
            with self._lock:
                self._errors.append(e)
                first = self._first is None
                if first:
                    self._first = e
            if first:
                try:
                    self._cancel(e)  # outside our lock: done callbacks may take it
                except BaseException as i:  # an interrupt out of a done callback (a Ctrl-C):
                    with self._lock:  # this thread would end with it unheard; the block
                        if self._interrupt is None:  # raises it once all have returned
                            self._interrupt = i
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
                idle = self._running == 0 and self._state == "closing"
            if idle:
                self._mark_idle()

    def _notify(self) -> None:
        # g.ctx ended: wake go() calls waiting for a slot, so they raise its error.
        with self._cond:
            self._cond.notify_all()

    def _wait(self) -> None:
        """Wait for every function, including ones the functions start meanwhile.

        Waits on a Done, which a Ctrl-C interrupts cleanly (``Thread.join()`` on Python 3.11
        marks a thread stopped when a Ctrl-C interrupts it); joins the threads once they are
        through, so none outlives the block.
        """
        with self._lock:
            if self._state == "open":
                self._state = "closing"
            idle = self._running == 0
        if idle:
            self._mark_idle()
        done = self._idle.done()
        if _in_main_thread():
            # A signal that lands between the last check for pending handlers and the blocking
            # wait is handled in C but its Python handler only runs once the wait ends (a race
            # in CPython's lock acquire): wake now and then, so a Ctrl-C is never slept through.
            while not done.wait(_SIGNAL_CHECK):
                pass
        else:
            done.wait()
        with self._lock:
            self._state = "closed"
            threads, self._threads = self._threads, {}
        _open_groups.discard(self)
        for t in threads:
            t.join()  # each is past its function: this only lets it end

    def _forget_parent(self) -> None:
        """In a child forked while the block was open: the functions running at the fork are
        threads of the parent, none of them here (but the one that forked, if one did), so the
        child's exit waits for none of the others (it would wait for good); the lock, which one
        of them may have held at the fork, is made anew. The block goes on in the child with
        the functions it starts there."""
        me = threading.current_thread()  # (the thread that forked: the child's only one)
        mine = me in self._threads
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._running = 1 if mine else 0
        self._threads = {me: None} if mine else {}

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The first Ctrl-C (the body's own, or one out of the cancel or the wait: a cancel is
        # committed before its callbacks run, as in _tree.end) cancels g.ctx and the waiting
        # goes on; a second one leaves at once, raised during the first (its __context__).
        # A Ctrl-C may land at any line, the first ones included, so the try comes first
        # (Python 3.10 runs no signal handler before a function's first try; 3.11 and later
        # run none between a function's entry and a try that opens it).
        try:
            try:
                handled = sys.exc_info()[1]  # e if the body raised: what an exception chains to
                interrupt: BaseException | None = e if isinstance(e, KeyboardInterrupt) else None
                if interrupt is not None and (
                    _ctrl_cs(interrupt, self._before) > 1 or _ended_by_ctrl_c(self._ctx)
                ):
                    # A second Ctrl-C came out of the body (a nested group's, raised during
                    # the first; or the first went to signal_context(), which ended g.ctx):
                    # it stops this waiting too, as one landing in it would.
                    self._cancel(interrupt)
                    return
                if e is not None:
                    self._cancel(e)
                self._wait()
            except KeyboardInterrupt as i:
                try:
                    before = handled
                except NameError:  # i landed before that line: what it chains to is the same
                    before = i.__context__
                if (
                    isinstance(e, KeyboardInterrupt)
                    or _ctrl_cs(i, before) > 1
                    or _ended_by_ctrl_c(self._ctx)
                ):
                    # A second Ctrl-C (perhaps landing while the first came out, or after
                    # signal_context() took the first)
                    raise
                interrupt = i
                self._cancel(i)  # (g.ctx is already done, unless it landed before the cancel)
                self._wait()
            raising = self._outcome(e, interrupt)
            if raising is not None:
                raise raising  # raised while the body's exception is handled: its __context__
        finally:
            # (no reference cycle through this frame)
            interrupt = raising = self._before = None
            self._cancel(None)
            if self._wake is not None:
                self._wake.cancel()
                self._wake = None

    def _outcome(
        self, e: BaseException | None, interrupt: BaseException | None
    ) -> BaseException | None:
        """What leaving the block raises once every function has returned (None: nothing, or
        the body's *e* itself), *interrupt* being a Ctrl-C that landed in the waiting. (Out of
        ``__exit__``, whose try must stay its first instruction: on 3.10, a try whose handler
        lies far enough away starts with an EXTENDED_ARG, at which a Ctrl-C can land.)"""
        if interrupt is None:  # (all have returned: nothing writes it any more)
            interrupt, self._interrupt = self._interrupt, None
        if interrupt is not None and interrupt is not e:
            return interrupt
        first = self._first
        if e is None:
            return first
        if first is not None and (e is self._refusal or _answers(e, first, self._ctx)):
            # go() refused because a function failed, or the body stopped with the error that
            # failure gave g.ctx: say which (the body's is its __context__)
            return first
        return None


# The Groups whose block is open in this process (weakly), for the at-fork hook.
_open_groups: weakref.WeakSet[Group] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for g in list(_open_groups):
        g._forget_parent()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _answers(e: BaseException, first: BaseException, ctx: Context) -> bool:
    """Whether *e*, out of the block's body, is *ctx*'s own error (``g.ctx.check()``, a feeding
    loop's wait) after the function's failure *first* ended *ctx*: the body's answer to that
    failure, which is raised in its place, as when ``go()`` refuses for it."""
    return cause(ctx) is first and _is_own_error(e, ctx)


def _is_own_error(e: BaseException, ctx: Context) -> bool:
    """Whether *e* is *ctx*'s own error: of the type ``ctx.err()`` is, *ctx* having ended."""
    if not isinstance(e, ContextError):
        return False
    err = ctx.err()
    return err is not None and type(e) is type(err)


def _ended_by_ctrl_c(ctx: Context) -> bool:
    """Whether *ctx* ended because ``signal_context()`` took a Ctrl-C (so the next one is the
    second)."""
    why = cause(ctx)
    return isinstance(why, SignalReceived) and why.signum == signal.SIGINT


def _ctrl_cs(e: BaseException, handled: BaseException | None) -> int:
    """The KeyboardInterrupts in *e*'s ``__context__`` chain back to *handled* (what was being
    handled when the chain began): two when a second Ctrl-C landed while the first was on its
    way out, in a ``finally`` or in an ``except`` that cleans up and re-raises."""
    n = 0
    x: BaseException | None = e
    while x is not None and x is not handled:
        n += isinstance(x, KeyboardInterrupt)
        x = x.__context__
    return n


# --------------------------------------------------------------------------------------------
# Tasks (asyncio and trio, through anyio) and threads in one group


@final
class TaskGroup:
    """Run tasks and threads under one context; the first failure cancels the rest.

    ``async with gocontext.TaskGroup(parent) as g:`` under asyncio or trio, then
    ``g.go(async_fn, *args)`` runs ``async_fn(g.ctx, *args)`` as a task and
    ``g.go_thread(fn, *args)`` runs ``fn(g.ctx, *args)`` in a new worker thread, both with the
    caller's context variables. ``go`` and ``go_thread`` are plain calls that never block (like
    anyio's ``start_soon``), made from the group's event loop thread; with *limit*, at most
    *limit* functions (tasks and threads together) run at once, and the others wait their turn
    in the order given.

    The first exception from a function cancels ``g.ctx`` (with that exception as cause) and
    then the tasks, so a sibling's ``finally`` block already sees ``g.ctx`` done; functions
    still waiting for a slot are dropped, and so are later ``go`` calls. Leaving the block waits
    for every task and thread, then raises that first exception itself: never an exception
    group of our making. ``g.errors`` lists every exception raised, in the order raised. If all
    returned, nothing is raised, even if *parent* ended: its end reaches the functions through
    ``g.ctx`` only (as in Go), the tasks are not cancelled for it. If the body raises, ``g.ctx`` is
    cancelled with that exception as cause, everything is cancelled and waited for, and the
    body's exception propagates (but ``g.ctx``'s own error, after a function's failure ended
    ``g.ctx``, gives way to that failure, as for ``Group``). A framework cancellation of the
    enclosing task (an outer cancel scope, ``task.cancel()``) cancels ``g.ctx`` with a
    ``FrameworkCancelled`` cause and propagates untouched, unless a function failed too: then,
    as in anyio's and trio's task groups, the error wins and is raised. A function that answers
    that cancellation with ``g.ctx``'s error (a thread's ``ctx.check()``) has not failed: the
    error is listed in ``g.errors`` only. A task that ends with its framework's cancellation
    when no cancel scope asked for it (it awaited a future someone else cancelled) has failed,
    as with any other exception; under trio an ``asyncio.CancelledError`` is any other
    exception, and so is a ``trio.Cancelled`` under asyncio. A thread is never abandoned: on
    cancellation the group waits for it to return (it should watch ``g.ctx``). A
    ``KeyboardInterrupt`` raised while the exit cancels ``g.ctx`` (by a done callback, say) is
    raised once every task and thread is waited for, with the body's exception, if any, as its
    ``__context__``. A group is entered once.

    Example:
        >>> import anyio, gocontext
        >>> async def fetch(ctx, n):
        ...     if n == 2:
        ...         raise LookupError(f"shard {n} is missing")
        ...     await gocontext.sleep(ctx, 10)
        >>> def crunch(ctx):
        ...     ctx.done().wait(10)
        >>> async def main():
        ...     try:
        ...         async with gocontext.TaskGroup(gocontext.background()) as g:
        ...             g.go_thread(crunch)
        ...             for n in range(3):
        ...                 g.go(fetch, n)
        ...     except LookupError as e:
        ...         return f"{e} | cause: {gocontext.cause(g.ctx) is e}"
        >>> anyio.run(main)
        'shard 2 is missing | cause: True'
        >>> anyio.run(main, backend="trio")
        'shard 2 is missing | cause: True'
    """

    # Read and written in the event loop's thread only (go() and the tasks run there): _state
    # ("new", "open", "closed"), _tg and _loop_thread (set on entry), _active (functions
    # started and not finished), _pending (functions waiting for a slot, in order), _stopping
    # (False until the group is cancelled, then fixed), _errors, _first, _threads (worker
    # threads, joined on exit). _limit, _ctx and _cancel are fixed at construction.
    __slots__ = (
        "_active",
        "_cancel",
        "_ctx",
        "_errors",
        "_first",
        "_interrupt",
        "_limit",
        "_loop_thread",
        "_pending",
        "_state",
        "_stopping",
        "_tg",
        "_threads",
    )

    def __init__(self, parent: Context, *, limit: int | None = None) -> None:
        check_context(parent, "TaskGroup")
        self._limit = _check_limit(limit, "TaskGroup")
        self._ctx, self._cancel = with_cancel_cause(parent)
        self._state = "new"
        self._tg: Any = None
        self._active = 0
        self._pending: collections.deque[_Item] = collections.deque()
        self._stopping = False
        self._errors: list[BaseException] = []
        self._first: BaseException | None = None
        # The first interrupt out of a cancel of g.ctx (a done callback's, a Ctrl-C landing
        # there) made by a member or the exit: kept out of the anyio group (which would wrap
        # it) and raised by __aexit__ once every member is waited for.
        self._interrupt: BaseException | None = None
        self._threads: list[threading.Thread] = []

    @property
    def ctx(self) -> RichContext:
        """The group's context, passed to every function as its first argument.

        Example:
            >>> import anyio, gocontext
            >>> async def main():
            ...     async with gocontext.TaskGroup(gocontext.background()) as g:
            ...         assert g.ctx.err() is None
            ...     return g.ctx.err()  # cancelled on exit
            >>> anyio.run(main)
            Canceled('context canceled')
        """
        return self._ctx

    @property
    def errors(self) -> list[BaseException]:
        """Every exception the functions raised so far, in the order raised (a copy).

        Example:
            >>> import anyio, gocontext
            >>> async def main():
            ...     async with gocontext.TaskGroup(gocontext.background()) as g:
            ...         g.go_thread(lambda ctx: None)
            ...     return g.errors
            >>> anyio.run(main)
            []
        """
        return list(self._errors)

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a gocontext.TaskGroup is entered once: make a new TaskGroup")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._loop_thread = threading.get_ident()
        self._state = "open"
        return self

    def go(
        self, fn: Callable[[RichContext, Unpack[Ts]], Awaitable[object]], /, *args: Unpack[Ts]
    ) -> None:
        """Run ``await fn(g.ctx, *args)`` as a task of the group; never blocks.

        Example:
            >>> import anyio, gocontext
            >>> async def double(ctx, n, out):
            ...     out.append(2 * n)
            >>> async def main():
            ...     out = []
            ...     async with gocontext.TaskGroup(gocontext.background(), limit=2) as g:
            ...         for n in range(4):
            ...             g.go(double, n, out)
            ...     return sorted(out)
            >>> anyio.run(main)
            [0, 2, 4, 6]
        """
        self._submit(True, fn, args, "go")

    def go_thread(
        self, fn: Callable[[RichContext, Unpack[Ts]], object], /, *args: Unpack[Ts]
    ) -> None:
        """Run ``fn(g.ctx, *args)`` in a new worker thread of the group; never blocks.

        While it runs, an asyncio loop in the main thread wakes for a signal (Ctrl-C) wherever
        the system delivers it, *fn*'s thread included, as a trio run always does.

        Example:
            >>> import anyio, gocontext
            >>> async def main():
            ...     out = []
            ...     async with gocontext.TaskGroup(gocontext.background()) as g:
            ...         g.go_thread(lambda ctx: out.append(ctx.err()))
            ...     return out
            >>> anyio.run(main, backend="trio")
            [None]
        """
        self._submit(False, fn, args, "go_thread")

    def _submit(
        self, is_async: bool, fn: Callable[..., object], args: tuple[Any, ...], name: str
    ) -> None:
        if not callable(fn):
            raise TypeError(f"TaskGroup.{name}() needs a callable, got {fn!r}")
        if not is_async and async_callable(fn):
            raise TypeError(
                f"TaskGroup.go_thread() runs functions in threads, got async function {fn!r}: "
                "use TaskGroup.go()"
            )
        if self._state != "open":
            raise RuntimeError(f"TaskGroup.{name}() called outside the group's async with block")
        if threading.get_ident() != self._loop_thread:
            raise RuntimeError(
                f"TaskGroup.{name}() must be called from the thread of the group's event loop"
            )
        if self._stopping:
            return  # the group is cancelled: nothing new starts
        item = (is_async, fn, args, contextvars.copy_context())
        if self._limit is None or self._active < self._limit:
            self._launch(item)
        else:
            self._pending.append(item)

    def _launch(self, item: _Item) -> None:
        is_async, fn, args, context = item
        self._active += 1
        runner = self._run_task if is_async else self._run_thread
        try:  # the task is made inside the caller's context, so it runs in a copy of it
            context.run(self._tg.start_soon, runner, fn, args)
        except BaseException:
            self._active -= 1
            raise

    def _release(self) -> None:
        self._active -= 1
        if self._pending and not self._stopping:
            self._launch(self._pending.popleft())

    async def _run_task(self, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> None:
        try:
            if self._stopping:  # cancelled between go() and this task's first step
                return
            awaitable = fn(self._ctx, *args)
            if not inspect.isawaitable(awaitable):
                raise TypeError(  # noqa: TRY301 - a failure of this function like any other
                    f"TaskGroup.go() needs an async function, got {fn!r}, which returned "
                    f"{awaitable!r}: use TaskGroup.go_thread() for blocking functions"
                )
            await awaitable
        except BaseException as e:
            if _cancellation_only(e) and anyio.current_effective_deadline() == -math.inf:
                # Cancelled by a cancel scope (the group's, or an enclosing one): the
                # framework's own cancellation goes on. One that no scope asked for (a future
                # someone else cancelled, awaited here; one raised by hand) is this
                # function's failure, as anything else it raises.
                self._stop(_framework_cause(e))
                raise
            self._fail(e)  # kept out of the anyio group: raised by __aexit__, on its own
        finally:
            self._release()

    async def _run_thread(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        # Our own thread, not anyio's pool: a pool item cancelled before a worker takes it
        # never runs, and a thread we must wait for has to be known to start.
        finished, mark_finished = with_cancel(_BACKGROUND)
        raised: list[BaseException] = []
        ctx, context = self._ctx, contextvars.copy_context()
        ticket = [False]  # True once the thread or a failed start() has claimed it
        ticket_lock = threading.Lock()

        def run() -> None:
            with ticket_lock:
                claimed, ticket[0] = ticket[0], True
            try:
                if not claimed:
                    result = context.run(fn, ctx, *args)
                    refuse_coroutine(result, fn, "TaskGroup.go_thread()", "use TaskGroup.go()")
            except BaseException as e:  # KeyboardInterrupt and SystemExit too: raised on exit
                raised.append(e)
            finally:
                mark_finished()

        wakeup = None
        try:
            if self._stopping:  # cancelled between go_thread() and this task's first step
                return
            # While fn runs, a signal may be handed to its thread: the main thread's loop must
            # wake.
            wakeup = _wakeup.hold()
            t = threading.Thread(
                target=run, name=f"gocontext.TaskGroup-{next(_names)}", daemon=True
            )
            threads = self._threads
            if len(threads) > 64 and len(threads) > 2 * self._active:
                # Forget threads that have ended (a long-lived group would keep them all).
                self._threads = [x for x in threads if x.ident is None or x.is_alive()]
            self._threads.append(t)
            try:
                t.start()
            except BaseException as e:  # a Ctrl-C under trio, after the thread may exist
                with ticket_lock:
                    claimed, ticket[0] = ticket[0], True
                if claimed:  # it runs fn: wait for it as for any other
                    self._stop(e)
                    with anyio.CancelScope(shield=True):
                        await wait_done(finished.done())
                else:
                    self._threads.remove(t)
                self._fail(e)  # raised by __aexit__, on its own
                return
            try:
                await wait_done(finished.done())
            except BaseException as e:  # the task is cancelled: tell the thread, wait for it
                cancelled = _cancellation_only(e)
                self._stop(_framework_cause(e) if cancelled else e)
                with anyio.CancelScope(shield=True):
                    await wait_done(finished.done())
                if not cancelled:  # a Ctrl-C under trio, say: a failure, raised on exit
                    self._fail(e)
                if raised:
                    self._fail(raised[0])
                if cancelled:
                    raise
                return
            if raised:
                self._fail(raised[0])
        finally:
            if wakeup is not None:
                _wakeup.release(wakeup)
            self._release()

    def _fail(self, e: BaseException) -> None:
        self._errors.append(e)
        if self._first is None and not self._answers_stop(e):
            self._first = e
            self._halt(e)

    def _answers_stop(self, e: BaseException) -> bool:
        """Whether *e* is a function's answer to the group being stopped by a cancellation (no
        function failed, yet _stop ended g.ctx): g.ctx's own error, raised by a thread's
        ``ctx.check()`` or a task's cleanup. Listed in ``errors`` but no failure: as a task's
        cancellation, it must not turn the framework's cancellation into a ``Canceled``."""
        return self._stopping and _is_own_error(e, self._ctx)

    def _halt(self, cause: BaseException) -> None:
        """Cancel g.ctx first (so the tasks' finally blocks see it), then the tasks."""
        try:
            self._cancel_ctx(cause)
        finally:
            self._stop(None)
            self._tg.cancel_scope.cancel()

    def _stop(self, cause: BaseException | None) -> None:
        try:
            if cause is not None:
                self._cancel_ctx(cause)
        finally:
            self._stopping = True
            self._pending.clear()

    def _cancel_ctx(self, cause: BaseException) -> None:
        """Cancel g.ctx; an interrupt out of its done callbacks is kept (see _interrupt), so
        the member or exit that cancels goes on with its own stop path."""
        try:
            self._cancel(cause)
        except BaseException as i:
            if self._interrupt is None:
                self._interrupt = i
            else:  # pragma: no cover - a second Ctrl-C among the callbacks
                _log.error("gocontext: an interrupt while a TaskGroup stopped", exc_info=i)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        failed = False
        interrupt: BaseException | None = None
        try:
            # An interrupt out of the cancel (a done callback's, a Ctrl-C) comes once the cancel
            # is committed: as in _tree.end, the work goes on (the anyio group is exited, every
            # member waited for) and the interrupt is raised after, with e as its __context__.
            if e is not None:
                failed = not _cancellation_only(e)
                if failed:
                    self._halt(e)
                else:
                    self._stop(_framework_cause(e))
        except BaseException as i:
            interrupt = i
        try:
            return await self._exit(failed, et, e, tb)
        finally:
            if interrupt is None:
                interrupt = self._interrupt
            self._interrupt = None
            if interrupt is not None:
                try:
                    raise interrupt
                finally:
                    interrupt = None  # (no reference cycle through this frame)

    async def _exit(
        self,
        failed: bool,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Exit the anyio group (g.ctx and the tasks are cancelled if the block's body failed or
        was cancelled), then say what the block raises."""
        try:
            if failed:
                # Wait, and let the body's exception go on (kept out of the anyio group, which
                # would wrap it). A cancellation that reaches the exit meanwhile (an outer
                # scope's) does not replace it: an error wins, as in anyio and trio.
                try:
                    await self._tg.__aexit__(None, None, None)
                except BaseException as raised:
                    if not _cancellation_only(raised):
                        raise
                first = self._first
                if e is not None and first is not None and _answers(e, first, self._ctx):
                    # The body stopped with the error the first failure gave g.ctx (a
                    # blocking feeder's check): the failure is raised, the body's is its
                    # __context__.
                    raise first
                return False
            try:
                swallowed = await self._tg.__aexit__(et, e, tb)
            except BaseException as raised:
                if not _cancellation_only(raised):
                    raise
                self._stop(_framework_cause(raised))
                if self._first is None:
                    raise
                swallowed = False  # a function failed too: its error wins, as in anyio and trio
            first = self._first
            if first is not None:
                raise first
            return bool(swallowed)
        finally:
            self._state = "closed"
            self._cancel(None)
            for t in self._threads:
                t.join()  # each has marked itself finished: this only lets it end
            self._threads.clear()


_Item = tuple[bool, Callable[..., Any], tuple[Any, ...], contextvars.Context]


def _cancellation_only(e: BaseException) -> bool:
    """True for the running framework's cancellation, or an exception group made only of it.

    Only the running one's: under trio an ``asyncio.CancelledError`` is an exception like any
    other (and a ``trio.Cancelled`` under asyncio), a function's failure.
    """
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(e, cancelled):
        return True
    return isinstance(e, BaseExceptionGroup) and e.split(cancelled)[1] is None


if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup
