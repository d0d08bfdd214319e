"""``get()`` and ``get_async()``: ``ray.get`` bounded by a context."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import ray

from .._context import _OURS, Context, _check_foreign
from .._threads import to_thread

__all__ = ["get", "get_async"]

T = TypeVar("T")
_SLICE = 0.01  # seconds between checks of the context while waiting on Ray


@overload
def get(ctx: Context, refs: ray.ObjectRef[Any], *, timeout: float | None = None) -> Any: ...
@overload
def get(
    ctx: Context, refs: Sequence[ray.ObjectRef[Any]], *, timeout: float | None = None
) -> list[Any]: ...
def get(ctx: Context, refs: Any, *, timeout: float | None = None) -> Any:
    """``ray.get(refs)`` bounded by *ctx*: on a cancel or deadline, the tasks behind *refs* are
    cancelled (recursively) and ``Canceled`` / ``DeadlineExceeded`` is raised at once.

    *timeout* behaves as ``ray.get``'s (``ray.exceptions.GetTimeoutError``). A task's own
    error is raised as ``ray.get`` raises it.

    Example:
        >>> import gocontext, gocontext.ray
        >>> # gocontext.ray.get(ctx, [task.remote(ctx) for _ in range(3)])
    """
    if type(ctx) not in _OURS:
        _check_foreign(ctx, "get", "ctx")
    single = isinstance(refs, ray.ObjectRef)
    pending = [refs] if single else list(refs)
    if not all(isinstance(r, ray.ObjectRef) for r in pending):
        raise TypeError(f"get() needs a Ray ObjectRef or a list of them, got {refs!r}")
    woken = threading.Event()
    handle = ctx.done().add_callback(woken.set)
    try:
        end = None if timeout is None else time.monotonic() + timeout
        waiting = list(pending)
        while waiting:
            err = ctx.err()
            if err is not None:
                for r in pending:
                    ray.cancel(r, recursive=True)
                raise err
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise ray.exceptions.GetTimeoutError(f"get() timed out after {timeout}s")
            step = _SLICE if left is None else min(_SLICE, left)
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=step, fetch_local=True)
        return ray.get(refs)
    finally:
        handle.cancel()


async def get_async(ctx: Context, refs: Any, *, timeout: float | None = None) -> Any:
    """``get()`` for async code (asyncio and trio): a framework cancellation of the awaiting
    task cancels the Ray tasks too, and no thread is left behind.

    Example:
        >>> import gocontext, gocontext.ray
        >>> # await gocontext.ray.get_async(ctx, ref)
    """
    return await to_thread(ctx, lambda child: get(child, refs, timeout=timeout))
