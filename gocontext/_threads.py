"""``to_thread()``: run blocking code in a worker thread under a child context, never abandoned."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TypeVar

import anyio
from typing_extensions import TypeVarTuple, Unpack

from ._async import _framework_cause
from ._context import (
    _BACKGROUND,
    _OURS,
    Context,
    _check_foreign,
    cancel_with_cause,
    with_cancel,
    with_cancel_cause,
)

__all__ = ["to_thread"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def to_thread(ctx: Context, fn: Callable[[Context, Unpack[Ts]], T], *args: Unpack[Ts]) -> T:
    """Run ``fn(child_ctx, *args)`` in a worker thread and return its result.

    ``child_ctx`` is a ``with_cancel(ctx)``: *fn* should poll ``child_ctx.err()`` or wait on
    ``child_ctx.done()``. If the awaiting task is cancelled by its framework, ``child_ctx`` is
    cancelled and the await waits for *fn* to return before the cancellation goes on: no thread
    is ever abandoned. The ambient context and other context variables are copied into the
    thread. An exception from *fn* is raised here unchanged.

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
    if type(ctx) not in _OURS:
        _check_foreign(ctx, "to_thread", "ctx")
    if not callable(fn):
        raise TypeError(f"to_thread() needs a callable, got {fn!r}")
    child, _ = with_cancel_cause(ctx)
    finished, mark_finished = with_cancel(_BACKGROUND)  # done once fn has returned, however

    def run() -> T:
        try:
            return fn(child, *args)
        finally:
            mark_finished()

    call = functools.partial(contextvars.copy_context().run, run)
    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class() as e:
        cancel_with_cause(child, _framework_cause(e))
        with anyio.CancelScope(shield=True):
            await finished.done()
        raise
    finally:
        cancel_with_cause(child, None)
