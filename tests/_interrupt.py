"""A Python child process to send signals to (Ctrl-C, SIGTERM): start it, read what it says,
wait for it, and never leave it behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

import gocontext

from .conftest import NEVER

T = TypeVar("T")


def spawn(code: str) -> subprocess.Popen[str]:
    """Run *code* in a fresh interpreter that imports this tree's gocontext, output piped."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the child; return the rest of its output (communicate() would skip what
    readline() already buffered)."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.wait(NEVER * 3)
    return proc.stdout.read(), proc.stderr.read()


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill the child if it still runs (a failed test), and close its pipes."""
    proc.kill()
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def expect_line(proc: subprocess.Popen[str], text: str) -> None:
    """The child's next line of output is *text*."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == text, (line, finish(proc))


def read_lines(proc: subprocess.Popen[str], prefix: str, count: int) -> list[str]:
    """The child's next *count* lines that start with *prefix* (others are skipped)."""
    assert proc.stdout is not None
    lines = []
    while len(lines) < count:
        line = proc.stdout.readline()
        assert line, f"the child ended early: {finish(proc)}"
        if line.startswith(prefix):
            lines.append(line.strip())
    return lines


def wakeup_fd() -> int:
    """The interpreter's signal wake-up fd, looked at (set to -1, then put back); main thread."""
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    return fd


async def while_a_thread_runs(look: Callable[[], T], how: str = "to_thread") -> T:
    """What ``look()`` returns, called in the task while a thread of ours runs a function
    (``to_thread()`` or ``TaskGroup.go_thread()``) that waits until it has."""
    started, mark_started = gocontext.with_cancel(gocontext.background())
    go_on = threading.Event()

    def fn(ctx: gocontext.Context) -> None:
        mark_started()
        go_on.wait(NEVER)

    async def in_group() -> None:
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go_thread(fn)

    async with anyio.create_task_group() as tg:
        if how == "to_thread":
            tg.start_soon(gocontext.to_thread, gocontext.background(), fn)
        else:
            tg.start_soon(in_group)
        await started.done()
        try:
            return look()
        finally:
            go_on.set()
