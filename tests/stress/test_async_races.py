"""scope() and to_thread() raced against cancels from another thread, at random moments.

Each round ends in exactly one of: returned (the body or fn completed), our error (``ctx``
ended it) or the framework's cancellation, in agreement with what the round did; afterwards no
watcher is left on any context and no fn is still running in a thread. Under asyncio, uvloop
and trio; 2,000 scopes and 2,000 to_thread calls per backend by default, 10,000 of each with
``GOCONTEXT_STRESS=1``.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import pytest

import gocontext
from gocontext import _context

from .._loops import post_from_thread
from ..conftest import NEVER

pytestmark = pytest.mark.stress

HEAVY = os.environ.get("GOCONTEXT_STRESS") == "1"
SCOPES = 10_000 if HEAVY else 2_000
CALLS = 10_000 if HEAVY else 2_000
BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
WHO = ("nobody", "ctx", "framework", "both")


class Canceller:
    """A thread that runs cancels handed to it, each after a random number of spins."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.jobs: queue.SimpleQueue[tuple[int, list[Callable[[], object]]] | None]
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="canceller")
        self.thread.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            spins, calls = job
            for _ in range(spins):
                if self.rng.random() < 0.3:
                    time.sleep(0)  # hand the GIL to the loop now and then
            for call in calls:
                call()

    def arm(
        self,
        who: str,
        spins: int,
        cancel: Callable[[], object],
        post: Callable[[Callable[[], object]], object],
    ) -> anyio.CancelScope:
        """A cancel scope for one round; *who* of the round ("ctx", "framework", "both" or
        "nobody") will cancel it, from this thread, after *spins* spins."""
        cs = anyio.CancelScope()
        calls: list[Callable[[], object]] = []
        if who in ("ctx", "both"):
            calls.append(cancel)
        if who in ("framework", "both"):
            calls.append(partial(post, cs.cancel))
        self.jobs.put((spins, calls))
        return cs

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(NEVER)
        assert not self.thread.is_alive()


def disagrees(who: str, outcome: str | None) -> bool:
    """Whether a round's *outcome* contradicts *who* cancelled it."""
    return (
        outcome is None
        or (who == "nobody" and outcome != "returned")
        or (who == "ctx" and outcome == "framework")
        or (who == "framework" and outcome == "ours")
    )


def race(
    backend: str,
    seed: int,
    who: list[str],
    spins: list[int],
    pairs: list[gocontext.CancelPair],
    body: Callable[[int, gocontext.Context, anyio.CancelScope], Awaitable[None]],
) -> list[str | None]:
    """One round per pair, in one event loop: arm the round's cancels (by ``who[i]``, after
    ``spins[i]`` spins, from the canceller thread), then await ``body(i, ctx, cs)`` inside the
    round's cancel scope. Return each round's outcome: ``"returned"``, ``"ours"`` (the body
    raised ``Canceled``) or ``"framework"`` (the cancel scope caught its cancellation)."""
    outcomes: list[str | None] = [None] * len(pairs)

    async def main() -> None:
        post = post_from_thread()
        canceller = Canceller(seed)
        try:
            for i, (ctx, cancel) in enumerate(pairs):
                cs = canceller.arm(who[i], spins[i], cancel, post)
                outcome = None
                with cs:
                    try:
                        await body(i, ctx, cs)
                        outcome = "returned"
                    except gocontext.Canceled:
                        outcome = "ours"
                if outcome is None:
                    assert cs.cancelled_caught
                    outcome = "framework"
                outcomes[i] = outcome
        finally:
            canceller.close()
        await anyio.sleep(0)  # nothing of a cancel is left over for later code

    run_bounded(backend, main)
    return outcomes


def run_bounded(backend: str, main: Callable[[], Awaitable[object]]) -> None:
    """Run *main* in a fresh event loop in its own thread: a hang fails instead of hanging."""
    name, options = BACKENDS[backend]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            anyio.run(main, backend=name, backend_options=options)
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=run, daemon=True, name="bounded-run")
    t.start()
    t.join(90)  # within pytest-timeout's 120 s
    assert not t.is_alive(), "the run never returned"
    if raised:
        raise raised[0]


def check_threads_settle(before: set[int | None]) -> None:
    """Threads started by the run have ended, or are idle in a pool (trio's thread cache)."""
    end = time.monotonic() + NEVER
    while True:
        extra = [
            t
            for t in threading.enumerate()
            if t.ident not in before
            and not t.name.startswith(("gocontext-", "Trio thread"))
            # (a thread not started through threading, seen by it: it cannot be joined, and
            # is not one the run started)
            and not isinstance(t, threading._DummyThread)  # type: ignore[attr-defined]
        ]
        if not extra or time.monotonic() > end:
            break
        extra[0].join(0.1)
    assert extra == []


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


def test_scopes_raced_against_cancels_from_another_thread(backend: str) -> None:
    rng = random.Random(17)
    who = [WHO[rng.randrange(4)] for _ in range(SCOPES)]
    steps = [rng.randrange(4) for _ in range(SCOPES)]
    spins = [rng.randrange(40) for _ in range(SCOPES)]
    pairs = [gocontext.with_cancel(gocontext.background()) for _ in range(SCOPES)]
    completed = [False] * SCOPES
    before = {t.ident for t in threading.enumerate()}

    async def body(i: int, ctx: gocontext.Context, cs: anyio.CancelScope) -> None:
        async with gocontext.scope(ctx):
            for _ in range(steps[i]):
                await anyio.sleep(0)
            if who[i] != "nobody" and i % 2:
                await anyio.sleep(NEVER)  # only a cancel ends this one
            completed[i] = True

    outcomes = race(backend, 23, who, spins, pairs, body)
    wrong = [
        (i, who[i], outcomes[i], completed[i])
        for i in range(SCOPES)
        if disagrees(who[i], outcomes[i]) or completed[i] != (outcomes[i] == "returned")
    ]
    assert wrong == []
    assert outcomes.count("ours") > SCOPES // 20  # every outcome happened
    assert outcomes.count("framework") > SCOPES // 20
    assert all(_context.watcher_count(ctx) == 0 for ctx, _ in pairs)
    check_threads_settle(before)


def test_to_thread_calls_raced_against_cancels_from_another_thread(backend: str) -> None:
    rng = random.Random(29)
    who = [WHO[rng.randrange(4)] for _ in range(CALLS)]
    spins = [rng.randrange(40) for _ in range(CALLS)]
    pairs = [gocontext.with_cancel(gocontext.background()) for _ in range(CALLS)]
    running: list[int] = []  # fn calls in progress (list.append and remove are atomic)
    started = [False] * CALLS
    ran_past_return: list[int] = []  # fn still running when its await ended
    before = {t.ident for t in threading.enumerate()}

    def work(child: gocontext.Context, i: int) -> str:
        running.append(i)
        started[i] = True
        try:
            if who[i] != "nobody" and i % 2:
                child.done().wait(NEVER)  # only a cancel ends this one
            child.check()  # type: ignore[attr-defined]
            return "value"
        finally:
            running.remove(i)

    async def body(i: int, ctx: gocontext.Context, cs: anyio.CancelScope) -> None:
        if who[i] == "framework" and i % 8 == 0:
            cs.cancel()  # the task is cancelled already when it makes the call
        try:
            assert await gocontext.to_thread(ctx, work, i) == "value"
        finally:
            if i in running:
                ran_past_return.append(i)

    outcomes = race(backend, 31, who, spins, pairs, body)
    assert ran_past_return == []
    assert running == []
    wrong = [
        (i, who[i], outcomes[i])
        for i in range(CALLS)
        if disagrees(who[i], outcomes[i]) or (outcomes[i] == "returned" and not started[i])
    ]
    assert wrong == []
    assert outcomes.count("ours") > CALLS // 20
    assert outcomes.count("framework") > CALLS // 20
    assert all(_context.watcher_count(ctx) == 0 for ctx, _ in pairs)
    check_threads_settle(before)
