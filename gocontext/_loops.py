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
import types
import weakref
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from ._done import Done

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup

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
    "NativeCancelScope",
    "StepScope",
    "backend",
    "backend_of",
    "broken_handle",
    "check_handle",
    "library",
    "mailbox",
    "unwatch_quietly",
    "wait_done",
]

_weakref: Final = weakref.ref
_get_running_loop = asyncio._get_running_loop  # the quick check, as asyncio itself uses it
# asyncio.current_task(loop), without its Python frame where it has one (3.10, 3.11: the same
# lookup in asyncio's own table); from 3.12 it is written in C.
_current_task: Callable[[asyncio.AbstractEventLoop], Any] = (
    asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]  # asyncio's private table
    if isinstance(asyncio.current_task, types.FunctionType)
    and isinstance(getattr(asyncio.tasks, "_current_tasks", None), dict)
    else asyncio.current_task
)
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


def backend_here() -> tuple[Backend, object]:
    """``backend()`` and its ``here()``, with one look at the running loop (on Python 3.10 and
    3.11 each look is a system call: asyncio checks the process id)."""
    name: str | None = None if _sniffio_thread is None else _sniffio_thread.name
    if name is None or name == "asyncio":
        loop = _get_running_loop()
        if loop is not None:
            return ASYNCIO, loop
        if name is None:
            raise RuntimeError(_NO_LOOP)
    loops = backend()
    return loops, loops.here()


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

    __slots__ = ("_key", "_lock", "_pending", "_post", "_posted")

    def __init__(self, key: object, post: Callable[[Callable[[], object]], object]) -> None:
        self._key = key  # the loop or trio token it serves
        self._post = post  # the loop's thread-safe entry
        self._lock = threading.Lock()  # (one per loop: a mutex() is a class of its own)
        # Guarded by _lock: calls not run yet; _drain takes the list whole.
        self._pending: list[Callable[[], object]] = []
        # Guarded by _lock: True from the put() that posts a _drain until a drain takes the
        # calls; while it is True a drain is on its way and takes every call put meanwhile. A
        # post that fails sets it back, so the next put() posts. (A drain that finds nothing
        # to take, one posted twice, costs a wake-up, no more.)
        self._posted = False

    def put(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` soon in the loop; callable from any thread, never blocks for long.

        An interrupt (a Ctrl-C) landing in the loop's entry goes out of here after one more
        try at posting; if that fails too, the call goes with the next put() to this loop.
        """
        posting = False
        try:
            with self._lock:
                self._pending.append(fn)
                if self._posted:  # a drain is on its way and will take this one too
                    return
                self._posted = posting = True  # (two stores: no signal between them)
            self._post(self._drain)
        except BaseException as e:
            if not posting:
                raise
            self._post_failed(e)

    def _post_failed(self, error: BaseException) -> None:
        """The post of a drain raised *error*; raise it, unless the loop is gone.

        A RuntimeError is a closed loop or a finished trio run: nobody is left to run the
        calls, and they are dropped. Anything else (a KeyboardInterrupt, a SystemExit) may
        have landed before or after the drain was scheduled: the mailbox is first set back
        so that the next put() posts, then the post is tried once more (a drain that finds
        nothing costs a wake-up, no more), so the interrupted call gets through too.
        """
        with self._lock:
            self._posted = False
            if isinstance(error, RuntimeError):
                self._pending = []
                return
        try:
            self._post(self._drain)
        except RuntimeError:
            with self._lock:
                self._pending = []
        except BaseException as again:
            _log.error("gocontext: a hand-off to the event loop failed", exc_info=again)
        raise error

    def _drain(self) -> None:
        """Run the calls put so far. A Ctrl-C landing in one of them (or between two) goes
        out of here once the rest have run: each is a wake-up that a task is waiting for."""
        interrupt: BaseException | None = None
        batch: list[Callable[[], object]] | None = None
        i = 0  # the next call to run: kept across an interrupt, so none is run twice
        while True:
            try:
                if batch is None:  # (taken in here: an interrupt as the lock is let go keeps it)
                    with self._lock:
                        batch, self._pending = self._pending, []
                        self._posted = False
                while i < len(batch):
                    fn = batch[i]
                    i += 1
                    try:
                        fn()
                    except Exception:  # pragma: no cover - our calls do not raise
                        _log.exception("gocontext: a call handed to the event loop failed")
                break
            except BaseException as e:
                if interrupt is None:
                    interrupt = e
                else:  # pragma: no cover - a second Ctrl-C within one batch
                    _log.error("gocontext: an interrupt while handing calls over", exc_info=e)
        if interrupt is not None:
            try:
                raise interrupt
            finally:
                interrupt = None


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
        # (the effective deadline is None with a NativeCancelScope, which reads its own)
        self._parts: tuple[Callable[..., Any], Callable[[], float] | None] | None = None

    def here(self) -> object:
        """The running loop: the identity ``mailbox()`` and ``backend_of()`` take."""
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(_NO_LOOP)
        return loop

    # The running loop or None: asyncio's own C function, no frame of ours.
    here_or_none: Callable[[], object] = staticmethod(_get_running_loop)

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

    def cancel_scope_type(self) -> Callable[[], Any]:
        """The cancel scope type: called in a task, a new cancel scope for it (see
        ``scope_parts``)."""
        return (self._parts or self._load())[0]

    def step_scope(self, loop: Any) -> StepScope | None:
        """One cancel scope that a request's steps in *loop* enter in turn (a ``StepScope``),
        or None where ``cancel_scope_type()`` is not a ``NativeCancelScope``: then each step
        makes its own."""
        return StepScope(loop) if (self._parts or self._load())[1] is None else None

    def scope_parts(self, loop: Any = None) -> tuple[Any, float]:
        """A new cancel scope for the current task (a ``NativeCancelScope`` where anyio's task
        state can be read, on Python 3.11+; else anyio's own), and the enclosing anyio deadline
        on the loop's clock (inf: none; -inf: an enclosing scope was cancelled). *loop*: the
        running loop, if the caller has it."""
        new, deadline = self._parts or self._load()
        if deadline is None:  # a NativeCancelScope
            cs = new(loop)
            return cs, cs.enclosing_deadline
        return new(), deadline()

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

    def _load(self) -> tuple[Callable[..., Any], Callable[[], float] | None]:
        global _task_states
        states = _anyio_task_states()
        if states is not None:
            _task_states = states
            self._parts = NativeCancelScope, None
            return self._parts
        try:  # pragma: no cover - Python 3.10, or an anyio whose task state looks otherwise
            from anyio.lowlevel import get_async_backend  # type: ignore[attr-defined]  # 4.10+
        except ImportError:  # pragma: no cover - anyio releases that keep it private
            from anyio._core._eventloop import get_async_backend
        backend = get_async_backend("asyncio")
        self._parts = type(backend.create_cancel_scope()), backend.current_effective_deadline
        return self._parts


# The dict under anyio's task → TaskState WeakKeyDictionary (weak reference → state), once a
# NativeCancelScope is in use: read directly, it costs no Python call, and nothing at all while
# no task has anyio state (a plain asyncio program, a request no anyio scope encloses).
_task_states: dict[Any, Any] = {}
_SCOPE_FIELDS: Final = frozenset({"_parent_scope", "_shield", "_deadline", "_cancel_called"})


def _anyio_task_states() -> Any:
    """anyio's asyncio task states, if they can be read as ``NativeCancelScope`` reads them
    (and Python has ``Task.uncancel()``); else None, and anyio's own cancel scope is used."""
    if not HAS_CANCELLING:
        return None
    try:
        from anyio._backends import _asyncio as anyio_asyncio
    except ImportError:  # pragma: no cover - anyio is a dependency
        return None
    states = getattr(anyio_asyncio, "_task_states", None)
    slots = getattr(getattr(anyio_asyncio, "TaskState", None), "__slots__", ())
    scope_slots = getattr(getattr(anyio_asyncio, "CancelScope", None), "__slots__", ())
    task_ok = hasattr(asyncio.Task, "_fut_waiter") and hasattr(asyncio.Task, "_must_cancel")
    if (
        not isinstance(states, weakref.WeakKeyDictionary)
        or not isinstance(getattr(states, "data", None), dict)
        or "cancel_scope" not in slots
        or not set(scope_slots) >= _SCOPE_FIELDS
        or not task_ok
    ):
        return None  # pragma: no cover - an anyio release that keeps its state otherwise
    return states.data  # type: ignore[attr-defined]  # (checked above: a dict)


_NATIVE_CANCEL: Final = "gocontext: the scope's context ended"


class NativeCancelScope:
    """A cancel scope of one asyncio task made of ``Task.cancel()`` and ``uncancel()``, as
    ``asyncio.timeout()`` is (Python 3.11+), with anyio's rules: a cancel is delivered at the
    task's next checkpoint and again at every later one until the scope is left (so unshielded
    cleanup is interrupted too), never inside an anyio shield entered within the scope (the
    first checkpoint after the shield gets it), and ``__exit__`` swallows only its own
    cancellation: one that another party requested as well (a ``task.cancel()``, an enclosing
    scope) goes on. anyio's scopes inside and around it see a native cancellation, which they
    pass on, as they do ``asyncio.timeout()``'s.

    It is what ``scope()`` runs on asyncio: anyio's own cancel scope costs three times as much
    to enter and leave. ``cancel()`` is called in the loop's thread.
    """

    __slots__ = (
        "_active",
        "_at_enter",
        "_called",
        "_loop",
        "_outer",
        "_sent",
        "_task",
        "enclosing_deadline",
    )
    _task: Any  # (3.11+: cancelling() and uncancel(), unknown to 3.10's stubs)
    _loop: asyncio.AbstractEventLoop

    def __init__(self, loop: Any = None) -> None:
        """Made in the task it serves (*loop*: its running loop, if the caller has it);
        learns the anyio scopes around it."""
        if loop is None:
            loop = _get_running_loop()
        task = None if loop is None else _current_task(loop)
        if loop is None or task is None:
            raise RuntimeError("gocontext: a cancel scope needs an asyncio task")
        self._active = self._called = False
        self._task = task
        self._loop = loop
        # (WeakKeyDictionary.get, without its call)
        state = _task_states.get(_weakref(task)) if _task_states else None
        cs = self._outer = None if state is None else state.cancel_scope  # the anyio scope around
        # anyio's current_effective_deadline(), read on the way.
        deadline = _INF
        while cs is not None:
            if cs._cancel_called:
                deadline = -_INF
                break
            if cs._deadline < deadline:
                deadline = cs._deadline
            if cs._shield:
                break
            cs = cs._parent_scope
        self.enclosing_deadline = deadline

    def __enter__(self) -> NativeCancelScope:
        if self._active:
            raise RuntimeError("a NativeCancelScope is entered once")
        self._at_enter = self._task.cancelling()
        self._sent = 0  # the cancels requested of the task, each taken back on leaving
        self._active = True
        if self._called:  # at the first checkpoint
            self._loop.call_soon(self._deliver)
        return self

    def cancel(self) -> None:
        if self._called:
            return
        self._called = True
        if self._active:
            if _current_task(self._loop) is self._task:  # at the task's next checkpoint
                self._loop.call_soon(self._deliver)
            else:
                self._deliver()

    def _shielded(self) -> bool:
        """Whether the task is in an anyio shield entered inside this scope."""
        state = _task_states.get(_weakref(self._task)) if _task_states else None
        cs = None if state is None else state.cancel_scope
        outer = self._outer
        while cs is not None and cs is not outer:
            if cs._shield:
                return True
            cs = cs._parent_scope
        return False

    def _deliver(self, _: object = None) -> None:
        # In the loop's thread, between the task's steps; again at each loop iteration until
        # the scope is left, as anyio does.
        if not self._active:
            return
        task = self._task
        if task.done():  # pragma: no cover - a task ends only after leaving its scopes
            return
        if self._shielded():  # look again once the task has taken its next step
            waiter = task._fut_waiter
            if waiter is not None and not waiter.done():
                waiter.add_done_callback(self._deliver)
            else:
                self._loop.call_soon(self._deliver)
            return
        if not task._must_cancel:
            waiter = task._fut_waiter
            if waiter is None or not waiter.done():
                task.cancel(_NATIVE_CANCEL)
                self._sent += 1
        self._loop.call_soon(self._deliver)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        """True when *e* is this scope's cancellation (swallowed); a group holding it and
        more is raised again without it."""
        self._active = False
        sent = self._sent
        if not sent:
            return False
        task = self._task
        for _ in range(sent):
            task.uncancel()
        if e is None or task.cancelling() > self._at_enter:
            return False  # someone else wants the task cancelled too: theirs goes on
        if isinstance(e, asyncio.CancelledError):
            return True
        if not isinstance(e, BaseExceptionGroup):
            return False
        cancelled, rest = e.split(asyncio.CancelledError)
        if cancelled is None:
            return False
        if rest is None:
            return True
        context = rest.__context__
        try:
            raise rest  # (a __cause__ and __suppress_context__ of its own stay)
        finally:
            rest.__context__ = context
            del context, rest


@final
class StepScope(NativeCancelScope):
    """A ``NativeCancelScope`` that the steps of one request (sending it, then each read of
    its body) enter in turn, one at a time, each in the task that runs it: made once per
    request, where a scope per step cost an object and a walk of anyio's scopes for a deadline
    that a step does not need. Once cancelled it stays cancelled: every later step is cancelled
    at its first checkpoint.

    Example:
        >>> import asyncio
        >>> from gocontext._loops import ASYNCIO
        >>> async def steps() -> str:
        ...     cs = ASYNCIO.step_scope(asyncio.get_running_loop())
        ...     if cs is None:  # Python 3.10: no native scope (each step makes anyio's)
        ...         return "both steps left"
        ...     with cs:
        ...         await asyncio.sleep(0)  # a step that finishes
        ...     with cs:
        ...         cs.cancel()
        ...         await asyncio.sleep(60)  # cancelled here: the scope takes its own cancel
        ...     return "both steps left"
        >>> asyncio.run(steps())
        'both steps left'
    """

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:  # (not NativeCancelScope's)
        self._loop = loop
        self._active = self._called = False
        self._task = self._outer = None

    def __enter__(self) -> StepScope:
        if self._active:
            raise RuntimeError("a StepScope serves one step at a time")
        task = _current_task(self._loop)
        if task is None:
            raise RuntimeError("gocontext: a cancel scope needs an asyncio task")
        self._task = task
        # (WeakKeyDictionary.get, without its call)
        state = _task_states.get(_weakref(task)) if _task_states else None
        self._outer = None if state is None else state.cancel_scope  # the anyio scope around
        NativeCancelScope.__enter__(self)  # the rest, for this step's task
        return self


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

    def cancel_scope_type(self) -> Callable[[], Any]:
        return _trio().CancelScope  # type: ignore[no-any-return]  # trio is imported lazily (Any)

    def step_scope(self, token: Any) -> None:
        """None: a trio cancel scope is entered once, so each step makes its own."""

    def scope_parts(self, token: Any = None) -> tuple[Any, float]:
        trio = _trio()
        return trio.CancelScope(), trio.current_effective_deadline()

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
