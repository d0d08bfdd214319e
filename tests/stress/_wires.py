"""The load every wire's stress test puts on it: many calls, half of them cancelled at a random
moment from a timer thread. Each call must end as planned (``ok``, or ``Canceled`` when it was
cancelled), leave no callback registered on its context, and every handler that started must
end. ``GOCONTEXT_STRESS=1`` runs ten times as many."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import gocontext
from gocontext import _context

from ..conftest import NEVER
from ..wires.conftest import BOARD, RID

CALLS = 5000 if os.environ.get("GOCONTEXT_STRESS") else 500
CONCURRENCY = 8  # calls in flight at once: the client pools hold as many connections

# How a call is made: given its context and whether it is the one to cancel (then it asks for
# a handler that parks until its context ends, else for one that answers "ok"), its answer.
Send = Callable[[gocontext.Context, bool], object]
AsyncSend = Callable[[gocontext.Context, bool], Awaitable[object]]


class Load:
    """One run: which calls are cancelled and when, and how each call ended."""

    def __init__(self, prefix: str) -> None:
        rng = random.Random(14)
        self.prefix = prefix  # the request ids of this run's calls start with it
        self.cancelled = [rng.random() < 0.5 for _ in range(CALLS)]
        self.delays = [rng.choice([0.0, 0.0005, 0.002]) for _ in range(CALLS)]
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()  # guards outcomes

    def run_in_threads(self, send: Send) -> None:
        """Make every call from a pool of threads, ``send`` blocking."""
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda i: self._call(i, send), range(CALLS)))

    async def run_in_tasks(self, send: AsyncSend) -> None:
        """Make every call from its own asyncio task, ``CONCURRENCY`` at a time."""
        limit = asyncio.Semaphore(CONCURRENCY)

        async def call(i: int) -> None:
            ctx, cancel, timer = self._start(i)
            async with limit:
                if timer is not None:
                    timer.start()
                try:
                    outcome = _answered(await send(ctx, self.cancelled[i]))
                except Exception as e:
                    outcome = _failed(e)
                finally:
                    if timer is not None:
                        await asyncio.to_thread(timer.join, NEVER)
                    cancel()
            self._record(i, ctx, outcome)

        await asyncio.gather(*(call(i) for i in range(CALLS)))

    def check(self) -> None:
        """Every call ended as planned, and every handler that started has ended."""
        assert self.outcomes == {
            "ok": self.cancelled.count(False),
            "canceled": self.cancelled.count(True),
        }
        for name in list(BOARD.entered):
            if name.startswith(self.prefix):
                BOARD.wait_ended(name)

    def _start(
        self, i: int
    ) -> tuple[gocontext.Context, gocontext.CancelFunc, threading.Timer | None]:
        ctx, cancel = gocontext.with_cancel(
            gocontext.with_value(gocontext.background(), RID, f"{self.prefix}{i}")
        )
        # Cancelled at a random moment: before sending, while connecting or waiting.
        timer = threading.Timer(self.delays[i], cancel) if self.cancelled[i] else None
        return ctx, cancel, timer

    def _call(self, i: int, send: Send) -> None:
        ctx, cancel, timer = self._start(i)
        if timer is not None:
            timer.start()
        try:
            outcome = _answered(send(ctx, self.cancelled[i]))
        except Exception as e:
            outcome = _failed(e)
        finally:
            if timer is not None:
                timer.join(NEVER)
            cancel()
        self._record(i, ctx, outcome)

    def _record(self, i: int, ctx: gocontext.Context, outcome: str) -> None:
        if self.cancelled[i] != (outcome == "canceled"):
            outcome = f"wrong: {outcome} (cancelled={self.cancelled[i]})"
        if _context.watcher_count(ctx) != 0:
            outcome = "callback left registered"
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _answered(answer: object) -> str:
    return "ok" if answer in ("ok", b"ok") else f"unexpected answer {answer!r}"


def _failed(e: Exception) -> str:
    return "canceled" if isinstance(e, gocontext.Canceled) else f"{type(e).__name__}: {e}"
