"""Code that interrupts the library in its own thread while it holds the tree lock: a
finalizer (``__del__``), a signal handler. Either may cancel a context or remove a callback,
and must not hang the thread on its own lock.

The finalizer is a callback object that only the registry holds: removing it frees it, and
runs its ``__del__``, inside the library's locked section (a signal it raises there has its
handler run there too). Each case runs in a fresh interpreter; a hang becomes a failure at the
bound.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import NEVER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIO = r"""
import faulthandler, signal, sys
faulthandler.dump_traceback_later({never}, exit=True)  # a hang shows where, then fails
import gocontext
from gocontext import _context, _tree

how, via = sys.argv[1], sys.argv[2]
victim, cancel_victim = gocontext.with_cancel(gocontext.background())
victim.done().add_callback(lambda: None)  # watched: its cancel takes the tree lock
held = victim.done().add_callback(lambda: None)
other, cancel_other = gocontext.with_cancel(gocontext.background())
other.done().add_callback(lambda: None)
seen = []
inside = []


fresh, _ = gocontext.with_cancel(gocontext.background())  # no done() asked yet


def act():
    inside.append(repr(_tree._lock))  # "held" when this runs inside the library
    try:
        if how == "cancel":
            cancel_victim()
            seen.append(victim.err())
        elif how == "unregister":
            seen.append(held.cancel())
        elif how == "first done()":
            fresh.done()
        elif how == "add_callback":
            victim.done().add_callback(lambda: None)
        elif how == "wait":
            victim.done().wait(0.001)
        elif how == "merge":
            gocontext.merge(victim, fresh)
    except RuntimeError as e:
        seen.append(str(e))


if via == "signal":
    signal.signal(signal.SIGUSR1, lambda *a: act())


class Finalized:
    def __call__(self):
        pass

    def __del__(self):
        if via == "signal":
            signal.raise_signal(signal.SIGUSR1)  # its handler runs here and now
        else:
            act()


handle = other.done().add_callback(Finalized())  # only the registry holds it
handle.cancel()  # frees it, under the tree lock
cancel_other()
print(inside, seen, repr(victim.err()), _context.watcher_count(victim), flush=True)
"""


def run_scenario(how: str, via: str) -> subprocess.CompletedProcess[str]:
    """SCENARIO in a fresh interpreter; it must end well (a hang is a failure at the bound)."""
    if via == "signal" and sys.platform == "win32":
        pytest.skip("needs SIGUSR1")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO.format(never=NEVER), how, via],
        capture_output=True,
        text=True,
        timeout=NEVER * 3,
        env=env,
        check=False,
    )
    assert out.returncode == 0, (out.stdout, out.stderr[-3000:])
    return out


@pytest.mark.parametrize("via", ["finalizer", "signal"])
@pytest.mark.parametrize("how", ["cancel", "unregister"])
def test_code_that_interrupts_the_library_in_its_thread_never_hangs_it(how: str, via: str) -> None:
    out = run_scenario(how, via)
    assert "held" in out.stdout, out.stdout  # it did run inside the library's lock
    # ended, or the callback removed: not there and then, but as the lock was let go
    end = "Canceled('context canceled') 0" if how == "cancel" else "None 1"
    assert out.stdout.rstrip().endswith(end), out.stdout


@pytest.mark.parametrize("via", ["finalizer", "signal"])
@pytest.mark.parametrize("how", ["first done()", "add_callback", "wait", "merge"])
def test_a_registration_from_code_that_interrupts_the_library_raises_rather_than_hangs(
    how: str, via: str
) -> None:
    """A registration cannot be left for later (it answers now), nor made while the
    interrupted code is half way through the registry: it raises a RuntimeError that says
    so, and the interrupted code then goes on as it was."""
    out = run_scenario(how, via)
    assert "held" in out.stdout, out.stdout
    assert "signal handler or a finalizer" in out.stdout, out.stdout
    assert out.stdout.rstrip().endswith("None 2"), out.stdout  # the victim as it was
