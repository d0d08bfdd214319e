"""Hypothesis strategies: random context trees and random orders of events on them."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

KINDS = ("cancel", "value", "without_cancel", "timeout")


@dataclass(frozen=True)
class Tree:
    """Node 0 is a cancelable root under background(); node i > 0 has parent ``parents[i]``."""

    parents: tuple[int, ...]
    kinds: tuple[str, ...]
    timeouts: tuple[int, ...]  # whole seconds, for "timeout" nodes
    watched: tuple[bool, ...]  # a done callback is registered before the events


@dataclass(frozen=True)
class Event:
    kind: str  # "cancel" (node) or "advance" (seconds)
    arg: int


@st.composite
def trees(draw: st.DrawFn, max_nodes: int = 25) -> Tree:
    n = draw(st.integers(1, max_nodes))
    parents = [0] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    kinds = ["cancel"] + [draw(st.sampled_from(KINDS)) for _ in range(1, n)]
    timeouts = [draw(st.integers(1, 5)) for _ in range(n)]
    watched = [draw(st.booleans()) for _ in range(n)]
    return Tree(tuple(parents), tuple(kinds), tuple(timeouts), tuple(watched))


@st.composite
def event_lists(draw: st.DrawFn, tree: Tree) -> list[Event]:
    cancelable = [i for i, k in enumerate(tree.kinds) if k in ("cancel", "timeout")]
    one = st.one_of(
        st.builds(Event, st.just("cancel"), st.sampled_from(cancelable)),
        st.builds(Event, st.just("advance"), st.integers(1, 3)),
    )
    return draw(st.lists(one, max_size=12))
