"""``signal_context()``: Go's ``signal.NotifyContext``, a context that a signal cancels.

One dispatcher per signal number, installed by the first ``signal_context()`` for it, hands
each signal to every context waiting for it, and puts the handler it replaced back when the
last of them leaves, in whatever order they leave. The registry (``_dispatchers``, each one's
subscribers) is changed only in the main thread, the only one that may install a handler:
``stop()`` from another thread only marks its context, and the main thread drops it at the
next signal, ``signal_context()`` or ``stop()``.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds one of our locks (the cancel tree's, a timer's), or while it changes the registry.
It therefore takes no lock: it swaps handlers back (``signal.signal`` takes no lock of ours),
hands the cancels to a relay thread through a ``queue.SimpleQueue``, whose ``put()`` is safe in
a signal handler, and, if it finds the registry being changed (``_busy``), leaves the signal
in ``_pending`` for the code it interrupted to deliver once done. The relay thread is started
by ``signal_context()`` itself, never in a handler, and lives as long as the process.

A handler only runs once the main thread runs bytecode. A signal that the system hands to
another thread, or that lands just before the main thread blocks, leaves an asyncio loop asleep
in its selector. So inside a running asyncio loop ``signal_context()`` holds the loop's signal
wake-up (``_wakeup``) for as long as it lasts.

A forked child keeps the handlers and the registry, so its own signals cancel its copies of
the contexts; it gets a relay thread of its own, and drops the signals pending in the parent.
"""

from __future__ import annotations

import logging
import operator
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
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
from ._errors import describe

__all__ = ["SignalReceived", "signal_context"]

_log = logging.getLogger("gocontext")
_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalReceived(Exception):
    """The cause ``signal_context()`` records when a signal ends its context.

    ``signum`` is the signal, a ``signal.Signals`` (the plain number for a signal that has no
    name there, a real-time one such as ``signal.SIGRTMIN + 1``).

    Example:
        >>> import gocontext, signal
        >>> e = gocontext.SignalReceived(signal.SIGTERM)
        >>> e.signum, str(e)
        (<Signals.SIGTERM: 15>, 'received SIGTERM')
        >>> gocontext.SignalReceived(signal.SIGRTMIN + 1)
        SignalReceived(SIGRTMIN+1)
    """

    def __init__(self, signum: int) -> None:
        super().__init__(_as_signal(signum))

    @property
    def signum(self) -> signal.Signals:
        """The signal that arrived."""
        s: signal.Signals = self.args[0]
        return s

    def __str__(self) -> str:
        return f"received {_name(self.signum)}"

    def __repr__(self) -> str:
        return f"SignalReceived({_name(self.signum)})"


def _as_signal(signum: int) -> signal.Signals:
    """*signum* as a ``signal.Signals`` if it has a name there, else as it is."""
    try:
        return signal.Signals(signum)
    except ValueError:
        return signum  # type: ignore[return-value]  # (as signal.valid_signals() does)


def _name(signum: int) -> str:
    if isinstance(signum, signal.Signals):
        return signum.name
    rtmin: int | None = getattr(signal, "SIGRTMIN", None)
    if rtmin is not None and rtmin < signum <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - rtmin}"
    return f"signal {signum}"


def signal_context(
    parent: Context | None = None,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
) -> CancelPair:
    """Return ``(ctx, stop)``: a child of *parent* (default ``background()``) that the first of
    *signals* cancels, with a ``SignalReceived`` cause. Go's ``signal.NotifyContext``.

    ``ctx`` also ends when ``stop()`` is called or *parent* ends. A signal reaches every
    ``signal_context()`` waiting for it: nested ones for the same signal all end with the
    same cause. The handler in place before the first of them is put back when the last of
    them is done with it, whatever the order: once one signal has ended them all, or all have
    stopped. A signal that arrives once every such ``ctx`` has ended some other way goes to
    that handler (and puts it back). So the second Ctrl-C stops a stuck program the usual way,
    however many contexts the first one ended. If some other handler was installed over ours
    meanwhile, it stays: ours is not put back over it, and, should it call ours, the signal
    goes on to the handler ours replaced. The pair is a context manager that calls ``stop()``
    on exit.

    *signals* are numbers from ``signal.valid_signals()``, real-time ones included; others
    raise ValueError, as do signals the system does not let a program catch (SIGKILL).

    Call it from the main thread (a plain script, or inside ``asyncio.run()`` or ``trio.run()``,
    whose own handlers become the previous ones); elsewhere it raises RuntimeError. ``stop()``
    may be called from any thread; from another thread the handler goes back at the next
    signal, or at the next ``signal_context()`` or ``stop()`` in the main thread. The cancel
    reaches ``ctx`` from a relay thread a moment after the handler runs: wait on
    ``ctx.done()``, as with any context. Called inside a running asyncio loop, it also makes a
    signal wake that loop wherever the system delivers it (a signal wake-up fd, given back by
    ``stop()``), as trio does by itself.

    Example:
        >>> import gocontext, os, signal
        >>> with gocontext.signal_context(signals=[signal.SIGUSR1]) as (outer, _):
        ...     with gocontext.signal_context(signals=[signal.SIGUSR1]) as (inner, _):
        ...         os.kill(os.getpid(), signal.SIGUSR1)
        ...         inner.done().wait(5), outer.done().wait(5), gocontext.cause(outer)
        (True, True, SignalReceived(SIGUSR1))
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
    notifier = _Notifier(ctx, cancel)
    notifier.subscribe(sigs)
    return CancelPair((ctx, notifier.stop))


def _check_signals(signals: object) -> tuple[int, ...]:
    if isinstance(signals, (str, bytes, int)) or not isinstance(signals, Iterable):
        raise TypeError(f"signal_context() needs an iterable of signals, got {signals!r}")
    valid = signal.valid_signals()
    out: list[int] = []
    for s in signals:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"signal_context() needs signal numbers, got {describe(s)}")
        s = operator.index(s)  # by its value: a plain int (an int subclass's hooks not called)
        if s not in valid:
            shown = describe(s) if s.bit_length() > 64 else repr(s)  # (a huge int: no repr)
            raise ValueError(f"signal_context() got an unknown signal: {shown}")
        sig = _as_signal(s)
        if sig not in out:
            out.append(sig)
    if not out:
        raise ValueError("signal_context() needs at least one signal, got none")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The registry: one dispatcher per signal, and the contexts waiting for it (main thread only)

_dispatchers: dict[int, _Dispatcher] = {}  # the one a new context for the signal joins
_busy = False  # the main thread is changing the registry: a handler leaves its signal pending
_pending: list[tuple[_Dispatcher, int, FrameType | None]] = []


@contextmanager
def _changing() -> Iterator[None]:
    """Change the registry (main thread); then deliver the signals that arrived meanwhile."""
    global _busy
    try:
        _busy = True
        yield
    finally:
        _busy = False
        _deliver_pending()


def _deliver_pending() -> None:
    while _pending and not _busy:
        d, signum, frame = _pending.pop(0)
        d.handler(signum, frame)


def _tidy() -> None:
    """Drop the contexts stopped from other threads; put back handlers no one waits on now."""
    for d in list(_dispatchers.values()):
        d.prune()


@final
class _Dispatcher:
    """The handler installed for one signal, what it replaced, and who waits for the signal.

    ``handler`` is the very object installed (a bound method made once), so that whether ours
    is still in place is ``signal.getsignal(signum) is handler``.
    """

    __slots__ = ("handler", "previous", "signum", "subscribers")

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.subscribers: list[_Notifier] = []
        self.handler = self._on_signal
        self.previous: _Handler = signal.signal(signum, self.handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Main thread, between two bytecodes: take no lock of ours (see the module docstring).
        global _busy
        if _busy:
            _pending.append((self, signum, frame))
            return
        taken = False
        try:
            _busy = True
            subscribers, self.subscribers = self.subscribers, []
            for n in subscribers:
                if n.spent:
                    continue
                n.spent = True
                if n.ctx.err() is None:
                    taken = True
                    _relay.put(partial(n.cancel, SignalReceived(signum)))
                for d in n.dispatchers:
                    if d is not self:
                        d.prune()
            self.retire()
            _tidy()
        finally:
            _busy = False
        try:
            if not taken:
                _forward(self.previous, signum, frame)
        finally:
            _deliver_pending()

    def prune(self) -> None:
        """Drop the contexts done with the signal; put the handler back if none is left."""
        self.subscribers = [n for n in self.subscribers if not n.spent]
        if not self.subscribers:
            self.retire()

    def retire(self) -> None:
        """Leave the registry, and put back the handler replaced, unless someone else's has
        replaced ours since."""
        if _dispatchers.get(self.signum) is self:
            del _dispatchers[self.signum]
        if signal.getsignal(self.signum) is self.handler:
            signal.signal(self.signum, signal.SIG_DFL if self.previous is None else self.previous)


@final
class _Notifier:
    """One ``signal_context()``: its context, and the dispatchers it waits on.

    ``spent`` is False until a signal or ``stop()``, then True for good; ``stop()`` sets it in
    any thread, everything else here runs in the main thread.
    """

    __slots__ = ("cancel", "ctx", "dispatchers", "spent", "waker")

    def __init__(self, ctx: Context, cancel: Callable[[BaseException | None], None]) -> None:
        self.ctx = ctx
        self.cancel = cancel
        self.spent = False
        self.dispatchers: list[_Dispatcher] = []
        self.waker: _wakeup.LoopWakeup | None = None

    def subscribe(self, sigs: tuple[int, ...]) -> None:
        """Wait for *sigs*: join each one's dispatcher, or install one."""
        try:
            with _changing():
                _tidy()
                for s in sigs:
                    d = _dispatchers.get(s)
                    if d is None or signal.getsignal(s) is not d.handler:
                        try:  # none yet, or someone else's handler is over it: one over that
                            d = _Dispatcher(s)
                        except (OSError, ValueError) as e:  # SIGKILL, SIGSTOP: refused
                            raise ValueError(
                                f"signal_context() cannot catch {_name(s)}: {e}"
                            ) from e
                        _dispatchers[s] = d
                    d.subscribers.append(self)
                    self.dispatchers.append(d)
            self.waker = _wakeup.hold()
        except BaseException:  # an interrupt too: leave nothing installed
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel ``ctx`` and put the previous handlers back (now in the main thread, else at
        the next signal)."""
        self.spent = True
        self.cancel(None)
        if threading.current_thread() is threading.main_thread():
            with _changing():
                for d in self.dispatchers:
                    d.prune()
                _tidy()
        waker, self.waker = self.waker, None
        if waker is not None:
            _wakeup.release(waker)


def _forward(previous: _Handler, signum: int, frame: FrameType | None) -> None:
    """Do what *previous*, the handler before ours, would have done with the signal."""
    if previous is None or previous == signal.SIG_DFL:
        current = signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)  # the default action: usually the end of the process
        if current is not None:  # (an action that goes on: what was there stays)
            signal.signal(signum, current)
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
    # A fork taken by another thread while the main thread changed the registry leaves the
    # child's registry part changed: _busy goes down, or its handlers would defer for good.
    global _busy, _relay, _relay_thread, _relay_lock
    _busy = False
    _pending.clear()
    running = _relay_thread is not None
    _relay = queue.SimpleQueue()
    _relay_thread = None
    _relay_lock = threading.Lock()
    if running:
        _start_relay()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
