"""Forks under load: 4 threads create, watch, wait on and cancel contexts (and leave half of
their deadlines to the timer) while the main thread forks; every child must create and fire a
timer, cancel across threads and run an after_func. 40 forks by default, 400 with
``GOCONTEXT_STRESS=1``."""

from __future__ import annotations

import os
import threading

import pytest

import gocontext
from gocontext import _afterfunc

from ..conftest import NEVER
from ..test_fork import child_uses_timers, exit_code, fork_child

pytestmark = [
    pytest.mark.stress,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

FORKS = 400 if os.environ.get("GOCONTEXT_STRESS") == "1" else 40


def test_forks_under_load() -> None:
    stop = threading.Event()
    root, cancel_root = gocontext.with_cancel(gocontext.background())
    ran = threading.Semaphore(0)

    def churn(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i += 1
            ctx, cancel = gocontext.with_timeout(root, 0.001)
            kids = [gocontext.with_cancel(ctx)[0] for _ in range(5)]
            for k in kids:
                k.done().add_callback(lambda: None)
            if i % 7 == 0:
                gocontext.after_func(ctx, ran.release)
            kids[0].done().wait(0.0001)
            if i % 2:
                cancel()

    # A backlog in the after_func pool at every fork (churn's functions queue behind these):
    # the child must drop it, not run the parent's functions, which wait on the semaphore's lock
    # that a parent thread may hold at the fork, until every pool thread of the child is stuck.
    gate = threading.Event()
    backlog, release_backlog = gocontext.with_cancel(gocontext.background())
    for _ in range(_afterfunc._MAX_THREADS + 4):
        gocontext.after_func(backlog, lambda: gate.wait(NEVER))
    release_backlog()
    workers = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    try:
        codes = [exit_code(fork_child(child_uses_timers)) for _ in range(FORKS)]
    finally:
        gate.set()
        stop.set()
        for w in workers:
            w.join(NEVER)
        cancel_root()
    assert codes == [0] * FORKS
