"""``to_thread()``: run blocking code in a worker thread under a child context, never abandoned."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import anyio
from typing_extensions import TypeVarTuple, Unpack

from . import _wakeup
from ._async import _framework_cause
from ._context import (
    _BACKGROUND,
    Context,
    RichContext,
    check_context,
    with_cancel,
    with_cancel_cause,
)
from ._errors import ContextError, async_callable, describe, refuse_coroutine
from ._loops import wait_done

__all__ = ["to_thread"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def to_thread(
    ctx: Context, fn: Callable[[RichContext, Unpack[Ts]], T], *args: Unpack[Ts]
) -> T:
    """Run ``fn(child_ctx, *args)`` in a worker thread and return its result.

    ``child_ctx`` is a ``with_cancel(ctx)``, cancelled once *fn* returns: *fn* should poll
    ``child_ctx.err()`` (or ``child_ctx.check()``) or wait on ``child_ctx.done()``. The
    ambient context and every other context variable are copied into the thread. An exception
    from *fn* is raised here unchanged. A coroutine handed back by *fn* (``lambda c: job(c)``)
    would never run: it is closed, and a TypeError raised (await it in the task instead).

    If the awaiting task is cancelled by its framework, ``child_ctx`` is cancelled (its cause
    says so) and the await waits for *fn* to return before the cancellation goes on: no thread
    is ever abandoned. What *fn* returns then is dropped, as is the ``ContextError`` it raises
    in answer; any other exception from it is raised in place of the cancellation, as it would
    be from cleanup code running in the task. A task cancelled before *fn* started (already
    cancelled, or waiting for a worker thread) goes on at once, and *fn* never runs. An
    interrupt reaching the task (trio's ``KeyboardInterrupt``) also cancels ``child_ctx`` and
    waits for *fn*. While *fn* runs, an asyncio loop in the main thread wakes for a signal
    (Ctrl-C) wherever the system delivers it, *fn*'s thread included, as a trio run always does.

    Example:
        >>> import anyio, gocontext
        >>> def work(ctx, n):
        ...     ctx.check()
        ...     return n * 2
        >>> async def main():
        ...     return await gocontext.to_thread(gocontext.background(), work, 21)
        >>> anyio.run(main)
        42
    """
    check_context(ctx, "to_thread", "ctx")
    if not callable(fn):
        raise TypeError(f"to_thread() needs a callable, got {describe(fn)}")
    if async_callable(fn):
        raise TypeError(
            f"to_thread() runs functions in threads, got async function {describe(fn)}: "
            "await it in the task instead"
        )
    child, cancel_child = with_cancel_cause(ctx)
    # Who ends the call decides it through `claim`, a one-item list popped atomically: the
    # worker pops it to run fn; a task that is cancelled or interrupted pops it first when fn
    # has not started, and fn then never runs (anyio may skip the call or run it later). The
    # task waits for `finished` only when the worker won.
    claim = [None]
    # Done once fn has returned or raised; raised holds what it raised. Both are written in the
    # worker thread before `finished` is set, and read in the task only after.
    finished, mark_finished = with_cancel(_BACKGROUND)
    raised: list[BaseException] = []

    def run() -> T:
        try:
            claim.pop()
        except IndexError:  # the task went on without this call: fn never runs
            return None  # type: ignore[return-value]  # dropped: nobody awaits it any more
        try:
            result = fn(child, *args)
            # A plain function may hand back a coroutine (``lambda c: job(c)``): it would never
            # run, and each backend would answer differently (asyncio hands it back unawaited).
            refuse_coroutine(result, fn, "to_thread()", "await it in the task instead")
        except BaseException as e:
            raised.append(e)
            raise
        else:
            return result
        finally:
            mark_finished()

    async def settle() -> None:
        # Returns once fn will never run or has returned. Shielded: the task is being
        # cancelled, and a thread is never abandoned.
        try:
            claim.pop()
        except IndexError:
            if finished.err() is not None:  # fn has ended already
                return
            with anyio.CancelScope(shield=True):
                await wait_done(finished.done())

    wakeup = None
    try:
        # While fn runs, a signal may be handed to its thread: the main thread's loop must wake.
        wakeup = _wakeup.hold()
        # A copy made here, in the task: what fn sees does not depend on the backend's habits.
        call = contextvars.copy_context().run
        return await anyio.to_thread.run_sync(call, run, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class() as e:
        # The task is being cancelled, perhaps before fn started: tell fn, and wait for it.
        cancel_child(_framework_cause(e))
        await settle()
        if raised and not isinstance(raised[0], ContextError):
            raise raised[0]  # noqa: B904 - raised during the cancellation, chained to it
        raise
    except BaseException:
        # fn's own exception (fn has ended), or an interrupt delivered to the task while fn
        # runs (trio's KeyboardInterrupt): fn is told, and waited for all the same.
        cancel_child(None)
        await settle()
        raise
    finally:
        cancel_child(None)
        if wakeup is not None:
            _wakeup.release(wakeup)
