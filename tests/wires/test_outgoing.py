"""What every client wire sends for a context: the time left and the baggage value."""

from __future__ import annotations

import gc
import weakref

import gocontext
from gocontext.http import _outgoing

from .conftest import RID


def test_baggage_stays_right_for_many_values_past_the_memo_bound() -> None:
    for i in range(2 * _outgoing._FORMATTED_MAX + 3):
        ctx = gocontext.with_value(gocontext.background(), RID, f"r {i}")
        assert _outgoing.baggage(ctx, None) == f"test-rid=r%20{i}"
        assert _outgoing.baggage(ctx, "other=1") == f"other=1,test-rid=r%20{i}"
    assert len(_outgoing._formatted) <= _outgoing._FORMATTED_MAX


def test_a_context_without_values_leaves_the_existing_baggage_alone() -> None:
    assert _outgoing.baggage(gocontext.background(), "other=1") is None
    assert _outgoing.time_left(gocontext.background()) is None


def test_baggage_is_remembered_per_values_and_stays_bounded() -> None:
    for i in range(2 * _outgoing._BY_VALUES_MAX + 3):
        ctx = gocontext.with_value(gocontext.background(), RID, f"v{i}")
        child, cancel = gocontext.with_cancel(ctx)  # (shares its parent's values)
        assert _outgoing.baggage(child, None) == f"test-rid=v{i}"
        assert _outgoing.baggage(ctx, None) == f"test-rid=v{i}"
        cancel()
    assert len(_outgoing._by_values) <= _outgoing._BY_VALUES_MAX


def test_baggage_of_values_past_a_contexts_own_dict() -> None:
    ctx = gocontext.with_value(gocontext.background(), RID, "deep")
    for i in range(100):  # (past the copy limit: lookups continue in the parents)
        ctx = gocontext.with_value(ctx, ("filler", i), i)
    assert _outgoing.baggage(ctx, None) == "test-rid=deep"
    merged, cancel = gocontext.merge(gocontext.background(), ctx)
    assert _outgoing.baggage(merged, "other=1") == "other=1,test-rid=deep"
    cancel()


def test_the_baggage_memo_keeps_no_value_alive() -> None:
    class Big:
        pass

    big = Big()
    gone = weakref.ref(big)
    ctx = gocontext.with_value(gocontext.with_value(gocontext.background(), "blob", big), RID, "r")
    assert _outgoing.baggage(ctx, None) == "test-rid=r"
    assert _outgoing.baggage(ctx, None) == "test-rid=r"  # (from the memo)
    del ctx, big
    gc.collect()
    assert gone() is None
    again = gocontext.with_value(gocontext.background(), RID, "other")  # (may reuse the id)
    assert _outgoing.baggage(again, None) == "test-rid=other"
