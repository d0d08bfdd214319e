"""Thread storms over one shared tree: random derive, cancel, wait, callbacks and after_func.

Afterwards every context must report an error and cause that some cancel or deadline on its
own path could have given it, every callback and after_func ran exactly once (or was stopped),
every waiter woke, and nothing is left registered, scheduled or running. Modest by default;
``GOCONTEXT_STRESS=1`` makes it 64 threads and many more operations.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import gocontext
from gocontext import _afterfunc, _context, _timer

from ..conftest import NEVER, NewTimerEntries

pytestmark = pytest.mark.stress

HEAVY = os.environ.get("GOCONTEXT_STRESS") == "1"
THREADS = 64 if HEAVY else 16
OPS = 3000 if HEAVY else 600
ROUNDS = 5 if HEAVY else 3


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt/SystemExit raised by a callback (without alarming pytest)."""


@dataclass(eq=False)
class Node:
    ctx: gocontext.Context
    cancel: Callable[..., None] | None
    parents: tuple[Node, ...]
    plain_cancel: bool  # its cancel() takes no cause: it ends it with a bare Canceled
    own: set[int] = field(default_factory=set)  # ids of the causes that may end it itself
    fired: int = 0
    registered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def quiet_log() -> Iterator[list[logging.LogRecord]]:
    """Collect what the library logs (callbacks that raise on purpose) instead of printing it."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gocontext")
    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def path_of(node: Node) -> tuple[set[int], bool]:
    """The causes that may end *node* (its own and its ancestors'), and whether a bare
    cancel() on its path may."""
    causes: set[int] = set()
    plain = False
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        causes |= n.own
        plain = plain or n.plain_cancel
        stack.extend(n.parents)
    return causes, plain


def storm(seed: int) -> None:
    kinds: dict[int, type[gocontext.ContextError]] = {}  # cause id -> the error it ends with
    keep: list[BaseException] = []  # keeps cause objects alive (their ids stay unique)
    nodes_lock = threading.Lock()
    root_cause = KeyError("root")
    keep.append(root_cause)
    kinds[id(root_cause)] = gocontext.Canceled
    root, cancel_root = gocontext.with_cancel_cause(gocontext.background())
    nodes = [Node(root, None, (), False, {id(root_cause)})]
    after_ran = [0]
    after_stopped = [0]
    after_expected = [0]
    after_lock = threading.Lock()
    after_all = threading.Condition(after_lock)
    errors: list[BaseException] = []
    timer_before = NewTimerEntries()

    def cause_for(kind: type[gocontext.ContextError], text: str) -> BaseException:
        c = (TimeoutError if kind is gocontext.DeadlineExceeded else ValueError)(text)
        with nodes_lock:
            keep.append(c)
            kinds[id(c)] = kind
        return c

    def work(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        try:
            for _ in range(OPS):
                with nodes_lock:
                    node = rng.choice(nodes)
                    other = rng.choice(nodes)
                op = rng.random()
                if op < 0.35:
                    derive(rng, node, other)
                elif op < 0.55:
                    if node.cancel is not None:
                        try:
                            if node.plain_cancel:
                                node.cancel()
                            else:
                                cause = cause_for(gocontext.Canceled, "cancel")
                                with node.lock:
                                    node.own.add(id(cause))
                                node.cancel(cause)
                        except Interrupt:
                            pass  # re-raised after the whole cancel: expected
                elif op < 0.7:
                    if node.ctx.done().wait(rng.choice([0, 0.0005, 0.002])):
                        assert node.ctx.err() is not None
                elif op < 0.85:
                    register(rng, node)
                else:
                    after(rng, node)
        except BaseException as e:  # reported by the test
            errors.append(e)

    def derive(rng: random.Random, node: Node, other: Node) -> None:
        k = rng.randrange(5)
        ctx = node.ctx
        if k == 0:
            c, cancel = gocontext.with_cancel_cause(ctx)
            new = Node(c, cancel, (node,), False)
        elif k == 1:  # a deadline that may fire during the storm, with its own cause
            cause = cause_for(gocontext.DeadlineExceeded, "deadline")
            c, cancel = gocontext.with_timeout_cause(ctx, rng.choice([0.001, 0.01, 3600]), cause)
            new = Node(c, cancel, (node,), True, {id(cause)})
        elif k == 2:
            new = Node(gocontext.with_value(ctx, rng.random(), 1), None, (node,), False)
        elif k == 3:
            c, cancel = gocontext.merge(ctx, other.ctx)
            new = Node(c, cancel, (node, other), True)
        else:
            c, cancel = gocontext.with_cancel(ctx)
            new = Node(c, cancel, (node,), True)
        with nodes_lock:
            nodes.append(new)

    def register(rng: random.Random, node: Node) -> None:
        how = rng.randrange(4)

        def fn() -> None:
            with node.lock:
                node.fired += 1
            if how == 0:
                raise ValueError("a callback that fails")
            if how == 1:
                raise Interrupt("a callback that interrupts")

        with node.lock:
            node.registered += 1
        try:
            handle = node.ctx.done().add_callback(fn)
        except Interrupt:
            return  # already done: it ran here, and its interrupt came out here
        if rng.random() < 0.2 and handle.cancel():
            with node.lock:
                node.registered -= 1

    def after(rng: random.Random, node: Node) -> None:
        def fn() -> None:
            with after_lock:
                after_ran[0] += 1
                after_all.notify_all()

        with after_lock:
            after_expected[0] += 1
        stop = gocontext.after_func(node.ctx, fn)
        if rng.random() < 0.2 and stop():
            with after_lock:
                after_stopped[0] += 1

    # Threads that block with no timeout on random nodes: all must wake by the end.
    blocked: list[bool] = []

    def block(node: Node) -> None:
        blocked.append(node.ctx.done().wait())

    workers = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    waiters = [threading.Thread(target=block, args=(nodes[0],)) for _ in range(4)]
    for t in workers + waiters:
        t.start()
    for t in workers:
        t.join(NEVER * 6)
        assert not t.is_alive(), "a storm thread hangs"
    assert not errors, errors[0]
    with contextlib.suppress(Interrupt):  # re-raised after the whole cancel: expected
        cancel_root(root_cause)
    for t in waiters:
        t.join(NEVER)
        assert not t.is_alive(), "a waiter was never woken"
    assert blocked == [True] * len(waiters)
    for n in nodes:  # defer cancel(): every cancel func is called once the work is over
        if n.cancel is not None:
            with contextlib.suppress(Interrupt):
                n.cancel()

    for n in nodes:
        assert n.ctx.done().wait(NEVER)
        err = n.ctx.err()
        why = gocontext.cause(n.ctx)
        assert err is not None and why is not None
        causes, plain = path_of(n)
        if isinstance(why, gocontext.Canceled) and why.__cause__ is None:
            assert plain and type(err) is gocontext.Canceled, (n.ctx, why)
        else:
            assert id(why) in causes, (n.ctx, why)
            assert type(err) is kinds[id(why)], (n.ctx, err, why)
            assert err.__cause__ is why
        with n.lock:
            assert n.fired == n.registered, (n.ctx, n.fired, n.registered)
    with after_lock:
        assert after_all.wait_for(
            lambda: after_ran[0] == after_expected[0] - after_stopped[0], NEVER
        ), (after_ran[0], after_expected[0], after_stopped[0])
    assert _context.watcher_count(root) == 0
    assert timer_before.count() == 0


def test_thread_storms_over_a_shared_tree(quiet_log: list[logging.LogRecord]) -> None:
    before = {t.ident for t in threading.enumerate()}
    for seed in range(ROUNDS):
        storm(seed)
    extra = [
        t
        for t in threading.enumerate()
        if t.ident not in before and not t.name.startswith("gocontext-")
    ]
    assert not extra
    assert _afterfunc.threads() <= _afterfunc._MAX_THREADS
    assert _timer.timer.threads() <= 1
