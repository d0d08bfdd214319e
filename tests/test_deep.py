"""Deep chains: every walk is a loop (no RecursionError at any depth), and building a chain
costs the same per level at any depth (counted in lines run, not in time)."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

import gocontext

from .conftest import NEVER, OtherContext

DEEP = 100_000
_PACKAGE = os.path.dirname(gocontext.__file__)


def test_repr_of_a_deep_cancel_chain() -> None:
    ctx = gocontext.background()
    for _ in range(2000):
        ctx, _ = gocontext.with_cancel(ctx)
    text = repr(ctx)
    assert text.startswith("<gocontext background.with_cancel.with_cancel")
    assert text.count("with_cancel") == 2000
    merged, _ = gocontext.merge(ctx, gocontext.todo())
    assert repr(merged).endswith(".with_cancel, todo) done=False>")


def test_value_at_the_end_of_a_deep_value_chain() -> None:
    key = gocontext.Key[int]("first")
    ctx = gocontext.with_value(gocontext.background(), key, -1)
    for i in range(DEEP):
        ctx = gocontext.with_value(ctx, i, i)
    assert ctx.value(key) == -1
    assert ctx.value("missing") is None
    assert ctx.value(DEEP - 1) == DEEP - 1


def test_value_err_deadline_and_cause_through_a_deep_mixed_chain() -> None:
    top, cancel = gocontext.with_cancel_cause(gocontext.background())
    dl, _ = gocontext.with_deadline(top, 10**8)
    ctx: gocontext.Context = gocontext.with_value(dl, "k", "v")
    for i in range(DEEP):
        if i % 3 == 0:
            ctx = gocontext.with_value(ctx, i, i)
        else:
            ctx, _ = gocontext.with_cancel(ctx)
    assert ctx.deadline() == 10**8
    assert ctx.value("k") == "v"
    assert ctx.err() is None
    why = KeyError("why")
    cancel(why)
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert gocontext.cause(ctx) is why


def test_a_deep_chain_of_values_over_a_foreign_parent() -> None:
    inner, cancel = gocontext.with_cancel(gocontext.background())
    ctx: gocontext.Context = OtherContext(inner)
    for i in range(DEEP):
        ctx = gocontext.with_value(ctx, i, i)
    assert ctx.value(0) == 0 and ctx.value("missing") is None
    assert ctx.err() is None and ctx.deadline() is None
    cancel()
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert ctx.done().wait(NEVER)
    assert repr(ctx).count("with_value") == DEEP


def test_a_watched_deep_chain_is_cancelled_and_freed() -> None:
    top, cancel = gocontext.with_cancel(gocontext.background())
    ctx = top
    for _ in range(DEEP):
        ctx = gocontext.with_cancel(ctx)[0]
    ran: list[int] = []
    ctx.done().add_callback(lambda: ran.append(1))
    cancel()
    assert ran == [1]
    ref = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert ref() is None


def test_dropping_a_deep_chain_does_not_overflow_the_stack() -> None:
    ctx = gocontext.background()
    for i in range(DEEP):
        ctx = gocontext.with_cancel(ctx)[0] if i % 2 else gocontext.with_value(ctx, i, i)
    ref = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert ref() is None


def merge_chain(top: gocontext.Context, depth: int) -> list[gocontext.Context]:
    """``merge(merge(...merge(top)))``, *depth* merges, each linked to the last."""
    chain = [top]
    for _ in range(depth):
        chain.append(gocontext.merge(chain[-1])[0])
    return chain[1:]


def foreign_chain(top: gocontext.Context, depth: int) -> list[gocontext.Context]:
    """``with_cancel_cause(OtherContext(...))``, *depth* levels, each linked to the last
    through a parent that is not ours."""
    chain = [top]
    for _ in range(depth):
        chain.append(gocontext.with_cancel_cause(OtherContext(chain[-1]))[0])
    return chain[1:]


CHAINS = {"merges": merge_chain, "foreign parents": foreign_chain}


@pytest.mark.parametrize("kind", list(CHAINS))
def test_a_cancel_reaches_the_end_of_a_deep_linked_chain(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    top, cancel = gocontext.with_cancel_cause(gocontext.background())
    chain = CHAINS[kind](top, DEEP)
    ran: list[int] = []
    chain[-1].done().add_callback(lambda: ran.append(1))
    why = KeyError("why")
    cancel(why)
    assert [i for i, ctx in enumerate(chain) if ctx.err() is None] == []
    assert isinstance(chain[-1].err(), gocontext.Canceled)
    assert gocontext.cause(chain[-1]) is why
    assert chain[-1].done().is_set()
    assert ran == [1]
    assert not [r for r in caplog.records if r.name == "gocontext"]


def test_value_through_a_deep_merge_chain() -> None:
    key = gocontext.Key[str]("k")
    top = gocontext.with_value(gocontext.background(), key, "v")
    deepest = merge_chain(top, DEEP)[-1]
    assert deepest.value(key) == "v"
    assert deepest.value("missing") is None
    # each merge asks its parents in order: the first that has the key answers
    other = gocontext.with_value(gocontext.background(), "other", "o")
    both, _ = gocontext.merge(deepest, other)
    assert merge_chain(both, 1000)[-1].value("other") == "o"
    assert merge_chain(both, 1000)[-1].value(key) == "v"


def test_a_deep_linked_chain_ends_whole_whatever_its_callbacks_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A callback raising deep in the chain is logged, a Ctrl-C in one goes out of cancel()
    once the whole chain has ended, and every callback runs once."""
    top, cancel = gocontext.with_cancel(gocontext.background())
    chain = merge_chain(top, 3000)
    ran: list[int] = []

    def interrupt() -> None:
        ran.append(1000)
        raise KeyboardInterrupt

    def fail() -> None:
        ran.append(2000)
        raise ValueError("a callback's bug")

    chain[1000].done().add_callback(interrupt)
    chain[2000].done().add_callback(fail)
    chain[-1].done().add_callback(lambda: ran.append(len(chain)))
    with pytest.raises(KeyboardInterrupt):
        cancel()
    assert [i for i, ctx in enumerate(chain) if ctx.err() is None] == []
    assert sorted(ran) == [1000, 2000, len(chain)]
    assert len([r for r in caplog.records if r.name == "gocontext"]) == 1


def test_a_callback_deep_in_a_linked_chain_sees_what_it_derives_from_an_ended_context() -> None:
    top, cancel = gocontext.with_cancel(gocontext.background())
    chain = merge_chain(top, 2000)
    seen: list[object] = []

    def derive() -> None:
        seen.append(type(gocontext.merge(top)[0].err()))
        seen.append(type(gocontext.with_cancel(OtherContext(top))[0].err()))

    chain[-1].done().add_callback(derive)
    cancel()
    assert seen == [gocontext.Canceled, gocontext.Canceled]


def lines_run(fn: Callable[[], object]) -> int:
    """How many lines of gocontext's own code ``fn()`` runs: a count, independent of speed."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if not frame.f_code.co_filename.startswith(_PACKAGE):
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def deepen(
    step: Callable[[gocontext.Context, int], gocontext.Context], depth: int
) -> gocontext.Context:
    ctx: gocontext.Context = gocontext.background()
    for i in range(depth):
        ctx = step(ctx, i)
    return ctx


STEPS: dict[str, Callable[[gocontext.Context, int], gocontext.Context]] = {
    # each timeout later than the last: the children are plain cancel nodes under the first
    "later timeouts": lambda ctx, i: gocontext.with_timeout(ctx, 3600 + i)[0],
    # each deadline earlier than the last: every level is a deadline node with a timer entry
    "earlier deadlines": lambda ctx, i: gocontext.with_deadline(ctx, 10**8 - i)[0],
    "cancel then timeout": lambda ctx, i: (
        gocontext.with_cancel(ctx)[0] if i % 2 else gocontext.with_timeout(ctx, 3600 + i)[0]
    ),
    "values then timeout": lambda ctx, i: (
        gocontext.with_value(ctx, i, i) if i % 2 else gocontext.with_timeout(ctx, 3600 + i)[0]
    ),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_one_more_level_costs_the_same_at_any_depth(name: str) -> None:
    step = STEPS[name]
    costs = []
    for depth in (10, 1000):
        ctx = deepen(step, depth)
        costs.append(lines_run(lambda ctx=ctx: step(step(ctx, depth), depth + 1)))
    assert costs[1] <= costs[0], f"{name}: {costs[0]} lines at depth 10, {costs[1]} at 1000"
