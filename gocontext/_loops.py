"""The event-loop bridge: which library runs this task, and how to reach its loop from any thread.

One small object per library, picked by the running one (sniffio's order of looking): asyncio
(any loop, uvloop included, several loops in several threads) and trio, whose module is imported
on first use. A context ends in whatever thread cancels it; the loop learns of it through its
thread-safe entry (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), one wake-up per
batch of calls (``Mailbox``), never by running loop code in the canceller's thread.

Below ``Done`` (``await done`` runs ``wait_done`` here) and above nothing of the cancel tree:
this module knows event loops and the ``Done`` protocol (``is_set``, ``add_callback``), not
contexts. The fronts that make contexts (``scope``, ``sleep``, ``to_thread``, the HTTP transport)
ask their backend here for the loop's parts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from ._done import Done

_sniffio_thread: Any
try:  # trio marks the thread it runs in here (guest mode too); trio itself depends on it
    from sniffio import thread_local as _sniffio_thread
except ImportError:  # pragma: no cover - no sniffio means no trio either
    _sniffio_thread = None

__all__ = [
    "ASYNCIO",
    "HAS_CANCELLING",
    "TRIO",
    "AsyncioBackend",
    "Backend",
    "Mailbox",
    "backend",
    "backend_of",
    "broken_handle",
    "check_handle",
    "library",
    "mailbox",
    "unwatch_quietly",
    "wait_done",
]

_get_running_loop = asyncio._get_running_loop  # the quick check, as asyncio itself uses it
_current_task = asyncio.current_task
_INF = math.inf
_NO_LOOP = "gocontext: no asyncio event loop or trio run in this thread"
_log = logging.getLogger("gocontext")
HAS_CANCELLING: Final = sys.version_info >= (3, 11)  # Task.cancelling() and uncancel()


def backend() -> Backend:
    """The backend of the library running the current task; RuntimeError outside one."""
    name: str | None = None if _sniffio_thread is None else _sniffio_thread.name
    if name is None:
        if _get_running_loop() is not None:
            return ASYNCIO
        raise RuntimeError(_NO_LOOP)
    if name == "trio":
        return TRIO
    if name == "asyncio":
        return ASYNCIO
    raise RuntimeError(f"gocontext supports asyncio and trio, not {name}")


def backend_of(key: object) -> Backend:
    """The backend serving *key*, a loop identity from ``Backend.here()``."""
    return ASYNCIO if isinstance(key, asyncio.AbstractEventLoop) else TRIO


def library() -> str:
    """``"asyncio"`` or ``"trio"``: the library running the current task."""
    return backend().name


async def wait_done(done: Done) -> None:
    """Suspend the current task until *done* is set (what ``await done`` runs).

    The wake-up comes from whichever thread ends the context, through the loop's thread-safe
    entry. A framework cancellation of the waiting task raises as usual and unregisters the
    callback. Awaiting a *done* that is already set is still a checkpoint.

    Example:
        >>> import anyio, gocontext
        >>> from gocontext._loops import wait_done
        >>> async def main():
        ...     ctx, cancel = gocontext.with_cancel(gocontext.background())
        ...     cancel()
        ...     await wait_done(ctx.done())  # what `await ctx.done()` runs
        ...     return ctx.err()
        >>> anyio.run(main)
        Canceled('context canceled')
    """
    await backend().wait(done)


# --------------------------------------------------------------------------------------------
# Hand-offs to a loop from other threads


@final
class Mailbox:
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


def mailbox(key: object, post: Callable[[Callable[[], object]], object]) -> Mailbox:
    """The mailbox of the loop (or trio run) identified by *key*, running in this thread."""
    box: Mailbox | None = getattr(_mailboxes, "last", None)
    if box is None or box._key is not key:
        box = _mailboxes.last = Mailbox(key, post)
    return box


# --------------------------------------------------------------------------------------------
# asyncio


@final
class AsyncioBackend:
    """What the fronts need of asyncio (any loop, uvloop included): one shared instance."""

    __slots__ = ("_parts",)
    name = "asyncio"

    def __init__(self) -> None:
        # anyio's asyncio cancel scope class and its effective deadline, taken on first use:
        # anyio's detection of the library is skipped after that.
        self._parts: tuple[Callable[[], Any], Callable[[], float]] | None = None

    def here(self) -> object:
        """The running loop: the identity ``mailbox()`` and ``backend_of()`` take."""
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(_NO_LOOP)
        return loop

    def here_or_none(self) -> object:
        return _get_running_loop()

    def mailbox(self, loop: Any) -> Mailbox:
        """The mailbox of *loop*, from ``here()``."""
        box: Mailbox | None = getattr(_mailboxes, "last", None)
        if box is not None and box._key is loop:
            return box
        return mailbox(loop, loop.call_soon_threadsafe)

    def spawn_detached(
        self, loop: Any, fn: Callable[[], Coroutine[Any, Any, None]], context: Any
    ) -> object:
        """Run *fn* in a task of *loop* that belongs to no task group, in *context* (a
        ``contextvars.Context``, used once); return the task (hold it: asyncio's loop holds
        its tasks weakly)."""
        return context.run(loop.create_task, fn())  # (create_task(context=) is 3.11+)

    def cancel_scope(self) -> Any:
        """A new cancel scope (anyio's, so anyio's shields and task groups see it)."""
        return (self._parts or self._load())[0]()

    def effective_deadline(self) -> float:
        """The enclosing anyio deadline on the loop's clock (inf: none; -inf: cancelled)."""
        return (self._parts or self._load())[1]()

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def current_task(self, loop: Any) -> Any:
        """The task running in *loop*, from ``here()``."""
        return _current_task(loop)

    async def wait(self, done: Done) -> None:
        if done.is_set():
            await asyncio.sleep(0)
        else:
            await _asyncio_wait(done, None)

    async def sleep(self, done: Done, seconds: float) -> None:
        await _asyncio_wait(done, seconds)

    def _load(self) -> tuple[Callable[[], Any], Callable[[], float]]:
        try:  # public in recent anyio releases
            from anyio.lowlevel import get_async_backend  # type: ignore[attr-defined]  # 4.10+
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
    put = mailbox(loop, loop.call_soon_threadsafe).put

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
            raise broken_handle(done, handle, exc) from exc


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
class TrioBackend:
    """What the fronts need of trio (guest mode too): one shared instance."""

    __slots__ = ()
    name = "trio"

    def here(self) -> object:
        """The running trio run's token: the identity ``mailbox()`` and ``backend_of()`` take."""
        return _trio().lowlevel.current_trio_token()

    def here_or_none(self) -> object:
        try:
            return _trio().lowlevel.current_trio_token()
        except RuntimeError:  # not in a trio run any more
            return None

    def mailbox(self, token: Any) -> Mailbox:
        """The mailbox of the trio run of *token*, from ``here()``."""
        return mailbox(token, token.run_sync_soon)

    def spawn_detached(
        self, token: Any, fn: Callable[[], Coroutine[Any, Any, None]], context: Any
    ) -> object:
        """Run *fn* in a trio system task, in *context*; return the task."""
        return _trio().lowlevel.spawn_system_task(fn, context=context)

    def cancel_scope(self) -> Any:
        return _trio().CancelScope()

    def effective_deadline(self) -> float:
        return _trio().current_effective_deadline()  # type: ignore[no-any-return]  # trio untyped here

    def time(self) -> float:
        return _trio().current_time()  # type: ignore[no-any-return]  # trio untyped here

    def current_task(self, token: Any) -> Any:
        return None

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


async def _trio_wait(trio: Any, done: Done) -> None:
    """Wait until *done* is set; a trio cancellation unregisters the callback."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    put = mailbox(token, token.run_sync_soon).put
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
            raise broken_handle(done, handle, exc) from exc


# --------------------------------------------------------------------------------------------
# Handles from user-written Done signals


def check_handle(done: object, handle: object) -> None:
    """Raise the TypeError for a *handle* from ``done.add_callback()`` that has no cancel()."""
    try:
        ok = callable(getattr(handle, "cancel", None))
    except Exception:
        ok = False
    if not ok:  # the caller unregisters what it can
        raise broken_handle(done, handle, AttributeError("cancel"))


def unwatch_quietly(handle: object) -> None:
    """Unregister through *handle* while another error is on its way out: it stays the one."""
    try:
        handle.cancel()  # type: ignore[attr-defined]  # any object: a user-written Done's
    except Exception:
        _log.debug("gocontext: a callback handle failed to cancel", exc_info=True)


def broken_handle(done: object, handle: object, exc: Exception) -> Exception:
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


Backend = AsyncioBackend | TrioBackend
ASYNCIO: Final = AsyncioBackend()
TRIO: Final = TrioBackend()
