"""Ctrl-C: a real SIGINT delivered to the main thread while it waits, or while it cancels a
tree with callbacks and waiting threads. The wait raises KeyboardInterrupt and leaves nothing
registered; a cancel finishes (every callback once, every waiter woken) whatever the moment.

Each check runs in a fresh interpreter: a KeyboardInterrupt gone astray must not end the test
session, and the signal handler there is Python's default one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.stress

HEAVY = os.environ.get("GOCONTEXT_STRESS") == "1"
ROUNDS = 2000 if HEAVY else 200
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRELUDE = r"""
import faulthandler, functools, random, signal, sys, threading, time
import gocontext

faulthandler.dump_traceback_later(100, exit=True)  # a hang shows where, then fails
from gocontext import _context, _timer

MAIN = threading.main_thread().ident
sys.setswitchinterval(1e-5)  # threads interleave finely: a signal may land anywhere
ROUNDS = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]))


def bounded(cond, what):
    end = time.monotonic() + 30
    while not cond():
        if time.monotonic() > end:
            print("never:", what, flush=True)
            import os
            os._exit(3)
        time.sleep(0.0002)


def interrupt_when(cond):
    sent = threading.Event()

    def run():
        bounded(cond, "the condition to interrupt")
        signal.pthread_kill(MAIN, signal.SIGINT)
        sent.set()

    t = threading.Thread(target=run)
    t.start()
    return t, sent


# A thread that, once go is set, spins `spin` loops and sends SIGINT to the main thread;
# returns it and `sent`, released once the signal is out. A bare lock, not an Event:
# threading.Event.wait() itself is not safe against a KeyboardInterrupt landing inside it
# (CPython's Condition), and this is where it lands.
def interrupt_after(go, spin):
    sent = threading.Lock()
    sent.acquire()

    def send():
        go.wait()
        for _ in range(spin):
            pass
        signal.pthread_kill(MAIN, signal.SIGINT)
        sent.release()

    t = threading.Thread(target=send)
    t.start()
    return t, sent
"""

WAIT = r"""
for i in range(ROUNDS):
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    child, _ = gocontext.with_cancel(ctx)
    t, sent = interrupt_when(lambda: _context.watcher_count(child) == 1)
    try:
        if i % 2:
            child.done().wait()
        else:
            child.done().wait(60)
        raise SystemExit("wait() returned without being woken")
    except KeyboardInterrupt:
        pass
    t.join()
    assert _context.watcher_count(child) == 0, "the interrupted wait left a registration"
    assert _context.watcher_count(ctx) == 0
    assert child.err() is None
    woke = []
    w = threading.Thread(target=lambda: woke.append(child.done().wait(30)))
    w.start()
    bounded(lambda: _context.watcher_count(child) == 1, "a second waiter")
    cancel()
    w.join()
    assert woke == [True]
print("ok", flush=True)
"""

CANCEL = r"""
interrupted = 0
for i in range(ROUNDS):
    root, cancel = gocontext.with_cancel(gocontext.background())
    kids = [gocontext.with_timeout(root, 3600)[0] for _ in range(30)]
    ran = [0] * len(kids)
    worked = [0] * len(kids)
    for j, k in enumerate(kids):
        # A callback in C: nothing can interrupt it, so it must run, exactly once.
        k.done().add_callback(functools.partial(ran.__setitem__, j, 1))

        def work(j=j):  # one in Python, where the signal may land (and interrupt it)
            for _ in range(rng.randrange(50)):
                pass
            worked[j] += 1

        k.done().add_callback(work)
    woke = []
    waiters = [
        threading.Thread(target=lambda k=k: woke.append(k.done().wait()))
        for k in rng.sample(kids, 5)
    ]
    for w in waiters:
        w.start()
    bounded(lambda: sum(_context.watcher_count(k) for k in kids) == 65, "waiters registered")
    go = threading.Event()
    sender, sent = interrupt_after(go, rng.randrange(300))
    try:
        go.set()
        cancel()
        sent.acquire()
        for _ in range(1000):  # the handler runs at the next check in this thread
            pass
        time.sleep(0.001)
    except KeyboardInterrupt:
        interrupted += 1
    sender.join()
    cancel()  # as `with` or defer would: idempotent, completes whatever was cut short
    for w in waiters:
        w.join(30)
        assert not w.is_alive(), "a waiter was stranded"
    assert woke == [True] * 5
    assert ran == [1] * len(kids), ran
    # Each Python callback ran once, but for at most one that the signal interrupted.
    assert worked.count(1) >= len(kids) - 1 and set(worked) <= {0, 1}, worked
    assert all(isinstance(k.err(), gocontext.Canceled) for k in kids)
    assert _context.watcher_count(root) == 0
    assert _timer.timer.pending() == 0, _timer.timer.pending()
    later, cancel_later = gocontext.with_cancel(root)
    assert later.done().wait(0)
print("ok", interrupted, flush=True)
"""

# Nodes with one callback each (the commonest watched node: a scope's, an HTTP call's) under
# a parent that stays watched: a Ctrl-C landing anywhere in their cancels must leave the
# parent holding nothing of theirs, and run every callback once.
ONE_CALLBACK = r"""
interrupted = 0
for i in range(ROUNDS):
    root, cancel_root = gocontext.with_cancel(gocontext.background())
    root.done().add_callback(int)  # root stays watched whatever its children do
    pairs = [gocontext.with_cancel(root) for _ in range(50)]
    ran = [0] * len(pairs)
    for j, (k, _) in enumerate(pairs):
        k.done().add_callback(functools.partial(ran.__setitem__, j, 1))
    assert _context.watcher_count(root) == 51
    go = threading.Event()
    sender, sent = interrupt_after(go, rng.randrange(3000))
    try:
        go.set()
        for _, cancel in pairs:
            cancel()
        sent.acquire()
        for _ in range(1000):
            pass
        time.sleep(0.001)
    except KeyboardInterrupt:
        interrupted += 1
    sender.join()
    for _, cancel in pairs:
        cancel()
    assert ran == [1] * len(pairs), ran
    assert _context.watcher_count(root) == 1, _context.watcher_count(root)
    assert all(isinstance(k.err(), gocontext.Canceled) for k, _ in pairs)
    cancel_root()
print("ok", interrupted, flush=True)
"""


def run(body: str, seed: int) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, str(ROUNDS), str(seed)],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_ctrl_c_in_wait_raises_and_leaves_nothing_registered() -> None:
    assert run(WAIT, 1).startswith("ok")


# A Ctrl-C that reaches the main thread just before wait() blocks: CPython runs the handler
# only once the blocking acquire returns, so a plain acquire() would wait forever (as
# threading.Event.wait() does). Thousands of rounds, as the window is a few bytecodes wide.
JUST_BEFORE_BLOCKING = r"""
sys.setswitchinterval(1e-6)

def soon_after_registered(ctx):
    while _context.watcher_count(ctx) != 1:  # no sleep: the signal must land at once
        time.sleep(0)
    signal.pthread_kill(MAIN, signal.SIGINT)


for i in range(ROUNDS * 15):
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    t = threading.Thread(target=soon_after_registered, args=(ctx,))
    t.start()
    try:
        ctx.done().wait() if i % 2 else ctx.done().wait(60)
        raise SystemExit("wait() returned without being woken")
    except KeyboardInterrupt:
        pass
    t.join()
    assert _context.watcher_count(ctx) == 0, "the interrupted wait left a registration"
print("ok", flush=True)
"""


def test_ctrl_c_just_before_wait_blocks_still_interrupts_it() -> None:
    assert run(JUST_BEFORE_BLOCKING, 5).startswith("ok")


def test_ctrl_c_during_cancel_strands_no_waiter_and_skips_no_callback() -> None:
    out = run(CANCEL, 2)
    assert out.startswith("ok")


def test_ctrl_c_during_one_callback_cancels_leaves_no_registration_on_the_parent() -> None:
    out = run(ONE_CALLBACK, 3)
    assert out.startswith("ok")
