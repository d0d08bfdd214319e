"""Forks taken while other threads use the tree: every child can create and fire timers."""

from __future__ import annotations

import faulthandler
import os
import threading
import time
import warnings
from collections.abc import Callable

import anyio
import pytest

import gocontext
from gocontext import _afterfunc

from ._interrupt import wakeup_fd, while_a_thread_runs
from .conftest import NEVER, NewTimerEntries

FORKS = 10


def fork_child(body: Callable[[], int]) -> int:
    """Fork; the child exits with what ``body()`` returns (1 if it raises). Returns its pid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the point
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        # A child still running when exit_code() is about to kill it shows where every thread
        # is (on stderr, which the test's report shows).
        faulthandler.dump_traceback_later(NEVER * 0.9)
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    """Wait for the child with a bound: a hung child is killed and reported as -1."""
    deadline = time.monotonic() + NEVER
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll *condition*; the bound only turns a hang into a failure."""
    deadline = time.monotonic() + NEVER
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def child_uses_timers() -> int:
    """In a forked child: 0 if a timer fires, a cancel crosses threads and an after_func runs;
    else which of them did not (2, 3, 4)."""
    ctx, _ = gocontext.with_timeout(gocontext.background(), 0.01)
    parent, cancel = gocontext.with_cancel(gocontext.background())
    child, _ = gocontext.with_cancel(parent)
    ran = threading.Event()
    gocontext.after_func(child, ran.set)
    threading.Thread(target=cancel).start()
    if not (ctx.done().wait(NEVER) and isinstance(ctx.err(), gocontext.DeadlineExceeded)):
        return 2
    if not child.done().wait(NEVER):
        return 3
    return 0 if ran.wait(NEVER) else 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_under_load_give_children_working_timers() -> None:
    stop = threading.Event()
    root, cancel_root = gocontext.with_cancel(gocontext.background())

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ctx, cancel = gocontext.with_timeout(root, 0.001)
            ctx.done().add_callback(lambda: None)
            child, cancel_child = gocontext.with_cancel(ctx)
            child.done().add_callback(lambda: None)
            cancel_child()
            if i % 2:  # leave half to the timer: the heap always holds entries due soon
                cancel()

    workers = [threading.Thread(target=churn) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        codes = [exit_code(fork_child(child_uses_timers)) for _ in range(FORKS)]
    finally:
        stop.set()
        for w in workers:
            w.join(NEVER)
        cancel_root()
    assert codes == [0] * FORKS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_a_thread_holds_the_tree_lock_with_deadlines_due() -> None:
    """The worst moment: the tree lock held by a thread that does not exist in the child, and
    a deadline due at once, so the child's timer needs the tree lock first thing."""
    from gocontext import _tree

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _tree._lock:
            held.set()
            release.wait(NEVER)

    # Work queued in the after_func pool at fork time (the parent's, which the child drops).
    busy, busy_cancel = gocontext.with_cancel(gocontext.background())
    gate = threading.Event()
    for _ in range(_afterfunc._MAX_THREADS + 4):
        gocontext.after_func(busy, lambda: gate.wait(NEVER))
    busy_cancel()
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(NEVER)
        # The parent's timer takes the first due entry and blocks on the held lock; the second
        # stays in the timer, due, when the fork happens.
        before = NewTimerEntries()
        first, _ = gocontext.with_timeout(gocontext.background(), 0.001)
        wait_until(lambda: before.count() == 0)  # taken by the timer, which is stuck
        second, _ = gocontext.with_timeout(gocontext.background(), 0.001)
        due = second.deadline()
        assert due is not None
        while time.monotonic() <= due:  # a condition on the clock, not a hope: no sleep
            time.sleep(0.001)
        codes = [exit_code(fork_child(child_uses_timers)) for _ in range(5)]
    finally:
        release.set()
        gate.set()
        holder.join(NEVER)
    assert first.done().wait(NEVER) and second.done().wait(NEVER)
    assert codes == [0] * 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_functions_queued_at_a_fork_run_in_the_parent_only() -> None:
    # An after_func queued when the process forks belongs to an end that happened in the
    # parent. Run in the child too, its effect would happen twice, and it could wait forever
    # on a lock a parent thread held at the fork (every pool thread of the child stuck so, the
    # child's own after_funcs never ran: seen under load).
    read_end, write_end = os.pipe()
    gate = threading.Event()
    busy, busy_cancel = gocontext.with_cancel(gocontext.background())
    for _ in range(_afterfunc._MAX_THREADS):  # every pool thread taken until the gate opens
        gocontext.after_func(busy, lambda: gate.wait(NEVER))
    # Queued behind them (first in, first out): it cannot run before the gate opens.
    gocontext.after_func(busy, lambda: os.write(write_end, b"%d\n" % os.getpid()))
    busy_cancel()

    def child() -> int:
        ran = threading.Event()
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        gocontext.after_func(ctx, ran.set)
        cancel()
        if not ran.wait(NEVER):
            return 2
        # Every queued function has been taken and run once the pool is idle.
        wait_until(lambda: _afterfunc._queue.empty() and _afterfunc._idle == _afterfunc.threads())
        return 0

    try:
        code = exit_code(fork_child(child))
    finally:
        gate.set()
    try:
        parent = os.getpid()
        assert code == 0
        line = os.read(read_end, 64)  # the parent's run of the marker (blocks until it ran)
        os.close(write_end)
        rest = b""
        while chunk := os.read(read_end, 64):
            rest += chunk
        assert (line + rest).split() == [b"%d" % parent]
    finally:
        os.close(read_end)


def test_a_child_forked_while_the_loop_holds_its_signal_wakeup_does_not_share_it() -> None:
    """The wake-up's socket pair is the parent's: the child's signals must not write to it."""

    def fork_and_look() -> tuple[int, int]:
        return wakeup_fd(), exit_code(fork_child(lambda: 0 if wakeup_fd() == -1 else 3))

    held, code = anyio.run(while_a_thread_runs, fork_and_look, backend="asyncio")
    assert held != -1  # the parent's loop held it at the fork
    assert code == 0  # 3: the child still had the parent's wake-up fd


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("holding", [False, True], ids=["running", "holding-the-lock"])
def test_a_child_forked_inside_a_group_leaves_its_block_without_the_parents_functions(
    holding: bool,
) -> None:
    """A Group's functions are threads of the parent: a child forked inside the block has none
    of them, so leaving the block there must not wait for them (it would wait for good), nor
    for the group's lock if one of them held it at the fork; a go() in the child runs its
    function. In the parent, the block waits for its function as usual."""
    entered = threading.Event()
    release = threading.Event()
    finished = []

    def member(ctx: gocontext.Context) -> None:
        if holding:  # inside the group's books at the fork (the lock go() and the exit take)
            with g._lock:
                entered.set()
                release.wait(NEVER)
        else:
            entered.set()
            release.wait(NEVER)
        finished.append(os.getpid())

    pid = -1
    try:
        with gocontext.Group(gocontext.background()) as g:
            g.go(member)
            assert entered.wait(NEVER)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the point
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit code
                faulthandler.dump_traceback_later(NEVER * 0.9)  # a hang shows where
                ran = threading.Event()
                g.go(lambda ctx: ran.set())
                if not ran.wait(NEVER):
                    os._exit(2)
            else:
                release.set()
        if pid == 0:  # pragma: no cover - out of the block in the child
            os._exit(0 if not finished else 3)
    except BaseException:
        if pid == 0:  # pragma: no cover
            os._exit(1)
        raise
    assert finished == [os.getpid()]  # the parent's block waited for its function
    assert exit_code(pid) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_fake_clock_block_keeps_both_clocks() -> None:
    """A child forked inside ``fake_clock()`` goes on inside the block: a deadline made there
    ends when the child advances the clock, and once the child leaves the block, a real
    deadline fires on a real timer of its own (the parent's thread does not exist there)."""
    from gocontext.testing import fake_clock

    pid = -1
    try:
        with fake_clock() as clock:
            before, _ = gocontext.with_timeout(gocontext.background(), 10)  # made before the fork
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit code
                faulthandler.dump_traceback_later(NEVER * 0.9)  # a hang shows where
                made, _ = gocontext.with_timeout(gocontext.background(), 5)
                clock.advance(5)
                if not isinstance(made.err(), gocontext.DeadlineExceeded):
                    os._exit(2)
                clock.advance(5)
                if not isinstance(before.err(), gocontext.DeadlineExceeded):
                    os._exit(3)
        if pid == 0:  # pragma: no cover - out of the block in the child: real time again
            real, _ = gocontext.with_timeout(gocontext.background(), 0.01)
            os._exit(0 if real.done().wait(NEVER) else 4)
    except BaseException:
        if pid == 0:  # pragma: no cover
            os._exit(1)
        raise
    assert before.err() is None  # the parent's clock never moved
    assert exit_code(pid) == 0
