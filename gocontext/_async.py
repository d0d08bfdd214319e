"""Contexts and event loops: awaiting a Done, ``scope()`` and ``sleep()``, under asyncio and trio.

One small section per event loop, picked by the running library: asyncio (any loop, uvloop
included, several loops in several threads) and trio. A context ends in whatever thread cancels
it; the loop learns of it through a thread-safe hand-off (``call_soon_threadsafe``,
``TrioToken.run_sync_soon``), never by running loop code in the canceller's thread.

Deadlines enter a loop as time *remaining*: trio's clock is deliberately offset from
``time.monotonic()``, and asyncio's is the loop's own, so absolute times are never compared
across clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from typing import TYPE_CHECKING, Any, final

import anyio

from . import _timer
from ._context import (
    _OURS,
    Context,
    _check_foreign,
    cancel_with_cause,
    with_cancel_cause,
    with_deadline,
)
from ._done import Done

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["scope", "sleep", "wait_done"]

_get_running_loop = asyncio._get_running_loop  # the quick check, as asyncio itself uses it
try:  # one backend lookup per scope instead of one per anyio call
    from anyio.lowlevel import get_async_backend as _get_async_backend  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - anyio releases that keep it private
    from anyio._core._eventloop import get_async_backend as _get_async_backend


def _library() -> str:
    """``"asyncio"`` or ``"trio"``: the library running the current task."""
    if _get_running_loop() is not None:
        return "asyncio"
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    raise RuntimeError("gocontext: no asyncio event loop or trio run in this thread")


async def wait_done(done: Done) -> None:
    """Suspend the current task until *done* is set (what ``await done`` runs).

    The wake-up comes from whichever thread ends the context, through the loop's thread-safe
    entry; a framework cancellation of the waiting task unregisters the callback.
    """
    if done.is_set():
        await anyio.lowlevel.checkpoint()
        return
    if _library() == "asyncio":
        await _asyncio_wait(done)
    else:
        await _trio_wait(done)


# --------------------------------------------------------------------------------------------
# asyncio


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _asyncio_wait(done: Done) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to wake
            loop.call_soon_threadsafe(_set_result, fut)

    handle = done.add_callback(wake)
    try:
        await fut
    finally:
        handle.cancel()


def _asyncio_canceller(cs: anyio.CancelScope) -> Any:
    loop = asyncio.get_running_loop()

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing is left to cancel
            loop.call_soon_threadsafe(cs.cancel)

    return cancel


# --------------------------------------------------------------------------------------------
# trio


async def _trio_wait(done: Done) -> None:
    import trio

    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    waiting = True  # touched only in the trio thread

    def reschedule() -> None:
        nonlocal waiting
        if waiting:
            waiting = False
            trio.lowlevel.reschedule(task)

    def wake() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(reschedule)

    handle = done.add_callback(wake)

    def abort(_: Any) -> trio.lowlevel.Abort:
        nonlocal waiting
        waiting = False
        handle.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
    handle.cancel()


def _trio_canceller(cs: anyio.CancelScope) -> Any:
    import trio

    token = trio.lowlevel.current_trio_token()

    def cancel() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(cs.cancel)

    return cancel


# --------------------------------------------------------------------------------------------
# scope and sleep


class FrameworkCancelled(Exception):
    """The cause recorded on a scope's child when its task was cancelled by its framework."""

    __module__ = "gocontext"


@final
class scope:  # noqa: N801 - used like a function: `async with gocontext.scope(ctx) as child:`
    """Run the block under *ctx*: cancelled the moment *ctx* is done, from any thread.

    ``async with gocontext.scope(ctx) as child:`` runs the body in an anyio cancel scope that
    *ctx* cancels; if that cancellation interrupted the body, leaving the block raises
    ``ctx.err()`` (``Canceled`` or ``DeadlineExceeded``), never a bare framework cancellation
    and never a silent fall-through. A body that completes returns normally.

    ``child`` is a ``with_cancel(ctx)`` for the threads, HTTP calls and Ray tasks the body
    starts. Its deadline is the earlier of *ctx*'s and the enclosing anyio/trio/asyncio
    effective deadline. When the task is cancelled by its framework (a failing task group,
    ``task.cancel()``, an outer ``fail_after``), ``child`` is cancelled with a
    ``FrameworkCancelled`` cause, and the framework's cancellation propagates untouched.
    ``child`` is cancelled on exit in every case. The body's own exceptions pass through.

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

    __slots__ = ("_baseline", "_child", "_cs", "_ctx", "_handle", "_task")
    __module__ = "gocontext"

    def __init__(self, ctx: Context) -> None:
        if type(ctx) not in _OURS:
            _check_foreign(ctx, "scope", "ctx")
        self._ctx = ctx
        self._cs: anyio.CancelScope | None = None

    async def __aenter__(self) -> Context:
        if self._cs is not None:
            raise RuntimeError("gocontext.scope() is not reentrant: enter a new scope(ctx)")
        ctx = self._ctx
        library = _library()
        backend = _get_async_backend(library)  # named: skips anyio's detection on each call
        child, _ = with_cancel_cause(ctx)
        outer = backend.current_effective_deadline()
        if outer != math.inf:  # the enclosing deadline, translated to our clock
            child, _ = with_deadline(child, _timer.now() + (outer - backend.current_time()))
        self._child = child
        self._baseline = 0
        self._task: asyncio.Task[Any] | None = None
        if sys.version_info >= (3, 11) and library == "asyncio":
            self._task = asyncio.current_task()
            if self._task is not None:
                self._baseline = self._task.cancelling()
        cs = self._cs = backend.create_cancel_scope()
        cs.__enter__()
        canceller = _asyncio_canceller(cs) if library == "asyncio" else _trio_canceller(cs)
        self._handle = ctx.done().add_callback(canceller)
        return child

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        cs = self._cs
        assert cs is not None
        self._handle.cancel()
        try:
            swallowed = cs.__exit__(et, e, tb)
        except BaseException as raised:
            cancel_with_cause(self._child, _framework_cause(raised))
            raise
        if swallowed:
            # Our cancellation interrupted the body. A native task.cancel() that landed at the
            # same time must not be lost (anyio can fold both into one CancelledError).
            task = self._task
            if (
                sys.version_info >= (3, 11)
                and task is not None
                and task.cancelling() > self._baseline
            ):
                cancel_with_cause(self._child, FrameworkCancelled("task cancelled by asyncio"))
                raise asyncio.CancelledError
            cancel_with_cause(self._child, None)
            err = self._ctx.err()
            if err is None:  # pragma: no cover - the scope is cancelled only once ctx is done
                return True
            raise err
        if e is not None and isinstance(e, _cancelled_classes()):
            cancel_with_cause(self._child, _framework_cause(e))
        else:
            cancel_with_cause(self._child, None)
        return False


def _cancelled_classes() -> tuple[type[BaseException], ...]:
    classes: tuple[type[BaseException], ...] = (asyncio.CancelledError,)
    if "trio" in sys.modules:
        import trio

        classes += (trio.Cancelled,)
    return classes


def _framework_cause(e: BaseException) -> BaseException | None:
    if isinstance(e, _cancelled_classes()) or (
        isinstance(e, BaseExceptionGroup) and e.subgroup(_cancelled_classes()) is not None
    ):
        return FrameworkCancelled(f"task cancelled by its framework ({type(e).__name__})")
    return None


async def sleep(ctx: Context, seconds: float) -> None:
    """Sleep *seconds*; raise ``ctx.err()`` as soon as *ctx* is done.

    Works under asyncio and trio. NaN raises ValueError.

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
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"sleep() needs a number of seconds, got {seconds!r}")
    if math.isnan(seconds):
        raise ValueError("sleep() got a NaN number of seconds")
    err = ctx.err()
    if err is not None:
        raise err
    async with scope(ctx):
        await anyio.sleep(seconds)


if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup
