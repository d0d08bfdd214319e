"""Done: the signal a context gives when it ends, to threads, event loops and integrations.

``Done`` is an abstract class: a concrete signal supplies ``is_set()`` and ``add_callback()``,
and inherits ``wait()`` for threads and ``await`` for asyncio and trio tasks, both built on
``add_callback()``. Contexts of ours hand out a view of their cancel tree node; user-written
contexts may return any ``Done`` they like, including one of ours.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol

from ._errors import check_real
from ._loops import wait_done

__all__ = ["CallbackHandle", "Done", "handoffs"]

_allocate_lock = threading.Lock
_TIMEOUT_MAX = threading.TIMEOUT_MAX
_current_thread = threading.current_thread
_main_thread = threading.main_thread
_monotonic = time.monotonic
_SLICE = 0.05  # seconds the main thread blocks in wait() at a time (see _acquire_in_slices)

# The locks of woken waiters whose waker waits (sleeping, the GIL released) for them to run, so
# that it hands the interpreter to the thread it woke instead of running on through its time
# slice (see _tree._finish). Put in before the wake; the waiter takes its lock out once it runs.
handoffs: dict[object, None] = {}


class CallbackHandle(Protocol):
    """What ``Done.add_callback()`` returns: ``cancel()`` unregisters the callback."""

    def cancel(self) -> bool:
        """Remove the callback; True if it was removed before it ran."""
        ...


class Done(abc.ABC):
    """The done signal of a context: a thread-safe flag that is set once and never cleared.

    ``ctx.done()`` returns the same ``Done`` on every call. Use ``is_set()`` to poll,
    ``wait(timeout)`` to block a thread, ``await done`` in an asyncio or trio task, and
    ``add_callback(fn)`` to hook an integration onto it.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> done = ctx.done()
        >>> done.is_set(), done.wait(timeout=0)
        (False, False)
        >>> cancel()
        >>> done.is_set(), done.wait()
        (True, True)
    """

    __slots__ = ()

    @abc.abstractmethod
    def is_set(self) -> bool:
        """Return True once the context is done. Never blocks.

        Example:
            >>> import gocontext
            >>> gocontext.background().done().is_set()
            False
        """

    @abc.abstractmethod
    def add_callback(self, fn: Callable[[], object], /) -> CallbackHandle:
        """Run ``fn()`` once when the context is done; return a handle to unregister it.

        ``fn`` runs in the thread that completes the context, or right away in the caller's
        thread if it is already done. It must be quick and must not block: it is how
        integrations forward the signal (to an event loop, a lock, a remote peer). An exception
        from ``fn`` is logged, never raised into ``cancel()``'s caller. ``handle.cancel()``
        returns True if it removed ``fn`` before it ran.

        Example:
            >>> import gocontext
            >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
            >>> handle = ctx.done().add_callback(lambda: print("done"))
            >>> cancel()
            done
            >>> handle.cancel()
            False
        """

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling thread until done or until *timeout* seconds pass.

        Returns ``is_set()``. A zero or negative timeout polls; ``None`` waits as long as it
        takes. NaN raises ValueError.

        Example:
            >>> import gocontext
            >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.01)
            >>> ctx.done().wait(timeout=5)
            True
        """
        if self.is_set():
            return True
        if timeout is not None:
            timeout = _check_timeout(timeout)
            if timeout <= 0:
                return self.is_set()
        lock = _allocate_lock()
        lock.acquire()
        held: list[CallbackHandle] = []  # the registration's handle (see _add_waiter)
        try:
            self._add_waiter(lock, held)  # the only release: acquired means done
            if _current_thread() is _main_thread():
                woke = _acquire_in_slices(lock, timeout)
            elif timeout is None:
                woke = lock.acquire()
            else:
                woke = lock.acquire(timeout=min(timeout, _TIMEOUT_MAX))
        except BaseException:  # KeyboardInterrupt and the like: leave nothing registered
            for handle in held:
                handle.cancel()
            raise
        if not woke:
            held[0].cancel()
        handoffs.pop(lock, None)  # (a waker may be waiting for this thread to run: it runs)
        return True if woke else self.is_set()

    def _add_waiter(self, lock: Any, held: list[CallbackHandle]) -> None:
        """Register *lock* (held) to be released once done, and put the handle in *held*:
        how ``wait()`` blocks a thread.

        Signals of ours override this to wake waiting threads before any callback runs, so
        a callback that raises (or an interrupt among the callbacks) cannot strand a waiter,
        and to put the handle in *held* before registering, so an interrupt landing as the
        registration returns (Python 3.10 checks for signals there) still finds it.
        """
        held.append(self.add_callback(lock.release))

    def __await__(self) -> Generator[Any, None, None]:
        """Suspend the current asyncio or trio task until done.

        A framework cancellation of the waiting task works as usual and leaves nothing
        registered.
        """
        return wait_done(self).__await__()


def _acquire_in_slices(lock: Any, timeout: float | None) -> bool:
    """``lock.acquire(timeout=timeout)`` for the main thread, in slices of ``_SLICE`` seconds.

    CPython runs a signal's handler (Ctrl-C's KeyboardInterrupt) in the main thread only, and
    only between bytecodes: a signal that arrives just before a blocking acquire starts is
    left pending until the acquire returns, which may be never. Between two slices the
    handler runs, and its exception leaves here.
    """
    if timeout is None:
        while not lock.acquire(timeout=_SLICE):
            pass
        return True
    end = _monotonic() + timeout
    while True:
        left = end - _monotonic()
        if left <= 0:
            return bool(lock.acquire(blocking=False))
        if lock.acquire(timeout=min(left, _SLICE)):
            return True


def _check_timeout(timeout: float) -> float:
    return check_real(timeout, "wait", "timeout", "a number of seconds or None")
