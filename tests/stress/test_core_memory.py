"""Create/cancel cycles per kind with flat memory (tracemalloc), and deep chains.

100,000 cycles per kind by default, 1,000,000 with ``GOCONTEXT_STRESS=1``. After the cycles
the traced memory is what it was (within a small slack for allocator noise), no registration
is left on the long-lived parent and the timer holds no entry for them.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable

import pytest

import gocontext
from gocontext import _context, _timer

from ..conftest import NEVER, OtherContext

pytestmark = pytest.mark.stress

HEAVY = os.environ.get("GOCONTEXT_STRESS") == "1"
CYCLES = 1_000_000 if HEAVY else 100_000
DEPTH = 1_000_000 if HEAVY else 100_000
SLACK = 64 * 1024  # bytes: free-list and interning noise, far below one byte per cycle

PARENT, CANCEL_PARENT = gocontext.with_cancel(gocontext.background())
FOREIGN = OtherContext(PARENT)


def _cancel() -> None:
    gocontext.with_cancel(PARENT)[1]()


def _cancel_cause() -> None:
    gocontext.with_cancel_cause(PARENT)[1](None)


def _timeout() -> None:
    gocontext.with_timeout(PARENT, 3600.0)[1]()


def _watched() -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.with_value(PARENT, "k", 1), 3600.0)
    ctx.done().add_callback(int)
    cancel()


def _unwatched_grandchild() -> None:
    mid, cancel_mid = gocontext.with_cancel(PARENT)
    ctx, cancel = gocontext.with_cancel(mid)
    ctx.done().add_callback(int).cancel()  # watched, then not: the chain above unregisters


def _merge() -> None:
    gocontext.merge(PARENT, gocontext.todo())[1]()


def _forgotten() -> None:
    gocontext.with_cancel(gocontext.with_value(PARENT, "k", 1))


def _foreign() -> None:
    gocontext.with_value(FOREIGN, "k", 1)
    gocontext.with_cancel(FOREIGN)[1]()


def _after_func_stopped() -> None:
    ctx, cancel = gocontext.with_cancel(PARENT)
    assert gocontext.after_func(ctx, int)()
    cancel()


KINDS: dict[str, Callable[[], None]] = {
    "with_cancel": _cancel,
    "with_cancel_cause": _cancel_cause,
    "with_timeout": _timeout,
    "watched timeout under a value": _watched,
    "watched then unwatched grandchild": _unwatched_grandchild,
    "merge": _merge,
    "forgotten child": _forgotten,
    "children of a user-written parent": _foreign,
    "after_func stopped": _after_func_stopped,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_create_and_cancel_cycles_hold_no_memory(kind: str) -> None:
    cycle = KINDS[kind]
    timer_before = _timer.timer.pending()
    for _ in range(1000):  # warm up caches and free lists
        cycle()
    # Every cycle, counted in allocated blocks (cheap: no tracing slows the cycles down)...
    gc.collect()
    blocks = sys.getallocatedblocks()
    for _ in range(CYCLES):
        cycle()
    gc.collect()
    held = sys.getallocatedblocks() - blocks
    assert held < 1000, f"{kind}: {held} blocks held after {CYCLES} cycles"
    # ...and a tenth of them in bytes, traced.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(CYCLES // 10):
            cycle()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < SLACK, f"{kind}: {after - before} bytes held"
    assert _context.watcher_count(PARENT) == 0
    # Nothing of the cycles' is left; entries of earlier tests may fire meanwhile.
    assert _timer.timer.pending() <= timer_before
    assert _timer.timer.size() <= timer_before * 2 + 128  # cancelled entries do not pile up


def wait_on(done: gocontext.Done, woke: list[bool]) -> None:
    woke.append(done.wait())


def test_a_deep_watched_chain_ends_and_frees() -> None:
    top, cancel = gocontext.with_cancel_cause(gocontext.background())
    ctx = top
    for i in range(DEPTH):
        ctx = gocontext.with_value(ctx, i, i) if i % 3 == 0 else gocontext.with_cancel(ctx)[0]
    woke: list[bool] = []
    waiter = threading.Thread(target=wait_on, args=(ctx.done(), woke))
    waiter.start()
    assert ctx.value(0) == 0 and repr(ctx).endswith("done=False>")
    why = KeyError("why")
    cancel(why)
    waiter.join(NEVER)
    assert woke == [True]
    assert gocontext.cause(ctx) is why
    ref = weakref.ref(ctx)
    del ctx, waiter
    gc.collect()
    assert ref() is None
