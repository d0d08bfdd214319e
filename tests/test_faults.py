"""Faults at the edges: callbacks and after_func functions raising BaseException, a merge whose
parent breaks halfway, forgotten children over a user-written parent, and numbers too big."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import gocontext
from gocontext import _afterfunc, _context

from .conftest import NEVER, NewTimerEntries, OtherContext


@pytest.fixture
def log_records() -> Iterator[queue.Queue[logging.LogRecord]]:
    """What the library logs at ERROR during the test (and nothing goes to stderr)."""
    records: queue.Queue[logging.LogRecord] = queue.Queue()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.put(record)

    handler = Handler(logging.ERROR)
    logger = logging.getLogger("gocontext")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll *condition* until true; a bound that only turns a hang into a failure."""
    deadline = time.monotonic() + NEVER
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def raiser(exc: type[BaseException]) -> Callable[[], None]:
    def fn() -> None:
        raise exc("from a callback")

    return fn


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_callback_raising_base_exception_runs_the_rest_and_wakes_waiters(
    exc: type[BaseException],
) -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())
    child, _ = gocontext.with_cancel(parent)
    ran: list[str] = []
    parent.done().add_callback(raiser(exc))
    parent.done().add_callback(lambda: ran.append("parent"))
    child.done().add_callback(raiser(exc))
    child.done().add_callback(lambda: ran.append("child"))
    waiting = threading.Event()
    woke: list[bool] = []

    def wait() -> None:
        waiting.set()
        woke.append(child.done().wait(NEVER))

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert waiting.wait(NEVER)
    wait_until(lambda: _context.watcher_count(child) == 3)  # the waiter is registered
    with pytest.raises(exc, match="from a callback"):
        cancel()
    waiter.join(NEVER)
    assert woke == [True]
    assert sorted(ran) == ["child", "parent"]
    assert _context.watcher_count(parent) == 0
    assert _context.watcher_count(child) == 0
    assert isinstance(child.err(), gocontext.Canceled)


def test_the_timer_survives_a_callback_raising_system_exit(
    log_records: queue.Queue[logging.LogRecord],
) -> None:
    first, cancel_first = gocontext.with_timeout(gocontext.background(), 0.01)
    second, cancel_second = gocontext.with_timeout(gocontext.background(), 0.05)
    first.done().add_callback(raiser(SystemExit))
    assert first.done().wait(NEVER)
    assert second.done().wait(NEVER)  # the same thread goes on serving the others
    record = log_records.get(timeout=NEVER)
    assert record.exc_info is not None and isinstance(record.exc_info[1], SystemExit)
    later, cancel_later = gocontext.with_timeout(gocontext.background(), 0.01)
    assert later.done().wait(NEVER)


def test_after_funcs_raising_system_exit_leave_the_pool_working(
    log_records: queue.Queue[logging.LogRecord],
) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    count = 2 * _afterfunc._MAX_THREADS
    for _ in range(count):
        gocontext.after_func(ctx, raiser(SystemExit))
    cancel()
    for _ in range(count):
        record = log_records.get(timeout=NEVER)
        assert record.exc_info is not None and isinstance(record.exc_info[1], SystemExit)
    later = threading.Event()
    gocontext.after_func(ctx, later.set)
    assert later.wait(NEVER)


class BrokenDone(OtherContext):
    """A user-written context whose done() raises."""

    def done(self) -> gocontext.Done:
        raise RuntimeError("done() is broken")


def test_a_failed_merge_leaves_nothing_registered_on_its_good_parents() -> None:
    good, cancel = gocontext.with_cancel(gocontext.background())
    bad = BrokenDone(gocontext.background())
    for _ in range(100):
        with pytest.raises(RuntimeError, match="broken"):
            gocontext.merge(good, bad)
    assert _context.watcher_count(good) == 0


def test_merge_with_a_parent_whose_done_is_not_a_done_is_a_type_error() -> None:
    good, cancel = gocontext.with_cancel(gocontext.background())

    class NoDone(OtherContext):
        def done(self) -> gocontext.Done:
            return None  # type: ignore[return-value]

    with pytest.raises(TypeError, match=r"merge\(\).*NoDone"):
        gocontext.merge(good, NoDone(gocontext.background()))
    assert _context.watcher_count(good) == 0


def test_forgotten_value_children_of_a_foreign_parent_cost_it_nothing() -> None:
    inner, cancel = gocontext.with_cancel_cause(gocontext.background())
    parent = OtherContext(inner)
    for i in range(1000):
        gocontext.with_value(parent, "k", i)
    assert _context.watcher_count(inner) == 0
    ctx = gocontext.with_value(gocontext.with_value(parent, "k", 1), "j", 2)
    child, _ = gocontext.with_cancel(ctx)
    assert (ctx.value("k"), ctx.value("j"), ctx.err(), ctx.deadline()) == (1, 2, None, None)
    why = KeyError("why")
    cancel(why)
    assert ctx.done().wait(NEVER) and child.done().wait(NEVER)
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert gocontext.cause(ctx) is why and gocontext.cause(child) is why


HUGE = [10**400, -(10**400)]
BG = gocontext.background()


@pytest.mark.parametrize("huge", HUGE, ids=["+10**400", "-10**400"])
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("with_timeout", lambda x: gocontext.with_timeout(gocontext.background(), x)),
        ("with_timeout_cause", lambda x: gocontext.with_timeout_cause(BG, x, None)),
        ("with_deadline", lambda x: gocontext.with_deadline(gocontext.background(), x)),
        ("with_deadline_cause", lambda x: gocontext.with_deadline_cause(BG, x, None)),
        ("wait", lambda x: gocontext.with_cancel(gocontext.background())[0].done().wait(x)),
    ],
)  # fmt: skip
def test_a_huge_int_is_a_value_error_naming_the_call(
    name: str, call: Callable[[object], object], huge: int
) -> None:
    before = NewTimerEntries()
    with pytest.raises(ValueError, match=rf"^{name}\(\) .*(timeout|deadline).*too large"):
        call(huge)
    assert before.count() == 0


@pytest.mark.parametrize("callbacks", [1, 3])
@pytest.mark.parametrize("kind", [asyncio.CancelledError, GeneratorExit])
def test_a_callback_raising_a_base_exception_that_is_no_interrupt_is_logged_not_raised(
    log_records: queue.Queue[logging.LogRecord], kind: type[BaseException], callbacks: int
) -> None:
    """A callback reading a cancelled future's result() raises CancelledError: its own, not
    the canceller's (which, in an asyncio task, would look cancelled by its framework)."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ran: list[int] = []

    def hostile() -> None:
        raise kind("from a done callback")

    ctx.done().add_callback(hostile)
    for i in range(callbacks - 1):
        ctx.done().add_callback(lambda i=i: ran.append(i))
    cancel()  # returns
    assert ran == list(range(callbacks - 1))
    record = log_records.get(timeout=NEVER)
    assert record.exc_info is not None and isinstance(record.exc_info[1], kind)
