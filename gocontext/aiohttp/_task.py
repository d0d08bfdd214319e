"""Stopping the running task when a context ends: one done-callback and one ``task.cancel()``.

aiohttp runs on asyncio only, and a request's client or server side is one task; so where
``gocontext.scope`` would make a child context and a cancel scope per request, this
cancels the task itself and tells its own cancellation from anyone else's by the task's
``cancelling()`` count (Python 3.11+), as ``scope`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from .._context import Context, become_owner
from .._done import CallbackHandle
from .._loops import _current_task

__all__ = ["TaskCanceller"]

_HAS_CANCELLING = sys.version_info >= (3, 11)  # Task.cancelling() and uncancel()


class TaskCanceller:
    """While armed, the end of *ctx* (in any thread) cancels the task that made this.

    Made in the task, on its loop. ``disarm()``, once, in the same task, stops it (a cancel
    on its way is then dropped) and takes this cancellation back from the task's count,
    whether the body let it through or swallowed it; ``release()`` removes the registration.
    ``owns(e)`` says whether a ``CancelledError`` is this cancellation alone: a cancellation
    of the task by anyone else, at the same moment or not, is theirs and passes through.

    *own*: the caller made *ctx* for this task alone (a server's request) and no one else
    sets its owner. If nothing but its timer and its cancel can end it, they tell this as its
    owner, with no registration under the tree lock (see ``become_owner``); else it registers
    as usual.
    """

    __slots__ = ("_baseline", "_loop", "_owned", "_task", "armed", "fired", "handle")

    def __init__(self, ctx: Context, own: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        task: Any = _current_task(self._loop)  # (cancelling() is typed from 3.11)
        if task is None:  # pragma: no cover - aiohttp runs requests in tasks
            raise RuntimeError("gocontext.aiohttp needs to run in an asyncio task")
        self._task = task
        self._baseline = task.cancelling() if _HAS_CANCELLING else 0
        self.armed = True
        self.fired = False
        self.handle: CallbackHandle | None
        self._owned: Any  # ctx, when this is its owner
        ended = become_owner(ctx, self._on_done) if own else None
        if ended is None:
            self._owned = None
            self.handle = ctx.done().add_callback(self._on_done)
        else:
            self._owned = ctx
            self.handle = None
            if ended:
                self._on_done()

    def _on_done(self) -> None:  # in whatever thread ended the context, maybe more than once
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:  # on the loop
        if self.armed and not self.fired:
            self.fired = True
            self._task.cancel()

    def release(self) -> None:
        """Remove the registration on the context, or the owner (any number of times): from
        here on, its end cannot reach this."""
        owned = self._owned
        if owned is None:
            self.handle.cancel()  # type: ignore[union-attr]  # registered when not owned
        else:
            owned._owner = None

    def disarm(self) -> None:
        self.armed = False
        if self.fired and _HAS_CANCELLING and self._task.cancelling() > self._baseline:
            self._task.uncancel()

    def owns(self, e: BaseException) -> bool:
        if not self.fired or not isinstance(e, asyncio.CancelledError):
            return False
        return not _HAS_CANCELLING or self._task.cancelling() == self._baseline + 1
