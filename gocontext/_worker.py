"""A small pool of daemon threads that runs ``after_func`` functions off the canceller's thread.

Threads start on demand, at most ``MAX_THREADS`` at once, and exit after ``IDLE_EXIT`` seconds
without work, so an idle process holds none. Nothing waits in a thread per registration: a
function reaches the pool only once its context is done.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["submit"]

_log = logging.getLogger("gocontext")

MAX_THREADS = 8
IDLE_EXIT = 5.0

# Guarded by _lock: _threads (live workers) and _idle (workers waiting in _queue.get()). A
# submit starts a thread when more items wait than idle workers can take, so an item never
# waits behind a slow one while the pool has room.
_lock = threading.Lock()
_queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_threads = 0
_idle = 0


def submit(fn: Callable[[], object]) -> None:
    """Run ``fn()`` soon in a pool thread; an exception from it is logged, never raised."""
    global _threads
    with _lock:
        _queue.put(fn)
        start = _idle < _queue.qsize() and _threads < MAX_THREADS
        if start:
            _threads += 1
    if start:
        threading.Thread(target=_work, name="gocontext-after-func", daemon=True).start()


def threads() -> int:
    """How many pool threads are alive (for tests)."""
    return _threads


def _work() -> None:
    global _threads, _idle
    while True:
        with _lock:
            _idle += 1
        try:
            fn = _queue.get(timeout=IDLE_EXIT)
        except queue.Empty:
            with _lock:
                _idle -= 1
                if _queue.empty():
                    _threads -= 1
                    return
            continue
        with _lock:
            _idle -= 1
        try:
            fn()
        except Exception:
            _log.exception("gocontext: after_func function raised")
        del fn


def _after_fork_in_child() -> None:
    # Pool threads do not survive a fork: forget them and start afresh for queued work.
    global _lock, _threads, _idle, _queue
    _lock = threading.Lock()
    pending: list[Callable[[], object]] = []
    while True:
        try:
            pending.append(_queue.get_nowait())
        except queue.Empty:
            break
    _queue = queue.SimpleQueue()
    _threads = 0
    _idle = 0
    for fn in pending:
        submit(fn)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
