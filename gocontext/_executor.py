"""``ContextExecutor``: a thread pool that carries the submitter's context variables, and
drops queued work whose context has ended."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import thread as _thread
from concurrent.futures.thread import BrokenThreadPool
from typing import Concatenate, ParamSpec, TypeVar, final

from ._context import Context, check_context

__all__ = ["ContextExecutor"]

P = ParamSpec("P")
T = TypeVar("T")


@final
class ContextExecutor(ThreadPoolExecutor):
    """A ``concurrent.futures.ThreadPoolExecutor`` (same constructor arguments) whose work runs
    with the submitter's context variables.

    A plain ``ThreadPoolExecutor`` runs every function with the worker thread's own variables,
    so ``gocontext.current()`` there is ``background()`` and the HTTP transport sends no
    deadline. Here ``submit(fn, *args)`` (and so ``map()`` and ``loop.run_in_executor``) runs
    *fn* in a copy of the variables of the code that submitted it, taken at the call.

    ``submit_ctx(ctx, fn, *args)`` runs ``fn(ctx, *args)`` the same way, and cancels the future
    the moment *ctx* ends if no worker has taken it yet: a queued function whose context ended
    never starts (its ``result()`` raises ``concurrent.futures.CancelledError``). One that has
    started runs on and should watch *ctx*. The hook on *ctx* is removed when the future
    finishes, so nothing is left registered.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> with gocontext.ContextExecutor(max_workers=2) as pool, gocontext.use(ctx):
        ...     pool.submit(gocontext.current).result() is ctx
        True
        >>> cancel()
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker with a copy of the caller's context
        variables; return its future.

        Example:
            >>> import gocontext
            >>> with gocontext.ContextExecutor() as pool:
            ...     pool.submit(pow, 2, 10).result()
            1024
        """
        if not callable(fn):
            raise TypeError(f"ContextExecutor.submit() needs a callable, got {fn!r}")
        run: Callable[..., T] = contextvars.copy_context().run
        return super().submit(run, fn, *args, **kwargs)

    def submit_ctx(
        self,
        ctx: Context,
        fn: Callable[Concatenate[Context, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Future[T]:
        """Run ``fn(ctx, *args, **kwargs)`` like ``submit()``; cancel the future as soon as
        *ctx* ends if no worker has taken it yet (at once if *ctx* is already done). A pool
        that takes no more work raises as ``submit()`` does, whatever the state of *ctx*.

        Example:
            >>> import gocontext
            >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
            >>> cancel()
            >>> with gocontext.ContextExecutor() as pool:
            ...     pool.submit_ctx(ctx, print, "never printed").cancelled()
            True
        """
        check_context(ctx, "ContextExecutor.submit_ctx", "ctx")
        if not callable(fn):
            raise TypeError(f"ContextExecutor.submit_ctx() needs a callable, got {fn!r}")
        if ctx.err() is not None:  # done already: no worker may take it, however quick
            self._check_open()
            done: Future[T] = Future()
            done.cancel()
            done.set_running_or_notify_cancel()
            return done
        # The hook goes on first: if it cannot be placed (a foreign Done that raises, an
        # interrupt), nothing has been handed to a worker. It cancels the future once known.
        box: list[Future[T]] = []
        handle = ctx.done().add_callback(functools.partial(_cancel_all, box))
        try:
            run: Callable[..., T] = contextvars.copy_context().run
            future = super().submit(run, fn, ctx, *args, **kwargs)
        except BaseException:
            handle.cancel()
            raise
        box.append(future)
        if ctx.err() is not None:  # ended before the hook could know the future
            future.cancel()  # (a no-op once a worker has it)
        future.add_done_callback(lambda _: handle.cancel())
        return future

    def _check_open(self) -> None:
        """Raise what ``submit()`` raises when the pool takes no more work (broken, shut
        down, or the interpreter shutting down)."""
        with self._shutdown_lock:
            if self._broken:
                raise BrokenThreadPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _thread._shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")


def _cancel_all(futures: list[Future[T]]) -> None:
    for f in futures:
        f.cancel()  # a no-op once a worker has it
