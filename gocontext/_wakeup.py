"""The main thread's asyncio loop, woken by a signal wherever the system delivers it.

Python runs a signal handler in the main thread, between two bytecodes. An asyncio loop asleep
in its selector runs none: a signal that the system hands to another thread (a worker of
``to_thread``, say), or that lands in the main thread just before the selector blocks, leaves
the loop asleep and the handler waiting, Ctrl-C included (asyncio's runner cancels its main task
from that handler). asyncio wakes on signals only for its own ``add_signal_handler``; trio and
uvloop always do.

So while something of ours needs it (a wait for a thread of ours, a ``signal_context()``), the
loop running in the main thread watches the read end of a socket pair whose write end is the
interpreter's signal wake-up fd (``signal.set_wakeup_fd``): the C-level handler writes a byte
there from whichever thread it runs in, the loop wakes, and the handler runs. ``hold()`` and
``release()`` count the users; the last one gives the wake-up fd back. A wake-up fd set by
someone else (trio, uvloop, ``add_signal_handler``) already wakes the loop and is left alone.

Everything here runs in the main thread (the only one that may set the wake-up fd) and takes no
lock: the socket pair and its reader are made once per loop, so that a short wait pays two
``set_wakeup_fd`` calls and not a socket pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import weakref
from typing import final

__all__ = ["LoopWakeup", "hold", "release"]

_get_running_loop = asyncio._get_running_loop
_main_thread = threading.main_thread
_current_thread = threading.current_thread


@final
class LoopWakeup:
    """One asyncio loop's socket pair, its read end watched by the loop for good."""

    __slots__ = ("__weakref__", "_fd", "_holds", "_loop", "_read", "_write")

    def __init__(self, loop: asyncio.AbstractEventLoop, read: socket.socket, write: socket.socket):
        self._loop = loop
        self._read = read
        self._write = write
        self._fd = write.fileno()
        self._holds = 0

    def _drain(self) -> None:  # in the loop: the handler itself runs at the next bytecode
        with contextlib.suppress(OSError):
            while self._read.recv(4096):
                pass


_of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWakeup | None] = (
    weakref.WeakKeyDictionary()
)
_installed: LoopWakeup | None = None  # whose write end is the wake-up fd now, held at least once


def hold() -> LoopWakeup | None:
    """Make the asyncio loop running here wake on signals until ``release()``.

    None when there is nothing to give back: not in the main thread, no asyncio loop (trio
    wakes by itself), a wake-up fd set by someone else, no file descriptor left.
    """
    w = _installed
    if w is not None and w._loop is _get_running_loop() and _current_thread() is _main_thread():
        w._holds += 1
        return w
    if _current_thread() is not _main_thread():
        return None
    loop = _get_running_loop()
    if loop is None:
        return None
    return _install(loop)


def _install(loop: asyncio.AbstractEventLoop) -> LoopWakeup | None:
    global _installed
    try:
        w = _of_loop[loop]
    except KeyError:
        w = _make(loop)
        if w is None:
            return None
    except TypeError:  # a loop that takes no weak reference
        return None
    if w is None:  # a loop that cannot watch a socket
        return None
    theirs = signal.set_wakeup_fd(w._fd, warn_on_full_buffer=False)
    stale = _installed
    if theirs not in (-1, w._fd) and (stale is None or theirs != stale._fd):
        signal.set_wakeup_fd(theirs)  # someone else's wakes this loop already: it stays
        return None
    if stale is not None:  # held by a loop that stopped for good without letting go
        stale._holds = 0
    w._holds = 1
    _installed = w
    return w


def _make(loop: asyncio.AbstractEventLoop) -> LoopWakeup | None:
    # The pairs of loops closed since are closed now: a loop is collected only by the garbage
    # collector (its own cycles), and a test suite that makes a loop per test would otherwise
    # keep two descriptors for each until then.
    for old, w in list(_of_loop.items()):
        if w is not None and w is not _installed and old.is_closed():
            del _of_loop[old]
            _close(w._read, w._write)
    try:
        read, write = socket.socketpair()
    except OSError:  # no file descriptors left: signals act as they would without us
        return None
    try:
        read.setblocking(False)
        write.setblocking(False)
        w = LoopWakeup(loop, read, write)
        try:
            loop.add_reader(read.fileno(), w._drain)
        except NotImplementedError:  # pragma: no cover - a loop that cannot watch a socket
            _of_loop[loop] = None
            read.close()
            write.close()
            return None
        # The pair lives as long as the loop; a loop is never collected while _installed
        # holds it, so a write end that is the wake-up fd is never closed.
        weakref.finalize(loop, _close, read, write)
        _of_loop[loop] = w
    except BaseException:
        read.close()
        write.close()
        raise
    return w


def _close(read: socket.socket, write: socket.socket) -> None:
    fd = write.fileno()  # -1 once closed
    if fd != -1 and _current_thread() is _main_thread():  # (a hold cut short in _install)
        current = signal.set_wakeup_fd(-1)
        if current != fd:
            signal.set_wakeup_fd(current)
    read.close()
    write.close()


def release(w: LoopWakeup) -> None:
    """Let go of what ``hold()`` returned; the last one gives the wake-up fd back. From another
    thread (a collected coroutine), at the loop's next turn."""
    if _current_thread() is not _main_thread():
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing to give back there
            w._loop.call_soon_threadsafe(_release_in_main_thread, w)
        return
    _release_in_main_thread(w)


def _release_in_main_thread(w: LoopWakeup) -> None:
    global _installed
    if _current_thread() is not _main_thread() or w is not _installed:
        return  # (taken over since, see _install: nothing of its is set)
    w._holds -= 1
    if w._holds:
        return
    _installed = None
    current = signal.set_wakeup_fd(-1)
    if current not in (w._fd, -1):  # set since by someone else: theirs stays
        signal.set_wakeup_fd(current)


def _after_fork_in_child() -> None:
    """The child shares the parent's socket pairs: its signals must not wake the parent's loop."""
    global _installed
    w, _installed = _installed, None
    if w is not None:
        current = signal.set_wakeup_fd(-1)
        if current not in (w._fd, -1):
            signal.set_wakeup_fd(current)


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_after_fork_in_child)
