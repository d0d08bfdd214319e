"""A pool of daemon threads that runs ``after_func`` functions off the canceller's thread.

Threads start on demand, at most ``_MAX_THREADS`` at once, and exit after ``_IDLE_EXIT`` seconds
without work, so an idle process holds none. The bound is wide: Go runs each function in a
goroutine of its own, so a function here waits for a thread only while ``_MAX_THREADS`` others
are running (functions blocked in slow cleanup do not hold up another context's), and a storm
of ends still starts no more threads than that. Nothing waits in a thread per registration: a
function reaches the pool only once its context is done. Whatever a function raises (SystemExit
and KeyboardInterrupt included) is logged, and the thread goes on serving: the pool's books are
kept in ``finally`` clauses, so no exception can leave them counting a thread that is gone.
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
_lock = threading.Lock()
_queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_threads = 0
_idle = 0


def submit(fn: Callable[[], object]) -> None:
    """Run ``fn()`` soon in a pool thread; whatever it raises is logged, never raised.

    Example:
        >>> import threading
        >>> ran = threading.Event()
        >>> submit(ran.set)
        >>> ran.wait(5)
        True
    """
    global _threads
    with _lock:
        _queue.put(fn)
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
            if _queue.empty():
                _threads -= 1
                return False
            return True
    with _lock:
        _idle -= 1
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
    _lock = threading.Lock()
    _queue = queue.SimpleQueue()
    _threads = 0
    _idle = 0
