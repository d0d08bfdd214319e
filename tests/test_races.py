"""Races: many threads cancelling, watching and stopping at once. Bounded loops, real threads."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import gocontext
from gocontext import _context

from .conftest import NEVER

ROUNDS = 200


def run_together(*fns: Callable[[], object]) -> None:
    """Start every fn on its own thread at the same moment; join them all."""
    barrier = threading.Barrier(len(fns))
    errors: queue.Queue[BaseException] = queue.Queue()

    def go(fn: Callable[[], object]) -> None:
        try:
            barrier.wait(NEVER)
            fn()
        except BaseException as e:  # reported to the test below
            errors.put(e)

    threads = [threading.Thread(target=go, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
        assert not t.is_alive()
    assert errors.empty(), errors.get()


def test_many_threads_cancelling_one_context_agree_on_one_cause() -> None:
    for _ in range(ROUNDS // 4):
        ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        child, _ = gocontext.with_cancel(ctx)
        child.done().add_callback(lambda: None)
        causes = [ValueError(str(i)) for i in range(4)]
        run_together(*(lambda c=c: cancel(c) for c in causes))
        winner = gocontext.cause(ctx)
        assert winner in causes
        assert gocontext.cause(child) is winner
        assert ctx.err().__cause__ is winner  # type: ignore[union-attr]


def test_parent_and_child_cancelled_at_once_give_a_consistent_tree() -> None:
    for _ in range(ROUNDS):
        parent, cancel_parent = gocontext.with_cancel_cause(gocontext.background())
        child, cancel_child = gocontext.with_cancel_cause(parent)
        grandchild, _ = gocontext.with_cancel(gocontext.with_value(child, "k", 1))
        watched, _ = gocontext.with_cancel(child)
        ran: list[int] = []
        watched.done().add_callback(lambda ran=ran: ran.append(1))
        p, c = KeyError("parent"), KeyError("child")
        run_together(lambda: cancel_parent(p), lambda: cancel_child(c))
        assert gocontext.cause(parent) is p
        assert gocontext.cause(child) in (p, c)
        assert gocontext.cause(grandchild) is gocontext.cause(child)
        assert gocontext.cause(watched) is gocontext.cause(child)
        assert ran == [1]


def test_callback_runs_exactly_when_its_removal_failed() -> None:
    """add_callback's handle.cancel() racing the context's cancel: ran == not removed."""
    for _ in range(ROUNDS):
        root, cancel = gocontext.with_cancel(gocontext.background())
        leaf, _ = gocontext.with_cancel(gocontext.with_value(root, "k", 1))
        ran: list[int] = []
        handle = leaf.done().add_callback(lambda ran=ran: ran.append(1))
        removed: list[bool] = []
        run_together(cancel, lambda: removed.append(handle.cancel()))
        assert len(ran) == (0 if removed[0] else 1)
        assert _context.watcher_count(root) == 0


def test_after_func_runs_when_stop_lost_the_race() -> None:
    for _ in range(ROUNDS // 2):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        ran = threading.Event()
        stop = gocontext.after_func(ctx, ran.set)
        stopped: list[bool] = []
        run_together(cancel, lambda: stopped.append(stop()))
        if not stopped[0]:
            assert ran.wait(NEVER)
        assert stop() is False


def test_waiters_registering_while_the_context_ends_all_wake() -> None:
    for _ in range(ROUNDS // 4):
        root, cancel = gocontext.with_cancel(gocontext.background())
        leaves = [gocontext.with_cancel(root)[0] for _ in range(3)]
        woke: queue.Queue[bool] = queue.Queue()
        run_together(
            cancel, *(lambda leaf=leaf: woke.put(leaf.done().wait(NEVER)) for leaf in leaves)
        )
        assert [woke.get_nowait() for _ in leaves] == [True, True, True]
        assert _context.watcher_count(root) == 0


def test_watch_and_unwatch_churn_while_an_ancestor_ends() -> None:
    """Callbacks come and go on a deep chain while its root is cancelled: no callback is lost
    or run twice, and nothing stays registered."""
    for _ in range(ROUNDS // 10):
        root, cancel = gocontext.with_cancel(gocontext.background())
        ctx = root
        for depth in range(10):
            ctx = (
                gocontext.with_value(ctx, depth, depth)
                if depth % 2
                else gocontext.with_cancel(ctx)[0]
            )
        leaf = ctx
        counts: list[int] = []
        kept: list[int] = []
        lock = threading.Lock()

        def churn(worker: int) -> None:
            for i in range(50 + worker):
                with lock:
                    counts.append(0)
                    index = len(counts) - 1

                def bump(index: int = index) -> None:
                    with lock:
                        counts[index] += 1

                handle = leaf.done().add_callback(bump)
                if i % 3 and handle.cancel():
                    continue
                with lock:
                    kept.append(index)

        run_together(cancel, lambda: churn(0), lambda: churn(1))
        assert all(counts[i] == 1 for i in kept)
        assert all(c in (0, 1) for c in counts)
        assert _context.watcher_count(root) == 0
