"""Done: polling, blocking threads, callbacks, and what happens when they misbehave."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import pytest

import gocontext
from gocontext import _afterfunc, _context, _done, _tree

from .conftest import NEVER


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + NEVER
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.001)


def test_done_is_the_same_object_every_call() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    assert ctx.done() is ctx.done()
    assert isinstance(ctx.done(), gocontext.Done)
    value_ctx = gocontext.with_value(ctx, "k", 1)
    assert value_ctx.done() is value_ctx.done()


def test_cancel_from_another_thread_wakes_every_waiting_thread() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    n = 8
    ready = threading.Barrier(n + 1)
    results: queue.Queue[bool] = queue.Queue()

    def wait() -> None:
        ready.wait(NEVER)
        results.put(ctx.done().wait(NEVER))

    threads = [threading.Thread(target=wait) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait(NEVER)
    threading.Thread(target=cancel).start()
    assert [results.get(timeout=NEVER) for _ in range(n)] == [True] * n
    for t in threads:
        t.join(NEVER)


def test_wait_times_out_and_leaves_nothing_registered() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert ctx.done().wait(0.01) is False
    assert ctx.done().wait(-1) is False
    assert _context.watcher_count(ctx) == 0
    cancel()
    assert ctx.done().wait(0) is True


def test_wait_on_a_never_done_context_times_out() -> None:
    assert gocontext.background().done().wait(0.001) is False


def test_callback_runs_once_in_the_completing_thread() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran: list[str] = []
    ctx.done().add_callback(lambda: ran.append(threading.current_thread().name))
    t = threading.Thread(target=cancel, name="canceller")
    t.start()
    t.join(NEVER)
    cancel()
    assert ran == ["canceller"]


def test_callback_on_a_done_context_runs_right_away() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    ran: list[int] = []
    handle = ctx.done().add_callback(lambda: ran.append(1))
    assert ran == [1]
    assert handle.cancel() is False


def test_a_raising_callback_is_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("callback failed")

    ctx.done().add_callback(boom)
    ctx.done().add_callback(lambda: ran.append(1))
    with caplog.at_level(logging.ERROR, logger="gocontext"):
        cancel()  # must not raise
    assert ran == [1]
    assert "callback failed" in caplog.text


def test_add_callback_needs_a_callable() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with pytest.raises(TypeError, match="callable"):
        ctx.done().add_callback(42)  # type: ignore[arg-type]


def test_cancel_never_runs_waiter_code_in_the_cancellers_frame() -> None:
    """A thread blocked in wait() resumes in its own thread, not inside cancel()."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    woke_in: queue.Queue[str] = queue.Queue()
    started = threading.Event()

    def waiter() -> None:
        started.set()
        ctx.done().wait(NEVER)
        woke_in.put(threading.current_thread().name)

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    assert started.wait(NEVER)
    cancel()
    assert woke_in.get(timeout=NEVER) == "waiter"
    t.join(NEVER)


def test_after_func_runs_once_in_a_worker_thread_after_done() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran: queue.Queue[str] = queue.Queue()
    stop = gocontext.after_func(ctx, lambda: ran.put(threading.current_thread().name))
    assert ran.empty()
    cancel()
    name = ran.get(timeout=NEVER)
    assert name.startswith("gocontext-after-func")
    assert stop() is False
    cancel()
    assert ran.empty()


def test_after_func_stop_prevents_the_call() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran = threading.Event()
    stop = gocontext.after_func(ctx, ran.set)
    assert stop() is True
    assert stop() is False
    cancel()
    marker = threading.Event()
    gocontext.after_func(ctx, marker.set)  # runs after the stopped one would have
    assert marker.wait(NEVER)
    assert not ran.is_set()


def test_after_func_on_a_done_context_runs_soon() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    ran = threading.Event()
    stop = gocontext.after_func(ctx, ran.set)
    assert ran.wait(NEVER)
    assert stop() is False


def test_after_func_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        gocontext.after_func(gocontext.background(), None)  # type: ignore[arg-type]


def test_after_funcs_do_not_hold_a_thread_while_waiting() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    before = set(threading.enumerate())  # (others' threads may end meanwhile: not counted)
    stops = [gocontext.after_func(ctx, lambda: None) for _ in range(1000)]
    assert set(threading.enumerate()) - before == set()
    for stop in stops:
        assert stop() is True
    cancel()


def test_many_after_funcs_share_a_bounded_pool() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    gate = threading.Event()
    count = 50
    finished = threading.Semaphore(0)

    def blocked() -> None:
        gate.wait(NEVER)
        finished.release()

    for _ in range(count):
        gocontext.after_func(ctx, blocked)
    cancel()
    assert _afterfunc.threads() <= _afterfunc._MAX_THREADS
    gate.set()
    for _ in range(count):
        assert finished.acquire(timeout=NEVER)
    assert _afterfunc._idle <= _afterfunc.threads()  # the pool's books balance after a backlog
    later = threading.Event()
    gocontext.after_func(ctx, later.set)
    assert later.wait(NEVER)


def test_an_after_func_that_raises_is_logged() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    logged: queue.Queue[logging.LogRecord] = queue.Queue()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.put(record)

    def boom() -> None:
        raise ValueError("after_func failed")

    handler = Handler(logging.ERROR)
    logger = logging.getLogger("gocontext")
    logger.addHandler(handler)
    try:
        gocontext.after_func(ctx, boom)
        cancel()
        record = logged.get(timeout=NEVER)
    finally:
        logger.removeHandler(handler)
    assert record.exc_info is not None
    assert "after_func failed" in str(record.exc_info[1])


class _RecordedPops(dict):  # type: ignore[type-arg]
    """A handoffs dict that records which thread takes each entry."""

    def __init__(self) -> None:
        super().__init__()
        self.by: list[str] = []

    def pop(self, key: object, default: object = None) -> object:
        self.by.append(threading.current_thread().name)
        return super().pop(key, default)


def test_cancel_hands_the_interpreter_to_the_thread_it_woke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The canceller waits (GIL released) until the woken thread has run, so a canceller
    that keeps computing after cancel() does not hold it off for its whole time slice."""
    pops = _RecordedPops()
    monkeypatch.setattr(_done, "handoffs", pops)
    monkeypatch.setattr(_tree, "handoffs", pops)
    monkeypatch.setattr(_tree, "_HANDOFF", NEVER)  # so the order below cannot depend on speed
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    returned: queue.Queue[bool] = queue.Queue()
    t = threading.Thread(target=lambda: returned.put(ctx.done().wait(NEVER)), name="waiter")
    t.start()
    wait_until(lambda: _context.watcher_count(ctx) == 1)  # the waiter is blocked
    canceller = threading.Thread(target=cancel, name="canceller")
    canceller.start()
    canceller.join(NEVER)
    assert returned.get(timeout=NEVER) is True
    t.join(NEVER)
    # The waiter took its entry (it ran) before the canceller, back from waiting, took it.
    assert pops.by == ["waiter", "canceller"]
    assert not pops


def test_a_woken_thread_that_never_runs_holds_the_canceller_for_a_bounded_time() -> None:
    """A lock registered as a waiter by a thread that never comes back for it: cancel() still
    returns (after the bound), and leaves no entry behind."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    lock = threading.Lock()
    lock.acquire()
    ctx.done()._add_waiter(lock, [])  # type: ignore[attr-defined]  # how wait() registers
    done = threading.Event()
    threading.Thread(target=lambda: (cancel(), done.set())).start()
    assert done.wait(NEVER)
    assert lock.acquire(blocking=False)  # it was released: the wake itself happened
    assert not _done.handoffs


def test_slow_after_funcs_do_not_hold_up_an_unrelated_contexts() -> None:
    """As Go runs each AfterFunc in its own goroutine: a handful of functions blocked in slow
    cleanup leave the pool room for another context's, which runs while they still block."""
    a, cancel_a = gocontext.with_cancel(gocontext.background())
    gate = threading.Event()
    started = threading.Semaphore(0)
    slow = 8

    def blocked() -> None:
        started.release()
        gate.wait(3 * NEVER)  # (longer than the test waits: they block until it ends)

    for _ in range(slow):
        gocontext.after_func(a, blocked)
    cancel_a()
    try:
        for _ in range(slow):
            assert started.acquire(timeout=NEVER)  # all of them are running, and blocked
        b, cancel_b = gocontext.with_cancel(gocontext.background())
        ran = threading.Event()
        gocontext.after_func(b, ran.set)
        cancel_b()
        assert ran.wait(NEVER), "an unrelated context's function waited for the slow ones"
    finally:
        gate.set()
