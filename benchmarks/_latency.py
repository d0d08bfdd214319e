"""Cross-thread wake-up latency: one canceller thread, one waiter, round after round.

The waiter (a thread blocked in a wait, or a task on an event loop) arms a round with the
function that fires, parks, and says so with :meth:`RemoteCanceller.parked`; the canceller
thread then notes the time and fires. When the waiter runs again it asks
:meth:`RemoteCanceller.since_fire_us` how long that took. ``bench.py`` (threads) and
``bench_async.py`` (asyncio and trio tasks) share it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from types import TracebackType

NEVER = 10.0  # a wait that must never elapse


class RemoteCanceller:
    """A thread that fires one armed function per round, once the waiter has parked.

    *settle* (seconds) is slept between "parked" and firing, for a waiter that can only say
    it is about to block (a thread), not that it has (a task posts ``parked`` to its loop).
    *after*, if given, runs in the canceller right after each fire: work that competes with
    the woken waiter for the GIL.
    """

    def __init__(
        self,
        rounds: int,
        settle: float = 0.0,
        after: Callable[[], object] | None = None,
    ) -> None:
        self._rounds = rounds
        self._settle = settle
        self._after = after
        self._go = threading.Semaphore(0)
        self._ready = threading.Event()
        self._fires: list[Callable[[], object]] = []
        self._t0: list[int] = []
        self._thread = threading.Thread(target=self._run, name="bench-canceller", daemon=True)

    def _run(self) -> None:
        for _ in range(self._rounds):
            if not self._go.acquire(timeout=NEVER) or not self._ready.wait(NEVER):
                return  # the waiter is gone: end, do not hang the run
            self._ready.clear()
            if self._settle:
                time.sleep(self._settle)
            self._t0.append(time.perf_counter_ns())
            self._fires[-1]()
            if self._after is not None:
                self._after()

    def arm(self, fire: Callable[[], object]) -> None:
        """Start a round: *fire* is called once the waiter has parked."""
        self._fires.append(fire)
        self._go.release()

    def parked(self) -> None:
        """The waiter is parked (or about to block, with *settle*): fire now."""
        self._ready.set()

    def since_fire_us(self) -> float:
        """µs since this round's fire began; call it from the waiter once it runs again."""
        return (time.perf_counter_ns() - self._t0[-1]) / 1000

    def __enter__(self) -> RemoteCanceller:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._thread.join(NEVER)


def percentile(values: list[float], q: float) -> float:
    """The *q* quantile (0..1) of *values*, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def percentiles(values: list[float]) -> dict[str, float]:
    """Median, p90 and p99 of *values*."""
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
    }


def busy(seconds: float) -> Callable[[], None]:
    """A pure-Python loop that runs about *seconds*, holding the GIL as compute does."""

    def spin() -> None:
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            n += 1

    return spin
