"""Shared fixtures: both async backends, a fake clock, and a hand-written Context."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

import gocontext
from gocontext import _timer

from .typing.contexts import OtherContext as OtherContext  # the tests import it from here

NEVER = 10.0  # seconds a wait may take before the test fails: it must never elapse


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it. A shell without job control starts a background command
    (``pytest &``) with SIGINT ignored, and Python then keeps it ignored, as does every process
    the tests start (fresh interpreters, Ray's workers): the tests of what a Ctrl-C does would
    wait for one that never lands."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs under asyncio and under trio."""
    return str(request.param)


class NewTimerEntries:
    """The shared timer's live entries made since this was created.

    Other tests' deadlines may fire meanwhile, so a count of every live entry does not measure
    what one test left behind: this counts only the entries that were not live at the start.
    """

    def __init__(self) -> None:
        self._before = _timer.timer.live()  # kept alive, so that no new entry takes their ids
        self._ids = {id(e) for e in self._before}

    def count(self) -> int:
        return sum(1 for e in _timer.timer.live() if id(e) not in self._ids)


class FakeClock:
    """The deadline clock, moved by hand: ``advance()`` fires exactly what became due."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> int:
        self.t += seconds
        return _timer.timer.fire_due()


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    clock = FakeClock()
    _timer.set_clock(clock.now)
    try:
        yield clock
    finally:
        _timer.set_clock(None)


@pytest.fixture(params=["ours", "foreign"])
def make_parent(request: pytest.FixtureRequest) -> object:
    """A factory of cancelable parents: ours, or a user-written wrapper around ours."""

    def make(parent: gocontext.Context | None = None) -> tuple[gocontext.Context, object]:
        ctx, cancel = gocontext.with_cancel_cause(parent or gocontext.background())
        return (ctx if request.param == "ours" else OtherContext(ctx)), cancel

    return make


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    extra = [
        t
        for t in threading.enumerate()
        if t.ident not in before and not t.name.startswith("gocontext-")
    ]
    for t in extra:
        t.join(NEVER)
    assert not [t for t in extra if t.is_alive()]
