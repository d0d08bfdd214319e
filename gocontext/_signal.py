"""``signal_context()``: Go's ``signal.NotifyContext``, a context that a signal cancels.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds one of our locks (the cancel tree's, a timer's). It therefore takes none: it swaps
handlers back (``signal.signal`` takes no lock of ours) and hands the cancel to a relay thread
through a ``queue.SimpleQueue``, whose ``put()`` is safe in a signal handler. The relay thread
is started by ``signal_context()`` itself, never in a handler, and lives as long as the process.

A handler only runs once the main thread runs bytecode. A signal that the system hands to
another thread, or that lands just before the main thread blocks, leaves an asyncio loop asleep
in its selector. So inside a running asyncio loop ``signal_context()`` holds the loop's signal
wake-up (``_wakeup``) for as long as it lasts.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, final

from . import _wakeup
from ._context import (
    _BACKGROUND,
    CancelPair,
    Context,
    check_context,
    with_cancel_cause,
)

__all__ = ["SignalReceived", "signal_context"]

_log = logging.getLogger("gocontext")
_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalReceived(Exception):
    """The cause ``signal_context()`` records when a signal ends its context.

    ``signum`` is the signal, a ``signal.Signals``.

    Example:
        >>> import gocontext, signal
        >>> e = gocontext.SignalReceived(signal.SIGTERM)
        >>> e.signum, str(e)
        (<Signals.SIGTERM: 15>, 'received SIGTERM')
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum))

    @property
    def signum(self) -> signal.Signals:
        """The signal that arrived."""
        s: signal.Signals = self.args[0]
        return s

    def __str__(self) -> str:
        return f"received {self.signum.name}"

    def __repr__(self) -> str:
        return f"SignalReceived({self.signum.name})"


def signal_context(
    parent: Context | None = None,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
) -> CancelPair:
    """Return ``(ctx, stop)``: a child of *parent* (default ``background()``) that the first of
    *signals* cancels, with a ``SignalReceived`` cause. Go's ``signal.NotifyContext``.

    ``ctx`` also ends when ``stop()`` is called or *parent* ends. The first signal and
    ``stop()`` put the previous handlers back, and a signal that arrives once ``ctx`` has ended
    some other way goes to the previous handler (and puts it back): so a second Ctrl-C stops a
    stuck program the usual way. The pair is a context manager that calls ``stop()`` on exit.

    Call it from the main thread (a plain script, or inside ``asyncio.run()`` or ``trio.run()``,
    whose own handlers become the previous ones); elsewhere it raises RuntimeError. ``stop()``
    may be called from any thread; from another thread the handlers go back at the next signal.
    The cancel reaches ``ctx`` from a relay thread a moment after the handler runs: wait on
    ``ctx.done()``, as with any context. Called inside a running asyncio loop, it also makes a
    signal wake that loop wherever the system delivers it (a signal wake-up fd, given back by
    ``stop()``), as trio does by itself.

    Example:
        >>> import gocontext, os, signal
        >>> with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, stop):
        ...     os.kill(os.getpid(), signal.SIGUSR1)
        ...     ctx.done().wait(5), gocontext.cause(ctx)
        (True, SignalReceived(SIGUSR1))
        >>> signal.getsignal(signal.SIGUSR1)
        <Handlers.SIG_DFL: 0>
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "signal_context() must be called from the main thread, where Python runs signal "
            f"handlers; called from {threading.current_thread().name!r}"
        )
    if parent is None:
        parent = _BACKGROUND
    else:
        check_context(parent, "signal_context")
    sigs = _check_signals(signals)
    _start_relay()
    ctx, cancel = with_cancel_cause(parent)
    notifier = _Notifier(ctx, cancel, sigs)
    return CancelPair((ctx, notifier.stop))


def _check_signals(signals: object) -> tuple[signal.Signals, ...]:
    if isinstance(signals, (str, bytes, int)) or not isinstance(signals, Iterable):
        raise TypeError(f"signal_context() needs an iterable of signals, got {signals!r}")
    out: list[signal.Signals] = []
    for s in signals:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"signal_context() needs signal numbers, got {s!r}")
        try:
            sig = signal.Signals(s)
        except ValueError:
            raise ValueError(f"signal_context() got an unknown signal: {s!r}") from None
        if sig not in out:
            out.append(sig)
    if not out:
        raise ValueError("signal_context() needs at least one signal, got none")
    return tuple(out)


@final
class _Notifier:
    """The handler for one ``signal_context()`` and the handlers it replaced.

    ``_spent`` is False until the first signal or ``stop()``, then True for good; ``_previous``
    maps each signal to the handler it replaced (filled as they are installed, then fixed).
    Both are touched by the handler in the main thread and by ``stop()`` in any thread: a
    handler that finds ``_spent`` set only forwards, so the race costs at most a forwarded
    signal.
    """

    __slots__ = ("_cancel", "_ctx", "_previous", "_spent", "_waker")

    def __init__(
        self, ctx: Context, cancel: Callable[[BaseException | None], None], sigs: tuple[int, ...]
    ) -> None:
        self._ctx = ctx
        self._cancel = cancel
        self._spent = False
        self._previous: dict[int, _Handler] = {}
        self._waker: _wakeup.LoopWakeup | None = None
        try:
            for s in sigs:
                self._previous[s] = signal.signal(s, self._handle)
        except (OSError, ValueError) as e:  # SIGKILL, SIGSTOP: the system refuses them
            self._restore()
            cancel(None)
            raise ValueError(f"signal_context() cannot catch {signal.Signals(s).name}: {e}") from e
        try:
            self._waker = _wakeup.hold()
        except BaseException:  # an interrupt: leave nothing installed
            self._restore()
            cancel(None)
            raise

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Main thread, between two bytecodes: take no lock of ours (see the module docstring).
        if not self._spent and self._ctx.err() is None:
            self._spent = True
            self._restore()
            _relay.put(lambda: self._cancel(SignalReceived(signum)))
            return
        self._spent = True
        previous = self._previous.get(signum, signal.SIG_DFL)
        self._restore()
        _forward(previous, signum, frame)

    def stop(self) -> None:
        """Cancel ``ctx`` and put the previous handlers back (now in the main thread, else at
        the next signal)."""
        self._spent = True
        self._cancel(None)
        if threading.current_thread() is threading.main_thread():
            self._restore()
        waker, self._waker = self._waker, None
        if waker is not None:
            _wakeup.release(waker)

    def _restore(self) -> None:
        """Put back the previous handlers that ours still stands in for (main thread only).

        Idempotent, and ``_previous`` is kept: a second signal whose handler runs in the middle
        of the first one's still finds where to forward it.
        """
        for s, h in list(self._previous.items()):
            if signal.getsignal(s) == self._handle:  # someone else's handler stays
                signal.signal(s, signal.SIG_DFL if h is None else h)


def _forward(previous: _Handler, signum: int, frame: FrameType | None) -> None:
    """Do what *previous*, the handler before ours, would have done with the signal."""
    if previous is None or previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)  # the default action: usually the end of the process
    elif previous == signal.SIG_IGN:
        return
    elif callable(previous):
        previous(signum, frame)


# --------------------------------------------------------------------------------------------
# The relay thread: runs the cancels the handlers hand over

_relay: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
_relay_thread: threading.Thread | None = None
_relay_lock = threading.Lock()


def _start_relay() -> None:
    global _relay_thread
    with _relay_lock:
        if _relay_thread is None:
            _relay_thread = threading.Thread(
                target=_run_relay, args=(_relay,), name="gocontext-signal", daemon=True
            )
            _relay_thread.start()


def _run_relay(q: queue.SimpleQueue[Callable[[], object]]) -> None:
    while True:
        fn = q.get()
        try:
            fn()
        except BaseException:  # a done callback's; the relay must outlive it for the next one
            _log.exception("gocontext: a signal's cancel failed")
        del fn


def _after_fork_in_child() -> None:
    # The relay thread does not survive a fork; handlers do, so the child needs its own relay.
    global _relay, _relay_thread, _relay_lock
    running = _relay_thread is not None
    _relay = queue.SimpleQueue()
    _relay_thread = None
    _relay_lock = threading.Lock()
    if running:
        _start_relay()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
