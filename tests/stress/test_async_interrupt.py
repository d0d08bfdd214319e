"""Ctrl-C: a real SIGINT sent to a process blocked in ``await ctx.done()``, ``sleep()``,
``scope()`` or ``to_thread()``, under asyncio and trio. The program ends with KeyboardInterrupt,
nothing hangs, and no thread is left: a fn running in a worker thread is told and returns.

Each check runs in a fresh interpreter with Python's own SIGINT handling, so an interrupt gone
astray cannot end the test session; a hang becomes a failure at the bound.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

pytestmark = [
    pytest.mark.stress,
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX SIGINT"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUNDS = 5 if os.environ.get("GOCONTEXT_STRESS") == "1" else 1
BOUND = 60  # seconds a child may take: a hang, never a slow machine

SCENARIO = r"""
import asyncio, faulthandler, math, sys, threading, time
import anyio, gocontext

faulthandler.dump_traceback_later(50, exit=True)  # a hang shows where, then fails
backend, kind = sys.argv[1], sys.argv[2]
fn_steps = []


def work(child):
    fn_steps.append("started")
    print("ready", flush=True)
    child.done().wait()  # only the interrupt, through the child, ends this
    time.sleep(0.3)  # cleanup that takes a while: an await that does not wait for it shows
    fn_steps.append("returned")


async def say_ready_once_blocked():
    await anyio.wait_all_tasks_blocked()
    print("ready", flush=True)


async def main():
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    if kind != "to_thread":  # a task outside any task group: the interrupt stays bare
        if backend == "trio":
            import trio

            trio.lowlevel.spawn_system_task(say_ready_once_blocked)
        else:
            import asyncio

            keep = asyncio.get_running_loop().create_task(say_ready_once_blocked())
    # the main task blocks here, where trio delivers a KeyboardInterrupt directly
    if kind == "await_done":
        await ctx.done()
    elif kind == "sleep":
        await gocontext.sleep(ctx, math.inf)
    elif kind == "scope":
        async with gocontext.scope(ctx):
            await anyio.sleep_forever()
    elif kind == "to_thread":
        await gocontext.to_thread(ctx, work)
    print("not interrupted", flush=True)


try:
    anyio.run(main, backend=backend)
except (KeyboardInterrupt, asyncio.CancelledError):  # (the latter: asyncio on Python 3.10)
    if kind == "to_thread" and fn_steps != ["started", "returned"]:
        print("fn abandoned:", fn_steps, flush=True)
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    for t in others:
        if not t.daemon:  # a pool's worker told to stop may still be on its way out
            t.join(20)
    left = [t.name for t in others if not t.daemon and t.is_alive()]
    if left:
        print("threads left:", left, flush=True)
    raise
"""


# How a plain anyio program ends on Ctrl-C: with KeyboardInterrupt, except under asyncio on
# Python 3.10, where tasks have no uncancel() and anyio's runner reports the interrupt as the
# main task's CancelledError (the same with no gocontext at all).
_KI = ("KeyboardInterrupt", -signal.SIGINT)
PLAIN_END = {
    "trio": _KI,
    "asyncio": _KI if sys.version_info >= (3, 11) else ("asyncio.exceptions.CancelledError", 1),
}


def read_lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


@pytest.mark.parametrize("kind", ["await_done", "sleep", "scope", "to_thread"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_while_blocked_ends_the_program_with_keyboard_interrupt(
    backend: str, kind: str
) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-c", SCENARIO, backend, kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True)
            reader.start()
            first = lines.get(timeout=BOUND)
            assert first == "ready\n", first
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=BOUND)
            reader.join(BOUND)
        finally:
            if proc.poll() is None:  # only on failure: never leave the child behind
                proc.kill()
                proc.communicate()
        out = []
        while not lines.empty():
            out.append(lines.get())
        assert out == [], out  # no "not interrupted", "fn abandoned" or "threads left"
        assert err.rstrip().endswith(PLAIN_END[backend][0]), err[-2000:]
        assert proc.returncode == PLAIN_END[backend][1], (proc.returncode, err[-2000:])
