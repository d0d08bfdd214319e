"""The mutex the tree and the loop mailboxes lock with: a lock's guarantees, at a lower cost."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

import pytest

import gocontext
from gocontext import _tree
from gocontext._done import CallbackHandle
from gocontext._mutex import Busy, attempt, mutex

from .conftest import NEVER


def test_one_thread_at_a_time_is_inside() -> None:
    m = mutex()
    inside = 0
    overlaps = 0
    entries = 0

    def work() -> None:
        nonlocal inside, overlaps, entries
        for _ in range(300):
            with m:
                inside += 1
                entries += 1
                time.sleep(0)  # hand the interpreter over while inside: others try to enter
                if inside != 1:
                    overlaps += 1
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    assert (overlaps, entries) == (0, 1200)


def test_an_exception_in_the_block_goes_on_and_frees_it() -> None:
    m = mutex()
    with pytest.raises(KeyError, match="boom"), m:
        raise KeyError("boom")
    entered = threading.Event()

    def other() -> None:
        with m:
            entered.set()

    t = threading.Thread(target=other)
    t.start()
    t.join(NEVER)
    assert entered.is_set()


def test_a_waiter_blocks_until_the_holder_leaves() -> None:
    m = mutex()
    order: list[str] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        with m:
            order.append("waiter")

    with m:
        t = threading.Thread(target=waiter)
        t.start()
        assert waiting.wait(NEVER)
        for _ in range(100):  # give it every chance to get in while this thread holds m
            time.sleep(0)
        order.append("holder")
    t.join(NEVER)
    assert order == ["holder", "waiter"]


class _Interrupted(BaseException):
    """What the test's signal handler raises, as Ctrl-C's raises KeyboardInterrupt."""


@pytest.mark.skipif(sys.platform == "win32", reason="pthread_kill")
def test_a_signal_that_raises_while_waiting_for_it_leaves_it_with_its_holder() -> None:
    """As with a lock: the handler's exception comes out of the ``with``, nothing is taken."""
    m = mutex()
    holding = threading.Event()
    leave = threading.Event()
    raised = threading.Event()
    main = threading.get_ident()

    def handler(signum: int, frame: object) -> None:
        if not raised.is_set():  # once: signals still on their way find it disarmed
            raised.set()
            raise _Interrupted

    def holder() -> None:
        with m:
            holding.set()
            leave.wait(NEVER)

    def interrupt() -> None:
        # The main thread is blocked in the mutex, or about to be: a signal wakes it there.
        while not raised.wait(0.05):
            signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=holder)
    k = threading.Thread(target=interrupt)
    entered = False
    try:
        t.start()
        assert holding.wait(NEVER)
        k.start()
        with pytest.raises(_Interrupted):
            with m:
                entered = True
        k.join(NEVER)
    finally:
        raised.set()
        leave.set()
        t.join(NEVER)
        signal.signal(signal.SIGUSR1, previous)
    assert not entered
    with m:  # the holder gave it back, and nobody else holds it
        pass


def test_an_attempt_takes_the_same_token_or_raises_busy_at_once() -> None:
    m = mutex()
    holding, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with m:
            holding.set()
            leave.wait(NEVER)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(NEVER)
    ran = False
    with pytest.raises(Busy):
        with attempt(m):  # held by the other thread: no wait, no entry
            ran = True
    assert not ran
    leave.set()
    t.join(NEVER)
    with attempt(m):  # free now: taken, and so held
        with pytest.raises(Busy):
            with attempt(m):
                pass
    with m:  # given back on leaving
        pass


def test_ends_and_removals_that_find_the_tree_lock_busy_wait_and_lose_nothing() -> None:
    """Threads that end watched children of one parent and remove callbacks at once keep
    finding the tree lock held by one another (the path that waits and tries again)."""
    parent, cancel_parent = gocontext.with_cancel(gocontext.background())
    ran: list[int] = []
    kids = []
    for i in range(2000):
        ctx, cancel = gocontext.with_cancel(parent)
        ctx.done().add_callback(lambda i=i: ran.append(i))
        kept = ctx.done().add_callback(lambda: ran.append(-1))
        kids.append((cancel, kept))
    go = threading.Barrier(4)

    def work(part: list[tuple[Callable[[], None], CallbackHandle]]) -> None:
        go.wait(NEVER)
        for cancel, kept in part:
            assert kept.cancel()
            cancel()

    threads = [threading.Thread(target=work, args=(kids[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    assert sorted(ran) == list(range(2000))  # each ran once, no removed one ran
    assert gocontext._context.watcher_count(parent) == 0
    cancel_parent()


def test_an_end_and_a_removal_that_find_the_tree_lock_held_wait_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread holds the tree lock: a cancel and a callback's removal find it busy,
    ask whether they interrupted its holder (no), wait, then do their work."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran: list[str] = []
    ctx.done().add_callback(lambda: ran.append("ended"))
    kept = ctx.done().add_callback(lambda: ran.append("removed one ran"))
    asked = threading.Semaphore(0)
    reentrant = _tree._reentrant

    def asking() -> bool:
        asked.release()
        return reentrant()

    monkeypatch.setattr(_tree, "_reentrant", asking)
    removed: list[bool] = []
    for step in (lambda: removed.append(kept.cancel()), cancel):
        with _tree._lock:
            t = threading.Thread(target=step)
            t.start()
            assert asked.acquire(timeout=NEVER)  # it found the lock held, and asks
            assert ran == [] and ctx.err() is None  # and waits
        t.join(NEVER)
    assert removed == [True] and ran == ["ended"]
    assert ctx.err() is not None


def test_the_tree_lock_is_one() -> None:
    """The hot lock is a mutex (a fork gives the child a new, free one: see test_fork)."""
    assert type(_tree._lock).__name__ == "mutex"
