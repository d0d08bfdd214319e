"""Review of the core utilities: the after_func pool, to_thread, ContextExecutor, signal
contexts, the mutex and Done.wait, at the edges (code that interrupts the library in its own
thread, hostile input, callables that hand back coroutines, pools that cannot take work)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import gocontext
from gocontext import _context

from .conftest import NEVER, OtherContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# after_func: a signal handler that cancels while its thread is inside the pool's books

AFTER_FUNC_SCENARIO = r"""
import faulthandler, signal, sys, threading
faulthandler.dump_traceback_later({never}, exit=True)  # a hang shows where, then fails
import gocontext
from gocontext import _afterfunc

ran = []
events = []


def make():
    # A context with an after_func of its own, and its cancel.
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    event = threading.Event()
    events.append(event)
    gocontext.after_func(ctx, event.set)
    return cancel


handled = []
signal.signal(signal.SIGUSR1, lambda *a: (handled.append(1), make()()))

pool_file = _afterfunc.__file__
lines = set()


def local(frame, event, arg):
    where = (frame.f_code.co_name, frame.f_lineno)
    if event == "line" and where not in lines:
        lines.add(where)
        signal.raise_signal(signal.SIGUSR1)  # its handler runs here, on this line of the pool
    return local


def tracer(frame, event, arg):  # (the tracer and the handler it runs are not traced)
    return local if frame.f_code.co_filename == pool_file else None


first = make()
sys.settrace(tracer)
try:
    first()  # its after_func goes to the pool's submit(), in this thread, under the tracer
finally:
    sys.settrace(None)
waited = [e.wait({never}) for e in events]
print(len(lines), len(handled), waited.count(True), len(events), flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGUSR1")
def test_a_signal_handler_cancelling_inside_the_after_func_pool_never_hangs_it() -> None:
    """A signal handler may call cancel() (the tree makes that safe at any bytecode): if it
    lands while the main thread is inside the after_func pool's books (a cancel in the main
    thread hands an after_func to the pool), the after_func it submits must not wait for the
    pool's lock that its own thread holds below it. A signal lands at each line the pool runs
    in the main thread, in turn; every after_func runs, none is lost, and nothing hangs."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", AFTER_FUNC_SCENARIO.format(never=NEVER)],
        capture_output=True,
        text=True,
        timeout=NEVER * 3,
        env=env,
        check=False,
    )
    assert out.returncode == 0, (out.stdout, out.stderr[-3000:])
    lines, handled, ran, made = map(int, out.stdout.split())
    assert lines >= 4 and handled == lines, out.stdout  # a signal at every line of the pool
    assert ran == made == lines + 1, out.stdout  # every after_func ran


# --------------------------------------------------------------------------------------------
# to_thread: a plain function that hands back a coroutine


async def job(ctx: gocontext.Context) -> int:
    return 42


async def test_to_thread_refuses_a_coroutine_handed_back_by_a_plain_function() -> None:
    """``lambda c: job(c)`` passes the async-callable check (it is a plain function) and hands
    back a coroutine from the thread: under asyncio it came back as the "result", never
    awaited, and under trio as trio's own TypeError about an internal wrapper. Either way the
    answer is ours, the same as Group.go()'s and TaskGroup.go_thread()'s: a TypeError that
    names the call, the coroutine closed (no "never awaited" warning)."""
    made: list[Any] = []

    def wrapper(c: gocontext.Context) -> Any:
        made.append(job(c))
        return made[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited fails the test
        with pytest.raises(TypeError, match=r"to_thread\(\) runs functions in threads"):
            await gocontext.to_thread(gocontext.background(), wrapper)
    assert made[0].cr_frame is None  # closed: it never runs and warns of nothing


class Departure(BaseException):
    """A BaseException of the user's own, neither an Exception nor an interrupt."""


async def test_to_thread_raises_a_base_exception_from_fn_unchanged_and_ends_the_child() -> None:
    children: list[gocontext.Context] = []

    def leave(child: gocontext.Context) -> None:
        children.append(child)
        raise Departure("from the thread")

    with pytest.raises(Departure, match="from the thread"):
        await gocontext.to_thread(gocontext.background(), leave)
    assert isinstance(children[0].err(), gocontext.Canceled)


# --------------------------------------------------------------------------------------------
# ContextExecutor.submit_ctx: a pool that cannot take work, a hook that cannot be placed


def test_submit_ctx_with_a_done_context_on_a_broken_pool_raises_as_submit_does() -> None:
    """A pool whose initializer failed takes no work: submit() and submit_ctx() with a live
    context raise BrokenThreadPool. With a context already done, submit_ctx() handed back a
    cancelled future instead, as if the pool were well: the caller never learns it is not."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()

    def fail() -> None:
        raise ValueError("no worker for you")

    pool = gocontext.ContextExecutor(max_workers=1, initializer=fail)
    try:
        first = pool.submit(int)
        with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
            first.result(NEVER)  # broken from here on
        with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
            pool.submit_ctx(gocontext.background(), lambda c: None)
        with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
            pool.submit_ctx(ctx, lambda c: None)
    finally:
        pool.shutdown()


def test_submit_ctx_with_a_done_context_after_shutdown_raises_as_submit_does() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    pool = gocontext.ContextExecutor(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit_ctx(ctx, lambda c: None)


class HookFailed(Exception):
    pass


class _RefusingDone(gocontext.Done):
    """A foreign Done that is never set and refuses every callback."""

    def is_set(self) -> bool:
        return False

    def add_callback(self, fn: Callable[[], object], /) -> Any:
        raise HookFailed("no callbacks here")


class RefusingContext(OtherContext):
    def done(self) -> gocontext.Done:
        return _RefusingDone()


def test_submit_ctx_whose_hook_cannot_be_placed_runs_nothing() -> None:
    """If the hook that ties the future to *ctx* cannot be placed (a foreign Done that raises,
    an interrupt), submit_ctx() raises, and so the work must not have been handed to a worker:
    it was submitted first, and ran although the caller was told the call failed."""
    ran = threading.Event()
    with gocontext.ContextExecutor(max_workers=1) as pool:
        with pytest.raises(HookFailed):
            pool.submit_ctx(RefusingContext(gocontext.background()), lambda c: ran.set())
    # shutdown(wait=True) has run: whatever was handed to the pool has run by now
    assert not ran.is_set()


def cancel_at(go: threading.Barrier, cancel: Callable[[], None]) -> None:
    go.wait(NEVER)
    cancel()


def test_a_cancel_racing_submit_ctx_always_withdraws_the_queued_work() -> None:
    """A cancel from another thread lands at any moment of submit_ctx() while the only worker
    is busy: whenever it lands, the queued future ends up cancelled (it never runs), and no
    hook stays on the context."""
    release = threading.Event()
    busy = threading.Event()
    ran: list[int] = []

    def block() -> None:
        busy.set()
        release.wait(NEVER)

    with gocontext.ContextExecutor(max_workers=1) as pool:
        blocker = pool.submit(block)
        assert busy.wait(NEVER)  # the only worker is taken: every submit_ctx below queues
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # the threads take turns often: the cancel lands anywhere
        try:
            for i in range(300):
                ctx, cancel = gocontext.with_cancel(gocontext.background())
                go = threading.Barrier(2)
                t = threading.Thread(target=cancel_at, args=(go, cancel))
                t.start()
                go.wait(NEVER)
                future = pool.submit_ctx(ctx, lambda c, i: ran.append(i), i)
                t.join(NEVER)
                assert future.cancelled(), i
                assert _context.watcher_count(ctx) == 0
        finally:
            sys.setswitchinterval(interval)
            release.set()
        blocker.result(NEVER)
    assert ran == []


# --------------------------------------------------------------------------------------------
# signal_context: signal numbers of an int subclass whose every hook raises


class HostileInt(int):
    """An int whose comparison, hash, truth, repr and conversions all raise."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("__ne__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__")

    def __index__(self) -> int:
        raise RuntimeError("__index__")

    def __int__(self) -> int:
        raise RuntimeError("__int__")


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGUSR1")
def test_signal_numbers_whose_hooks_raise_are_taken_by_value_or_refused_by_name() -> None:
    """An int subclass is a signal number by its value: its own ``__hash__`` and ``__eq__``
    (which the set of valid signals and the dedup called) must not turn the call into an
    untyped RuntimeError. A valid one works; an invalid one is the usual ValueError."""
    import signal

    before = signal.getsignal(signal.SIGUSR1)
    with gocontext.signal_context(signals=[HostileInt(signal.SIGUSR1), signal.SIGUSR1]) as (
        ctx,
        _,
    ):
        assert signal.getsignal(signal.SIGUSR1) is not before
        signal.raise_signal(signal.SIGUSR1)
        assert ctx.done().wait(NEVER)
        assert gocontext.cause(ctx).signum == signal.SIGUSR1  # type: ignore[union-attr]
    assert signal.getsignal(signal.SIGUSR1) == before
    with pytest.raises(ValueError, match=r"signal_context\(\) got an unknown signal: 9999"):
        gocontext.signal_context(signals=[HostileInt(9999)])
    with pytest.raises(TypeError, match=r"needs signal numbers, got float: 2.0"):
        gocontext.signal_context(signals=[signal.SIGUSR1, 2.0])  # type: ignore[list-item]
    # too large for its digits to be printed (int's str limit): still named, by its size
    with pytest.raises(ValueError, match=r"got an unknown signal: int of 16610 bits"):
        gocontext.signal_context(signals=[10**5000])
    assert signal.getsignal(signal.SIGUSR1) == before
