"""Hostile arguments to every public core function: each answers a TypeError or ValueError
that names the call (or, for what is a valid argument after all, works); never a hang, a
crash or a corrupted tree. After every example a fresh derivation works and nothing is left
registered or scheduled."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gocontext
from gocontext import _context

from .conftest import NewTimerEntries, OtherContext


class UserBug(Exception):
    """Raised by the user-written objects below: it must come out as it is, never swallowed."""


class BrokenEq:
    def __eq__(self, other: object) -> bool:
        raise UserBug("__eq__")

    def __hash__(self) -> int:
        return 7


class BrokenHash:
    def __hash__(self) -> int:
        raise UserBug("__hash__")


class BrokenBool:
    def __bool__(self) -> bool:
        raise UserBug("__bool__")


class BrokenRepr:
    def __repr__(self) -> str:
        raise UserBug("__repr__")


class HalfContext:
    """Has err() and value() only."""

    def err(self) -> None:
        return None

    def value(self, key: Hashable, /) -> object:
        return None


class RaisingContext(OtherContext):
    def done(self) -> gocontext.Done:
        raise UserBug("done()")

    def deadline(self) -> float | None:
        raise UserBug("deadline()")


class NoDoneContext(OtherContext):
    def done(self) -> gocontext.Done:
        return None  # type: ignore[return-value]


class LyingDeadlineContext(OtherContext):
    def deadline(self) -> float | None:
        return "soon"  # type: ignore[return-value]


class NaNDeadlineContext(OtherContext):
    def deadline(self) -> float | None:
        return math.nan


class BadHandleDone(gocontext.Done):
    def is_set(self) -> bool:
        return False

    def add_callback(self, fn: Callable[[], object], /) -> Any:
        return None


class BadHandleContext(OtherContext):
    def done(self) -> gocontext.Done:
        return BadHandleDone()


PARENT, CANCEL_PARENT = gocontext.with_cancel(gocontext.background())

HOSTILE: list[object] = [
    None,
    math.nan,
    math.inf,
    -math.inf,
    10**400,
    -(10**400),
    True,
    False,
    0,
    -1,
    1e308,
    "ctx",
    b"",
    object(),
    BrokenEq(),
    BrokenHash(),
    BrokenBool(),
    BrokenRepr(),
    HalfContext(),
    RaisingContext(PARENT),
    NoDoneContext(PARENT),
    LyingDeadlineContext(PARENT),
    NaNDeadlineContext(PARENT),
    BadHandleContext(PARENT),
    ValueError("a cause"),
    print,
    OtherContext,  # a Context class where an instance belongs
]


def cancel_with(make: Callable[[Any], Any], x: object) -> None:
    """Call the cancel() of a new child of PARENT with *x* (it takes none), then cancel it."""
    _, cancel = make(PARENT)
    try:
        cancel(x)
    finally:
        cancel()


# name, how to call it with the hostile argument x
CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("with_cancel", lambda x: gocontext.with_cancel(x)),
    ("with_cancel_cause", lambda x: gocontext.with_cancel_cause(x)),
    ("cancel", lambda x: gocontext.with_cancel_cause(PARENT)[1](x)),
    ("cancel", lambda x: cancel_with(gocontext.with_cancel, x)),
    ("cancel", lambda x: cancel_with(lambda p: gocontext.with_timeout(p, 60), x)),
    ("cancel", lambda x: cancel_with(gocontext.merge, x)),
    ("with_timeout", lambda x: gocontext.with_timeout(x, 1)),
    ("with_timeout", lambda x: gocontext.with_timeout(PARENT, x)),
    ("with_timeout_cause", lambda x: gocontext.with_timeout_cause(PARENT, 1, x)),
    ("with_timeout_cause", lambda x: gocontext.with_timeout_cause(PARENT, x, None)),
    ("with_deadline", lambda x: gocontext.with_deadline(x, 1e8)),
    ("with_deadline", lambda x: gocontext.with_deadline(PARENT, x)),
    ("with_deadline_cause", lambda x: gocontext.with_deadline_cause(PARENT, x, None)),
    ("with_deadline_cause", lambda x: gocontext.with_deadline_cause(PARENT, 1e8, x)),
    ("with_value", lambda x: gocontext.with_value(x, "k", 1)),
    ("with_value", lambda x: gocontext.with_value(PARENT, x, 1)),
    ("with_value", lambda x: gocontext.with_value(PARENT, gocontext.PropagatedKey("k"), x)),
    ("without_cancel", lambda x: gocontext.without_cancel(x)),
    ("merge", lambda x: gocontext.merge(PARENT, x)),
    ("merge", lambda x: gocontext.merge(x, PARENT)),
    ("after_func", lambda x: gocontext.after_func(x, print)),
    ("after_func", lambda x: gocontext.after_func(PARENT, x)),
    ("cause", lambda x: gocontext.cause(x)),
    ("use", lambda x: gocontext.use(x)),
    ("Key", lambda x: gocontext.Key(x)),
    ("PropagatedKey", lambda x: gocontext.PropagatedKey(x)),
    ("add_callback", lambda x: PARENT.done().add_callback(x)),
    ("wait", lambda x: gocontext.with_cancel(PARENT)[0].done().wait(x)),
]


def a_real_wait(x: object) -> bool:
    """True if wait(x) on a live context would block for real (x is a valid positive timeout)."""
    if x is None:
        return True
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return float(x) > 0
    except OverflowError:
        return False


def clean_up(result: object) -> None:
    """Cancel whatever the call made, as its caller must."""
    if isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
        result[1]()
    elif callable(getattr(result, "cancel", None)):
        result.cancel()  # type: ignore[attr-defined]  # add_callback's handle
    elif callable(result) and not isinstance(result, gocontext.Key):
        result()  # after_func's stop()


@settings(max_examples=400, deadline=None)
@given(c=st.integers(0, len(CALLS) - 1), b=st.integers(0, len(HOSTILE) - 1))
def test_hostile_arguments(c: int, b: int) -> None:
    # (indices, not the objects: hypothesis may hash what it draws, and some do not hash)
    name, fn = CALLS[c]
    bad = HOSTILE[b]
    pending = NewTimerEntries()
    if name == "wait" and a_real_wait(bad):
        return  # a valid timeout: the wait would last as asked (tested elsewhere)
    refused: BaseException | None = None
    try:
        result = fn(bad)
    except (TypeError, ValueError) as e:
        refused = e
    except UserBug:
        pass  # the user's own exception, out as it is
    else:
        clean_up(result)
    if refused is not None:
        assert f"{name}()" in str(refused), (name, bad, refused)
    assert _context.watcher_count(PARENT) == 0, (name, bad)
    assert pending.count() == 0, (name, bad)
    ctx, cancel = gocontext.with_timeout(gocontext.with_value(PARENT, "k", 1), 60)
    ctx.done().add_callback(lambda: None)
    assert ctx.err() is None
    cancel()
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert _context.watcher_count(PARENT) == 0


def test_cancel_refuses_an_argument_and_leaves_the_context_live() -> None:
    for make in (gocontext.with_cancel, lambda p: gocontext.with_timeout(p, 60), gocontext.merge):
        ctx, cancel = make(PARENT)
        for bad in (5, None, (gocontext.Canceled, "not an exception"), (ValueError, None)):
            with pytest.raises(TypeError, match=r"cancel\(\) takes 1 positional argument"):
                cancel(bad)  # type: ignore[call-arg]  # takes none
            assert ctx.err() is None
        cancel()
        assert isinstance(ctx.err(), gocontext.Canceled)


# name, the argument, how to pass a context class as it
CLASS_CALLS: list[tuple[str, str, Callable[[Any], object]]] = [
    ("with_cancel", "parent", lambda c: gocontext.with_cancel(c)),
    ("with_cancel_cause", "parent", lambda c: gocontext.with_cancel_cause(c)),
    ("with_timeout", "parent", lambda c: gocontext.with_timeout(c, 1)),
    ("with_deadline", "parent", lambda c: gocontext.with_deadline(c, 1e8)),
    ("with_value", "parent", lambda c: gocontext.with_value(c, "k", 1)),
    ("without_cancel", "parent", lambda c: gocontext.without_cancel(c)),
    ("merge", "parent", lambda c: gocontext.merge(PARENT, c)),
    ("after_func", "ctx", lambda c: gocontext.after_func(c, print)),
    ("cause", "ctx", lambda c: gocontext.cause(c)),
    ("use", "ctx", lambda c: gocontext.use(c)),
    ("Group", "parent", lambda c: gocontext.Group(c)),
]


@pytest.mark.parametrize(("name", "arg", "call"), CLASS_CALLS, ids=[c[0] for c in CLASS_CALLS])
def test_a_context_class_in_place_of_a_context_is_refused_by_name(
    name: str, arg: str, call: Callable[[Any], object]
) -> None:
    """``with_cancel(MyContext)``: the class has the protocol's methods, but unbound."""
    pending = NewTimerEntries()
    with pytest.raises(TypeError) as info:
        clean_up(call(OtherContext))
    message = str(info.value)
    assert f"{name}() needs a Context as {arg}" in message, message
    assert "OtherContext" in message and "class" in message, message
    assert _context.watcher_count(PARENT) == 0
    assert pending.count() == 0
