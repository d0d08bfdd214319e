"""Code that interrupts the library in its own thread while it holds the tree lock: a
finalizer run by the garbage collector, a signal handler. Either may cancel a context or remove
a callback, and must not hang the thread on its own lock.

Each case runs in a fresh interpreter whose collector is tuned so that the finalizer runs
inside the library's locked section (the thresholds try every allocation count, so one of
them lands there); a hang becomes a failure at the bound.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import NEVER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIO = r"""
import faulthandler, gc, signal, sys, threading
faulthandler.dump_traceback_later({never}, exit=True)  # a hang shows where, then fails
import gocontext
from gocontext import _tree

how, k = sys.argv[1], int(sys.argv[2])
victim, cancel_victim = gocontext.with_cancel(gocontext.background())
victim.done().add_callback(lambda: None)  # watched: its cancel takes the tree lock
held = victim.done().add_callback(lambda: None)
other, cancel_other = gocontext.with_cancel(gocontext.background())
other.done()
seen = []
inside = []


def act():
    inside.append(_tree._lock.__repr__())  # "held" when this runs inside the library
    if how == "cancel":
        cancel_victim()
        seen.append(victim.err())
    else:
        seen.append(held.cancel())


if sys.argv[3] == "signal":
    signal.signal(signal.SIGUSR1, lambda *a: act())
    class Finalizer:
        def __del__(self):
            signal.raise_signal(signal.SIGUSR1)  # the handler runs at the next bytecode
else:
    class Finalizer:
        def __del__(self):
            act()

gc.collect()
gc.disable()
f = Finalizer(); f.me = f; del f  # a garbage cycle with a finalizer
gc.set_threshold(k)
gc.enable()
other.done().add_callback(lambda: None)  # allocates inside the tree lock
gc.set_threshold(700)
gc.collect()
cancel_other()
from gocontext import _context
print(inside, seen, repr(victim.err()), _context.watcher_count(victim), flush=True)
"""


@pytest.mark.parametrize("via", ["finalizer", "signal"])
@pytest.mark.parametrize("how", ["cancel", "unregister"])
def test_code_that_interrupts_the_library_in_its_thread_never_hangs_it(how: str, via: str) -> None:
    if via == "signal" and sys.platform == "win32":
        pytest.skip("needs SIGUSR1")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    locked = 0
    for k in range(1, 12):
        out = subprocess.run(
            [sys.executable, "-c", SCENARIO.format(never=NEVER), how, str(k), via],
            capture_output=True,
            text=True,
            timeout=NEVER * 3,
            env=env,
            check=False,
        )
        assert out.returncode == 0, (k, out.stdout, out.stderr[-3000:])
        if "held" in out.stdout:
            locked += 1
            # ended, or the callback removed: here and now, or as the lock was let go
            end = "Canceled('context canceled') 0" if how == "cancel" else "None 1"
            assert out.stdout.rstrip().endswith(end), out.stdout
    assert locked, "no threshold ran the finalizer inside the library's lock"
