"""Tree invariants on random trees and random event orders, against a model of Go's rules.

Rule: a node ends at the first event that reaches it (its own cancel or deadline, or one of an
ancestor's, not across without_cancel), with that event's error and cause, and never changes
after; callbacks registered on it run exactly once, when it ends. A parent may also be reached
through a link (``merge(parent)``, or a parent that is not ours wrapping it), and a tree may end
in a chain hundreds of links deep.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gocontext

from .conftest import FakeClock, OtherContext
from .strategies import KINDS, Event, Tree, trees

# Linked kinds: "merge" is merge(parent) (its cancel takes no cause), "foreign" is
# with_cancel_cause(OtherContext(parent)).
LINKED = ("merge", "foreign")
CAUSED = ("cancel", "foreign")  # the kinds whose cancel takes a cause (unless plain)


@st.composite
def linked_trees(draw: st.DrawFn, tail: int = 0) -> Tree:
    """A tree of ``trees()`` with linked kinds among the others, and a chain of up to *tail*
    more nodes under its last node, mostly linked (deep enough to overflow a stack that
    nested one frame per link; no without_cancel in it, which would cut it short)."""
    tree = draw(trees())
    kinds = [tree.kinds[0]] + [draw(st.sampled_from(KINDS + LINKED)) for _ in tree.kinds[1:]]
    n = len(kinds)
    length = draw(st.integers(0, tail))
    chained = LINKED * 6 + tuple(k for k in KINDS if k != "without_cancel")
    more = draw(st.lists(st.sampled_from(chained), min_size=length, max_size=length))
    watched = draw(st.lists(st.booleans(), min_size=length, max_size=length))
    return Tree(
        tree.parents + tuple(range(n - 1, n - 1 + len(more))),
        tuple(kinds + more),
        tree.timeouts + (3,) * len(more),
        tree.watched + tuple(watched),
    )


@st.composite
def event_lists(draw: st.DrawFn, tree: Tree) -> list[Event]:
    cancelable = [i for i, k in enumerate(tree.kinds) if k not in ("value", "without_cancel")]
    one = st.one_of(
        st.builds(Event, st.just("cancel"), st.sampled_from(cancelable)),
        st.builds(Event, st.just("advance"), st.integers(1, 3)),
    )
    return draw(st.lists(one, max_size=12))


class Cause(Exception):
    pass


def build(
    tree: Tree, clock: FakeClock, plain: frozenset[int] = frozenset()
) -> tuple[list[gocontext.Context], dict[int, object]]:
    """The contexts of *tree*; the "cancel" nodes in *plain* are ``with_cancel`` (no cause)."""
    ctxs: list[gocontext.Context] = []
    cancels: dict[int, object] = {}
    for i, kind in enumerate(tree.kinds):
        parent = ctxs[tree.parents[i]] if i else gocontext.background()
        if kind == "cancel" and i in plain:
            ctx, cancels[i] = gocontext.with_cancel(parent)
        elif kind == "cancel":
            ctx, cancels[i] = gocontext.with_cancel_cause(parent)
        elif kind == "value":
            ctx = gocontext.with_value(parent, "node", i)
        elif kind == "without_cancel":
            ctx = gocontext.without_cancel(parent)
        elif kind == "merge":
            ctx, cancels[i] = gocontext.merge(parent)
        elif kind == "foreign":
            ctx, cancels[i] = gocontext.with_cancel_cause(OtherContext(parent))
        else:
            ctx, cancels[i] = gocontext.with_timeout_cause(
                parent, float(tree.timeouts[i]), Cause(f"deadline {i}")
            )
        ctxs.append(ctx)
    return ctxs, cancels


def model(
    tree: Tree, events: list[Event], start: float, plain: frozenset[int] = frozenset()
) -> list[tuple[str, str] | None]:
    """Expected (error kind, cause text) per node after the events, or None if live."""
    n = len(tree.kinds)
    state: list[tuple[str, str] | None] = [None] * n
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[tree.parents[i]].append(i)
    # Absolute deadlines, as Go computes them: a child's own timer exists only if it is earlier
    # than the inherited deadline (ties: the parent's timer fires first).
    own: dict[int, float] = {}
    inherited: list[float] = [float("inf")] * n
    for i, kind in enumerate(tree.kinds):
        inh = inherited[tree.parents[i]] if i else float("inf")
        if kind == "without_cancel":
            inh = float("inf")
        if kind == "timeout":
            d = start + tree.timeouts[i]
            if d < inh:
                own[i] = d
                inh = d
        inherited[i] = inh

    def end(node: int, what: tuple[str, str]) -> None:
        stack = [node]
        while stack:
            x = stack.pop()
            if state[x] is not None:
                continue
            state[x] = what
            stack.extend(c for c in children[x] if tree.kinds[c] != "without_cancel")

    now = start
    for ev in events:
        if ev.kind == "cancel":  # a timeout's cancel takes no cause (Go's CancelFunc)
            cause = tree.kinds[ev.arg] in CAUSED and ev.arg not in plain
            why = f"cancel {ev.arg}" if cause else "context canceled"
            end(ev.arg, ("Canceled", why))
        else:
            now += ev.arg
            for i, d in sorted(own.items(), key=lambda kv: (kv[1], kv[0])):
                if d <= now:
                    end(i, ("DeadlineExceeded", f"deadline {i}"))
    return state


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_descendant_of_an_ended_node_ends_with_the_first_cause_and_no_other(
    fake_clock: FakeClock, data: st.DataObject
) -> None:
    tree = data.draw(linked_trees(tail=1200))
    events = data.draw(event_lists(tree))
    start = fake_clock.t
    ctxs, cancels = build(tree, fake_clock)
    fired: dict[int, int] = {}
    for i, watched in enumerate(tree.watched):
        if watched:
            fired[i] = 0

            def bump(i: int = i) -> None:
                fired[i] += 1

            ctxs[i].done().add_callback(bump)
    for ev in events:
        if ev.kind == "cancel" and tree.kinds[ev.arg] in CAUSED:
            cancels[ev.arg](Cause(f"cancel {ev.arg}"))  # type: ignore[operator]
        elif ev.kind == "cancel":
            cancels[ev.arg]()  # type: ignore[operator]
        else:
            fake_clock.advance(ev.arg)
    expected = model(tree, events, start)
    for i, ctx in enumerate(ctxs):
        err = ctx.err()
        if expected[i] is None:
            assert err is None, (i, err)
            assert not ctx.done().is_set()
            assert fired.get(i, 0) == 0
        else:
            kind, cause_text = expected[i]  # type: ignore[misc]
            assert type(err).__name__ == kind, (i, err, expected[i])
            assert str(gocontext.cause(ctx)) == cause_text, (i, gocontext.cause(ctx))
            assert ctx.done().is_set()
            if i in fired:
                assert fired[i] == 1
    for cancel in cancels.values():
        cancel()  # type: ignore[operator]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_what_a_node_reports_between_events_is_never_stale(
    fake_clock: FakeClock, data: st.DataObject
) -> None:
    """Nodes are asked between every two events (so what a walk remembers is used, and must
    be dropped when anything ends), in a random order (deep nodes first, or their ancestors),
    and each answer must be the model's at that moment; half the cancelable nodes are plain
    with_cancel (cancelled without the lock when nothing watches them)."""
    tree = data.draw(linked_trees())
    events = data.draw(event_lists(tree))
    n = len(tree.kinds)
    plain = frozenset(i for i in range(n) if tree.kinds[i] == "cancel" and data.draw(st.booleans()))
    start = fake_clock.t
    ctxs, cancels = build(tree, fake_clock, plain)
    for i, watched in enumerate(tree.watched):
        if watched:
            ctxs[i].done().add_callback(lambda: None)
    for step in range(len(events) + 1):
        if step:
            ev = events[step - 1]
            if ev.kind == "cancel" and tree.kinds[ev.arg] in CAUSED and ev.arg not in plain:
                cancels[ev.arg](Cause(f"cancel {ev.arg}"))  # type: ignore[operator]
            elif ev.kind == "cancel":
                cancels[ev.arg]()  # type: ignore[operator]
            else:
                fake_clock.advance(ev.arg)
        expected = model(tree, events[:step], start, plain)
        asked = data.draw(st.permutations(range(n)))
        for i in asked[: data.draw(st.integers(0, n))]:
            err = ctxs[i].err()
            want = expected[i]
            assert (None if err is None else type(err).__name__) == (want and want[0]), (
                step,
                i,
                err,
                want,
            )
            assert ctxs[i].done().is_set() == (want is not None), (step, i)
    for cancel in cancels.values():
        cancel()  # type: ignore[operator]
