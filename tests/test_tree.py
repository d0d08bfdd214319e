"""Cancellation through the tree: Go's documented semantics, with our parents and foreign ones."""

from __future__ import annotations

import gc
import weakref

import pytest

import gocontext
from gocontext import _context, _tree

from .conftest import NEVER, OtherContext


def test_background_and_todo_are_live_roots_without_deadline_or_values() -> None:
    for root in (gocontext.background(), gocontext.todo()):
        assert root.err() is None
        assert root.deadline() is None
        assert root.value("anything") is None
        assert not root.done().is_set()
        assert root.done() is root.done()
        assert gocontext.cause(root) is None
    assert gocontext.background() is gocontext.background()
    assert gocontext.todo() is not gocontext.background()
    assert "todo" in repr(gocontext.todo())


def test_cancel_ends_the_child_and_is_idempotent() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert ctx.err() is None
    assert cancel() is None
    cancel()
    err = ctx.err()
    assert isinstance(err, gocontext.Canceled)
    assert str(err) == "context canceled"
    assert ctx.done().is_set()


def test_err_is_a_fresh_instance_of_the_same_kind_every_call() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    a, b = ctx.err(), ctx.err()
    assert a is not b
    assert type(a) is type(b) is gocontext.Canceled


def test_cancelling_parent_cancels_grandchild_with_parent_cause(make_parent) -> None:  # type: ignore[no-untyped-def]
    parent, cancel_parent = make_parent()
    child, _ = gocontext.with_cancel(parent)
    grandchild, _ = gocontext.with_cancel(gocontext.with_value(child, "k", "v"))
    why = RuntimeError("shutdown")
    cancel_parent(why)
    assert grandchild.done().wait(NEVER)
    err = grandchild.err()
    assert isinstance(err, gocontext.Canceled)
    assert err.__cause__ is why
    assert gocontext.cause(grandchild) is why
    assert gocontext.cause(child) is why


def test_cancelling_child_leaves_parent_and_siblings_alone(make_parent) -> None:  # type: ignore[no-untyped-def]
    parent, _ = make_parent()
    a, cancel_a = gocontext.with_cancel(parent)
    b, _ = gocontext.with_cancel(parent)
    watched = b.done()
    cancel_a()
    assert a.err() is not None
    assert parent.err() is None
    assert b.err() is None
    assert not watched.is_set()


def test_child_cancelled_first_keeps_its_own_cause() -> None:
    parent, cancel_parent = gocontext.with_cancel_cause(gocontext.background())
    child, cancel_child = gocontext.with_cancel_cause(parent)
    mine, theirs = ValueError("mine"), ValueError("theirs")
    cancel_child(mine)
    cancel_parent(theirs)
    assert gocontext.cause(child) is mine
    assert gocontext.cause(parent) is theirs


def test_cancel_after_parent_ended_does_not_change_the_cause() -> None:
    """Go: a child already canceled through its parent ignores its own later cancel."""
    parent, cancel_parent = gocontext.with_cancel_cause(gocontext.background())
    child, cancel_child = gocontext.with_cancel_cause(parent)
    first = KeyError("first")
    cancel_parent(first)
    cancel_child(KeyError("late"))
    assert gocontext.cause(child) is first


def test_child_of_a_done_parent_is_born_done(make_parent) -> None:  # type: ignore[no-untyped-def]
    parent, cancel = make_parent()
    why = OSError("gone")
    cancel(why)
    for ctx, _ in (
        gocontext.with_cancel(parent),
        gocontext.with_cancel_cause(parent),
        gocontext.with_timeout(parent, 60),
    ):
        assert isinstance(ctx.err(), gocontext.Canceled)
        assert gocontext.cause(ctx) is why
        assert ctx.done().is_set()


def test_cause_without_a_custom_cause_is_the_error() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    cancel()
    assert isinstance(gocontext.cause(ctx), gocontext.Canceled)
    assert ctx.err().__cause__ is None  # type: ignore[union-attr]


def test_cancel_cause_rejects_a_non_exception_cause() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    with pytest.raises(TypeError, match="cause"):
        cancel("not an exception")  # type: ignore[arg-type]
    assert ctx.err() is None


def test_pair_is_a_tuple_and_a_context_manager() -> None:
    pair = gocontext.with_cancel(gocontext.background())
    assert isinstance(pair, tuple)
    assert pair.ctx is pair[0]
    assert pair.cancel is pair[1]
    with pair as (ctx, cancel):
        assert ctx.err() is None
    assert ctx.err() is not None


def test_pair_context_manager_cancels_even_when_the_body_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        with gocontext.with_timeout(gocontext.background(), 60) as (ctx, _):
            1 / 0
    assert isinstance(ctx.err(), gocontext.Canceled)


@pytest.mark.parametrize(
    "derive",
    [
        gocontext.with_cancel,
        gocontext.with_cancel_cause,
        gocontext.without_cancel,
        lambda p: gocontext.with_timeout(p, 1),
        lambda p: gocontext.with_deadline(p, 1.0),
        lambda p: gocontext.with_value(p, "k", 1),
        lambda p: gocontext.merge(p),
        lambda p: gocontext.after_func(p, print),
        gocontext.cause,
        gocontext.use,
    ],
)
@pytest.mark.parametrize("bad", [None, "ctx", 42, object()])
def test_a_parent_that_is_not_a_context_is_a_type_error(derive, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="needs a Context") as info:
        derive(bad)
    assert ("None" if bad is None else type(bad).__name__) in str(info.value)


def test_merge_needs_a_parent() -> None:
    with pytest.raises(TypeError, match="at least one"):
        gocontext.merge()


def test_foreign_parent_is_linked_and_its_values_are_seen() -> None:
    inner, cancel = gocontext.with_cancel_cause(
        gocontext.with_value(gocontext.background(), "k", 1)
    )
    other = OtherContext(inner)
    child, _ = gocontext.with_cancel(other)
    value_child = gocontext.with_value(other, "j", 2)
    assert child.value("k") == 1
    assert value_child.value("k") == 1
    assert value_child.value("j") == 2
    why = RuntimeError("why")
    cancel(why)
    assert child.done().wait(NEVER)
    assert value_child.done().wait(NEVER)
    assert gocontext.cause(child) is why
    assert gocontext.cause(other) is why  # found through value(), as Go's Cause does
    assert isinstance(value_child.err(), gocontext.Canceled)


def test_foreign_child_cancel_releases_its_registration_on_the_parent() -> None:
    inner, _ = gocontext.with_cancel(gocontext.background())
    child, cancel = gocontext.with_cancel(OtherContext(inner))
    assert _context.watcher_count(inner) == 1
    cancel()
    assert _context.watcher_count(inner) == 0


def test_forgotten_children_are_freed() -> None:
    """A child dropped without cancel() is not kept alive by its long-lived parent."""
    parent, cancel = gocontext.with_cancel(gocontext.background())
    refs = []
    for _ in range(1000):
        child, _ = gocontext.with_cancel(parent)
        grandchild, _ = gocontext.with_cancel(gocontext.with_value(child, "k", 1))
        refs.append(weakref.ref(child))
        del child, grandchild, _
    gc.collect()
    assert all(r() is None for r in refs[:-1])  # the loop's last binding may linger
    assert _context.watcher_count(parent) == 0
    cancel()


def test_a_watched_forgotten_child_stays_alive_until_its_callback_ran() -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())
    ran = []
    child, _ = gocontext.with_cancel(gocontext.with_value(parent, "k", 1))
    ref = weakref.ref(child)
    child.done().add_callback(lambda: ran.append(True))
    del child, _
    gc.collect()
    assert ref() is not None
    cancel()
    assert ran == [True]
    gc.collect()
    assert ref() is None


def test_removing_the_last_watcher_unregisters_the_chain() -> None:
    root, cancel = gocontext.with_cancel(gocontext.background())
    mid, _ = gocontext.with_cancel(root)
    leaf, _ = gocontext.with_cancel(gocontext.with_value(mid, "k", 1))
    handle = leaf.done().add_callback(lambda: None)
    assert _context.watcher_count(root) == 1
    assert _context.watcher_count(mid) == 1
    assert handle.cancel() is True
    assert handle.cancel() is False
    assert _context.watcher_count(root) == 0
    assert _context.watcher_count(mid) == 0
    cancel()


def test_merge_ends_with_the_first_parent_and_takes_the_earliest_deadline() -> None:
    a, cancel_a = gocontext.with_cancel_cause(
        gocontext.with_value(gocontext.background(), "k", "a")
    )
    b, cancel_b = gocontext.with_timeout(gocontext.with_value(gocontext.background(), "j", "b"), 60)
    ctx, cancel = gocontext.merge(a, b)
    assert ctx.deadline() == b.deadline()
    assert ctx.value("k") == "a"
    assert ctx.value("j") == "b"
    child = gocontext.with_value(ctx, "x", 1)
    assert child.value("j") == "b"
    why = ValueError("a ended")
    cancel_a(why)
    assert ctx.done().wait(NEVER)
    assert gocontext.cause(ctx) is why
    assert isinstance(child.err(), gocontext.Canceled)
    cancel_b()
    assert gocontext.cause(ctx) is why
    assert "merge(" in repr(ctx)


def test_merge_cancel_releases_its_parents() -> None:
    a, cancel_a = gocontext.with_cancel(gocontext.background())
    b, cancel_b = gocontext.with_cancel(gocontext.background())
    ctx, cancel = gocontext.merge(a, b)
    assert _context.watcher_count(a) == _context.watcher_count(b) == 1
    cancel()
    assert _context.watcher_count(a) == _context.watcher_count(b) == 0
    assert a.err() is None and isinstance(ctx.err(), gocontext.Canceled)


def test_merge_of_a_done_parent_is_born_done() -> None:
    a, cancel_a = gocontext.with_cancel(gocontext.background())
    cancel_a()
    ctx, _ = gocontext.merge(gocontext.background(), a)
    assert isinstance(ctx.err(), gocontext.Canceled)


def test_without_cancel_keeps_values_and_drops_cancellation_and_deadline() -> None:
    parent, cancel = gocontext.with_timeout(gocontext.with_value(gocontext.background(), "k", 1), 5)
    ctx = gocontext.without_cancel(parent)
    cancel()
    assert ctx.err() is None
    assert ctx.deadline() is None
    assert ctx.value("k") == 1
    assert not ctx.done().is_set()
    child, cancel_child = gocontext.with_cancel(ctx)
    assert child.err() is None
    cancel_child()
    assert child.err() is not None


def test_repr_shows_the_chain_and_state_but_never_values() -> None:
    user = gocontext.Key[str]("user")
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ctx = gocontext.with_value(ctx, user, "secret-token")
    text = repr(ctx)
    assert text == "<gocontext background.with_cancel.with_value(key=user) done=False>"
    cancel()
    assert repr(ctx).endswith("done=True>")
    assert "secret" not in repr(ctx)
    t, _ = gocontext.with_timeout(gocontext.todo(), 60)
    assert repr(t).startswith("<gocontext todo.with_deadline(+")


def test_check_raises_the_error_once_done() -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    ctx.check()  # type: ignore[attr-defined]
    why = LookupError("why")
    cancel(why)
    with pytest.raises(gocontext.Canceled) as info:
        ctx.check()  # type: ignore[attr-defined]
    assert info.value.__cause__ is why


def test_errors_are_ordinary_exceptions() -> None:
    import asyncio

    import trio

    for cls in (gocontext.Canceled, gocontext.DeadlineExceeded):
        assert issubclass(cls, gocontext.ContextError)
        assert issubclass(cls, Exception)
        assert not issubclass(cls, asyncio.CancelledError)
        assert not issubclass(cls, trio.Cancelled)
        assert not issubclass(cls, KeyboardInterrupt)
    assert issubclass(gocontext.DeadlineExceeded, TimeoutError)
    assert gocontext.Cancelled is gocontext.Canceled
    assert str(gocontext.DeadlineExceeded()) == "context deadline exceeded"


def test_contexts_do_not_pickle_without_an_integration() -> None:
    """Run in a fresh interpreter: importing gocontext.ray elsewhere installs a reducer."""
    import subprocess
    import sys

    code = (
        "import pickle, gocontext\n"
        "ctx, _ = gocontext.with_cancel(gocontext.background())\n"
        "try:\n"
        "    pickle.dumps(ctx)\n"
        "except TypeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "cannot be pickled" in out.stdout


def test_a_walk_never_tags_over_the_nodes_own_end() -> None:
    """err() looks at the node's own state, then walks its ancestors; a cancel of the node
    landing between the two (another thread's) must not be hidden by the tag the walk writes."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()  # as if it landed after err() looked at the node and before it walked
    assert _tree._look_up(ctx) is not None
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert ctx.done().is_set()


def _ended_after(how: str) -> tuple[weakref.ref[gocontext.Context], gocontext.Done]:
    """End a context whose done() was asked for, the way *how* says; drop it; return a weak
    reference to it and its Done."""
    parent, cancel_parent = gocontext.with_cancel(gocontext.background())
    parent = gocontext.with_value(parent, "payload", bytearray(1 << 20))  # what a request holds
    if how == "timeout":
        ctx, cancel = gocontext.with_timeout(parent, NEVER * 100)
    else:
        ctx, cancel = gocontext.with_cancel(parent)
    done = ctx.done()
    if how == "one callback":
        done.add_callback(lambda: None)
    elif how in ("two callbacks", "parent ends"):
        done.add_callback(lambda: None)
        done.add_callback(lambda: None)
    if how == "asked after the end":
        cancel()
        done = ctx.done()
    elif how == "parent ends":
        cancel_parent()  # handed down to ctx, which is watched
    else:
        cancel()
    ref = weakref.ref(ctx)
    return ref, done


_HOW = ["done only", "one callback", "two callbacks", "parent ends", "timeout"]


@pytest.mark.parametrize("how", [*_HOW, "asked after the end"])
def test_an_ended_context_is_freed_without_the_garbage_collector(how: str) -> None:
    # A node and its Done refer to each other: the end breaks that cycle, so a request's
    # context (and the values it holds) goes as soon as nothing refers to it.
    gc.collect()
    gc.disable()
    try:
        ref, done = _ended_after(how)
        assert ref() is None
        assert done.is_set()
    finally:
        gc.enable()


@pytest.mark.parametrize("how", _HOW)
def test_the_done_of_a_freed_context_still_answers_and_runs_what_comes_later(how: str) -> None:
    ref, done = _ended_after(how)
    gc.collect()
    assert ref() is None
    assert done.is_set()
    assert done.wait(0) is True
    assert done.wait() is True
    ran: list[int] = []
    handle = done.add_callback(lambda: ran.append(1))  # runs at once, here
    assert ran == [1]
    assert handle.cancel() is False
    assert "is_set=True" in repr(done)
