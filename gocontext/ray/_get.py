"""``get()``, ``get_async()`` and ``wait()``: ``ray.get`` and ``ray.wait`` bounded by a context.

When the context ends, ``get()`` raises at once and hands the tasks it gave up on to one
collector thread (started on demand, gone when idle). The tasks' own contexts tell them to stop
first; ``ray.cancel`` comes only for those still running after the grace period, and every
task's result is retrieved, so Ray does not report an expected ``Canceled`` or
``DeadlineExceeded`` as an unhandled error.

With ``fail_fast``, the first task to fail (in completion order) ends, at once, the copies of
the context its siblings received, through the context's cancellation channel: Go's errgroup,
where the first error cancels the group's context. The caller's own context is left alone.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, overload

import ray

from .._context import Context, check_context
from .._errors import check_real
from .._to_thread import to_thread
from ._channel import end_copies, keep, session, spawn

__all__ = ["get", "get_async", "wait", "wait_idle"]

_SLICE = 0.01  # seconds between checks of the context while waiting on Ray
_GRACE = 10.0  # default seconds a task gets to stop by its context before ray.cancel
_COLLECT_SLICE = 0.1  # seconds the collector waits on Ray before it checks Ray is still up


@overload
def get(
    ctx: Context,
    refs: ray.ObjectRef[Any],
    *,
    timeout: float | None = None,
    fail_fast: bool = True,
    grace: float = ...,
) -> Any: ...
@overload
def get(
    ctx: Context,
    refs: Sequence[ray.ObjectRef[Any]],
    *,
    timeout: float | None = None,
    fail_fast: bool = True,
    grace: float = ...,
) -> list[Any]: ...
def get(
    ctx: Context,
    refs: Any,
    *,
    timeout: float | None = None,
    fail_fast: bool = True,
    grace: float = _GRACE,
) -> Any:
    """``ray.get(refs)`` bounded by *ctx*: on a cancel or deadline, ``Canceled`` /
    ``DeadlineExceeded`` is raised at once.

    The tasks behind *refs* are expected to stop by themselves, through the contexts they
    received (the cooperative signal, which reaches them first). Any still running *grace*
    seconds later (default 10; ``math.inf`` never) are cancelled with
    ``ray.cancel(recursive=True)``: the fallback for tasks that ignore their context. Either way
    their results are collected in the background, so an expected error is not logged by Ray
    as unhandled.

    With a list of refs and *fail_fast* (the default), the first task to fail, in completion
    order, stops the others, as Go's errgroup does: the copies of *ctx* that Ray tasks received
    end at once (``Canceled``, with a ``RemoteCause`` naming the failure as cause), the
    unfinished tasks are handed to the same grace path as above, and the failure is raised as
    ``ray.get`` raises it. The caller's own *ctx* is not cancelled (``get`` does not own it),
    but as Ray tasks see it, it is spent: a task sent *ctx* afterwards sees it end. So
    give the tasks a context made for the fan-out, as ``errgroup.WithContext`` does::

        fan, cancel = gocontext.with_cancel(ctx)
        try:
            totals = gocontext.ray.get(fan, [shard.remote(fan, i) for i in range(8)])
        finally:
            cancel()

    Only tasks that received *ctx* itself are reached this way (a task that received a child
    made by the driver keeps it until *grace* runs out). ``fail_fast=False`` waits for every
    task and raises as ``ray.get(refs)`` does, in list order.

    *timeout* behaves as ``ray.get``'s (``ray.exceptions.GetTimeoutError``). A task's own
    error is raised as ``ray.get`` raises it.

    Example:
        >>> import gocontext, gocontext.ray
        >>> # gocontext.ray.get(ctx, [task.remote(ctx) for _ in range(3)], grace=5.0)
    """
    return _get(ctx, ctx, refs, timeout, fail_fast, grace)


def _get(
    ctx: Context, sent: Context, refs: Any, timeout: float | None, fail_fast: bool, grace: float
) -> Any:
    """``get()``, bounded by *ctx*; a failure ends the Ray tasks' copies of *sent*."""
    check_context(ctx, "get", "ctx")
    _check_seconds("get", "grace", grace)
    if type(fail_fast) is not bool:
        raise TypeError(f"gocontext.ray.get() needs fail_fast= as a bool, got {fail_fast!r}")
    if timeout is not None:
        _check_seconds("get", "timeout (or None)", timeout)
    single = isinstance(refs, ray.ObjectRef)
    if not single and (isinstance(refs, (str, bytes)) or not isinstance(refs, Sequence)):
        raise TypeError(
            f"gocontext.ray.get() needs a Ray ObjectRef or a list of them, got {refs!r}"
        )
    pending = [refs] if single else list(refs)
    if not all(isinstance(r, ray.ObjectRef) for r in pending):
        raise TypeError(
            f"gocontext.ray.get() needs a Ray ObjectRef or a list of them, got {refs!r}"
        )
    end = None if timeout is None else time.monotonic() + timeout
    waiting = list(dict.fromkeys(pending))  # ray.wait refuses a ref listed twice
    fast = fail_fast and len(waiting) > 1
    values: dict[ray.ObjectRef[Any], Any] = {}
    while waiting:
        err = ctx.err()
        if err is not None:
            _collector.take(waiting, grace)
            raise err
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise ray.exceptions.GetTimeoutError(f"get() timed out after {timeout}s")
        step = _SLICE if left is None else min(_SLICE, left)
        if not fast:
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=step, fetch_local=True)
            continue
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=step, fetch_local=True)
        if ready and waiting:  # and those done by now, so a long list costs one call each time
            more, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=True)
            ready += more
        for ref in ready:  # the one that finished first, first
            try:
                values[ref] = ray.get(ref)
            except Exception as failure:
                end_copies(sent, failure)
                _collector.take(waiting, grace)
                raise
    if fast:  # each value fetched once, in the order of refs
        return [values[r] for r in pending]
    return ray.get(refs)


def _check_seconds(fname: str, what: str, x: object) -> None:
    """Refuse *x* unless it is a real number of seconds >= 0 (``TypeError``, ``ValueError``)."""
    if check_real(x, f"gocontext.ray.{fname}", what, "seconds >= 0") < 0:
        raise ValueError(f"gocontext.ray.{fname}() needs seconds >= 0 as {what}, got {x!r}")


def wait(
    ctx: Context,
    refs: Sequence[ray.ObjectRef[Any]],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
) -> tuple[list[ray.ObjectRef[Any]], list[ray.ObjectRef[Any]]]:
    """``ray.wait(refs, num_returns=..., timeout=...)`` bounded by *ctx*: returns
    ``(ready, not_ready)`` as ``ray.wait`` does (``ready`` holds at most *num_returns*, fewer
    if *timeout* ran out first), and raises ``Canceled`` / ``DeadlineExceeded`` at once when
    *ctx* ends first (also when it had already ended).

    Unlike ``get()``, ``wait()`` neither cancels nor collects the tasks behind *refs*: it only
    stops waiting for them; they stay the caller's.

    Example:
        >>> import gocontext, gocontext.ray
        >>> # ready, not_ready = gocontext.ray.wait(ctx, refs, num_returns=2, timeout=5.0)
    """
    check_context(ctx, "wait", "ctx")
    if isinstance(refs, (str, bytes, ray.ObjectRef)) or not isinstance(refs, Sequence):
        raise TypeError(f"gocontext.ray.wait() needs a list of Ray ObjectRefs, got {refs!r}")
    todo = list(refs)
    if not all(isinstance(r, ray.ObjectRef) for r in todo):
        raise TypeError(f"gocontext.ray.wait() needs a list of Ray ObjectRefs, got {refs!r}")
    if len(set(todo)) != len(todo):
        raise ValueError(f"gocontext.ray.wait() needs distinct ObjectRefs, got {refs!r}")
    if type(num_returns) is not int or not 1 <= num_returns <= max(len(todo), 1):
        raise ValueError(
            f"gocontext.ray.wait() needs num_returns= as an int from 1 to len(refs) "
            f"({len(todo)}), got {num_returns!r}"
        )
    if timeout is not None:
        _check_seconds("wait", "timeout (or None)", timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        err = ctx.err()
        if err is not None:
            raise err
        if not todo:
            return [], []
        left = None if end is None else max(0.0, end - time.monotonic())
        step = _SLICE if left is None else min(_SLICE, left)
        ready, not_ready = ray.wait(todo, num_returns=num_returns, timeout=step, fetch_local=True)
        if len(ready) >= num_returns or left == 0:
            return ready, not_ready


async def get_async(
    ctx: Context,
    refs: ray.ObjectRef[Any] | Sequence[ray.ObjectRef[Any]],
    *,
    timeout: float | None = None,
    fail_fast: bool = True,
    grace: float = _GRACE,
) -> Any:
    """``get()`` for async code (asyncio and trio): a framework cancellation of the awaiting
    task ends the Ray tasks the same way, and no thread is left behind.

    Example:
        >>> import gocontext, gocontext.ray
        >>> # await gocontext.ray.get_async(ctx, ref)
    """
    return await to_thread(
        ctx,
        lambda child: _get(child, ctx, refs, timeout, fail_fast, grace),
    )


class _Abandoned:
    """Tasks ``get()`` gave up on: collected as they finish, cancelled at ``cancel_at``."""

    __slots__ = ("cancel_at", "drop_at", "refs")

    def __init__(self, refs: list[ray.ObjectRef[Any]], grace: float, now: float) -> None:
        self.refs = refs
        self.cancel_at = now + grace
        self.drop_at = math.inf  # once cancelled: when to stop waiting for them


class _Collector:
    """One thread, started on demand and gone when it has nothing left, for every ``get()``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards incoming and running; never held across Ray
        self.idle = threading.Condition(self.lock)
        self.incoming: list[_Abandoned] = []
        self.running = False

    def take(self, refs: list[ray.ObjectRef[Any]], grace: float) -> None:
        with self.lock:
            self.incoming.append(_Abandoned(refs, grace, time.monotonic()))
            start = not self.running
            self.running = True
        if start:
            spawn(self._run, "gocontext-ray-collector")

    def _run(self) -> None:
        held: list[_Abandoned] = []
        ray_session = session()
        while True:
            current = ray_session is not None and session() == ray_session
            with self.lock:
                held += self.incoming
                self.incoming = []
                if not held or not current:  # done, or Ray shut down: let go
                    self.running = False
                    self.idle.notify_all()
                    break
            now = time.monotonic()
            for batch in held:
                if now >= batch.cancel_at:
                    batch.cancel_at = math.inf
                    batch.drop_at = now + max(_GRACE, 1.0)
                    for ref in batch.refs:
                        with contextlib.suppress(Exception):
                            ray.cancel(ref, recursive=True)
            held = [b for b in held if b.refs and now < b.drop_at]
            refs = [r for b in held for r in b.refs]
            if not refs:
                continue
            wake = min(min(b.cancel_at, b.drop_at) for b in held)
            step = max(0.0, min(_COLLECT_SLICE, wake - now))
            try:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=step, fetch_local=False)
            except Exception:  # Ray shutting down under us
                continue
            done = set(ready)
            for ref in ready:
                with contextlib.suppress(Exception):  # the task's expected error: retrieved
                    ray.get(ref)
            for batch in held:
                batch.refs = [r for r in batch.refs if r not in done]

        if held and session() is not None:  # a new Ray connection: never release old refs
            keep([r for b in held for r in b.refs])

    def wait_idle(self, timeout: float) -> bool:
        with self.lock:
            return self.idle.wait_for(lambda: not self.running, timeout)


_collector = _Collector()


def wait_idle(timeout: float) -> bool:
    """Whether every task ``get()`` gave up on was collected within *timeout* (for tests)."""
    return _collector.wait_idle(timeout)
