"""What every client wire sends for a context: the time left and the baggage value."""

from __future__ import annotations

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
