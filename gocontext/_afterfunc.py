"""A pool of daemon threads that runs ``after_func`` functions off the canceller's thread.

Threads start on demand, at most ``_MAX_THREADS`` at once, and exit after ``_IDLE_EXIT`` seconds
without work, so an idle process holds none. The bound is wide: Go runs each function in a
goroutine of its own, so a function here waits for a thread only while ``_MAX_THREADS`` others
are running (functions blocked in slow cleanup do not hold up another context's), and a storm
of ends still starts no more threads than that. Nothing waits in a thread per registration: a
function reaches the pool only once its context is done. Whatever a function raises (SystemExit
and KeyboardInterrupt included) is logged, and the thread goes on serving: the pool's books are
kept in ``finally`` clauses, so no exception can leave them counting a thread that is gone.

``submit()`` is a done callback, so it runs wherever a context ends: in a signal handler or a
finalizer too, which may have interrupted its own thread inside one of the blocks below that
hold ``_lock`` (the tree makes ``cancel()`` safe there). Such a call must neither wait for the
lock its own thread holds (it would wait for good) nor change the books half way through the
interrupted block. So the item goes into the queue (``SimpleQueue.put`` is safe anywhere), and
the decision to start a thread for it is left in ``_owed`` for the interrupted thread, which
takes it as it lets go of the lock; ``_lock`` is an ``RLock`` only so that a caller can tell
that its own thread holds it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["after_fork_in_child", "submit", "threads"]

_log = logging.getLogger("gocontext")

_MAX_THREADS = 64
_IDLE_EXIT = 5.0

# Guarded by _lock: _threads (live workers) and _idle (workers waiting in _queue.get()). A
# submit starts a thread when more items wait than idle workers can take, so an item never
# waits behind a slow one while the pool has room.
_lock = threading.RLock()  # (never taken twice: see the module docstring)
_queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_threads = 0
_idle = 0
# One entry per submit that found its own thread inside a block under _lock: the decisions
# that thread owes (it, or any thread, takes them once out of the lock; see _settle_owed).
_owed: list[None] = []


def submit(fn: Callable[[], object]) -> None:
    """Run ``fn()`` soon in a pool thread; whatever it raises is logged, never raised.

    Example:
        >>> import threading
        >>> ran = threading.Event()
        >>> submit(ran.set)
        >>> ran.wait(5)
        True
    """
    _queue.put(fn)  # (SimpleQueue.put may be called anywhere, a signal handler included)
    if _lock._is_owned():  # type: ignore[attr-defined]  # this thread, interrupted in a block
        _owed.append(None)  # the interrupted block's thread decides for it on its way out
        return
    _decide()
    _settle_owed()


def _decide() -> None:
    """Start a thread if more items wait than idle workers can take and the pool has room."""
    global _threads
    with _lock:
        start = _idle < _queue.qsize() and _threads < _MAX_THREADS
        if start:
            _threads += 1
    if start:
        try:
            threading.Thread(target=_work, name="gocontext-after-func", daemon=True).start()
        except BaseException:  # no thread after all (RuntimeError at shutdown, an interrupt)
            with _lock:
                _threads -= 1
            raise


def _settle_owed() -> None:
    """Take the decisions owed by submits that interrupted a block under ``_lock`` (called
    once out of the lock: a submit that lands after this look decides for itself)."""
    while _owed:
        try:
            _owed.pop()
        except IndexError:  # another thread took the last one
            return
        _decide()


def threads() -> int:
    """How many pool threads are alive (for tests)."""
    return _threads


def _work() -> None:
    global _threads
    counted = True
    try:
        while _serve_one():
            pass
        counted = False  # _serve_one counted us out, under the lock that submit() decides in
    finally:
        if counted:  # pragma: no cover - only a bug in the loop itself gets here
            with _lock:
                _threads -= 1


def _serve_one() -> bool:
    """Run one queued function; False once the thread has left the books (idle, queue empty)."""
    global _idle, _threads
    with _lock:
        _idle += 1
    try:
        fn = _queue.get(timeout=_IDLE_EXIT)
    except queue.Empty:
        with _lock:
            _idle -= 1
            gone = _queue.empty()
            if gone:
                _threads -= 1
        _settle_owed()
        return not gone
    with _lock:
        _idle -= 1
    _settle_owed()
    try:
        fn()
    except BaseException:  # SystemExit and the like too: the pool thread must survive it
        _log.exception("gocontext: after_func function raised")
    return True


def after_fork_in_child() -> None:
    """Forget the parent's pool in a forked child: its threads, and the functions queued in it.

    A function queued at the fork belongs to an end that happened in the parent, and the
    parent runs it: run in the child as well, its effects would happen twice (once more per
    child), and it could wait forever on a lock that a parent thread held at the fork. A
    context that ends in the child runs its functions in the child, in a pool started afresh.

    Called by the tree's at-fork hook, after the tree lock is renewed.
    """
    global _lock, _threads, _idle, _queue
    _lock = threading.RLock()
    _queue = queue.SimpleQueue()
    _owed.clear()
    _threads = 0
    _idle = 0
