"""signal_context(): a context that a signal cancels, and handlers that act as before after.

In this process only SIGUSR1 and SIGUSR2 are sent; SIGINT and SIGTERM go to subprocesses.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from types import FrameType

import anyio
import pytest

import gocontext
from gocontext import _tree

from ._interrupt import expect_line, finish, reap, spawn, wakeup_fd, while_a_thread_runs
from .conftest import NEVER


@pytest.fixture
def previous() -> Iterator[list[int]]:
    """A handler of the test's own on SIGUSR1 and SIGUSR2, recording what reaches it."""
    seen: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield seen
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def handler_of(s: int) -> object:
    return signal.getsignal(s)


def test_a_signal_cancels_with_its_cause_and_puts_the_previous_handlers_back(
    previous: list[int],
) -> None:
    before = handler_of(signal.SIGUSR1)
    ctx, stop = gocontext.signal_context(signals=(signal.SIGUSR1, signal.SIGUSR2))
    assert handler_of(signal.SIGUSR1) != before
    os.kill(os.getpid(), signal.SIGUSR2)
    assert ctx.done().wait(NEVER)
    cause = gocontext.cause(ctx)
    assert isinstance(cause, gocontext.SignalReceived)
    assert cause.signum == signal.SIGUSR2
    assert isinstance(ctx.err(), gocontext.Canceled) and ctx.err().__cause__ is cause
    assert handler_of(signal.SIGUSR1) == before and handler_of(signal.SIGUSR2) == before
    assert previous == []  # the first signal was ours
    os.kill(os.getpid(), signal.SIGUSR1)  # the next one goes where it went before
    assert previous == [signal.SIGUSR1]
    stop()


def test_stop_cancels_and_puts_the_previous_handlers_back(previous: list[int]) -> None:
    before = handler_of(signal.SIGUSR1)
    with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, stop):
        assert ctx.err() is None
    assert isinstance(ctx.err(), gocontext.Canceled)
    assert gocontext.cause(ctx).__class__ is gocontext.Canceled
    assert handler_of(signal.SIGUSR1) == before
    os.kill(os.getpid(), signal.SIGUSR1)
    assert previous == [signal.SIGUSR1]


def test_a_signal_after_the_parent_ended_goes_to_the_previous_handler(
    previous: list[int],
) -> None:
    before = handler_of(signal.SIGUSR1)
    parent, cancel = gocontext.with_cancel(gocontext.background())
    ctx, stop = gocontext.signal_context(parent, [signal.SIGUSR1])
    cancel()
    assert isinstance(ctx.err(), gocontext.Canceled)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert previous == [signal.SIGUSR1]  # passed on, not swallowed
    assert handler_of(signal.SIGUSR1) == before  # and from now on, as before
    assert gocontext.cause(ctx).__class__ is gocontext.Canceled
    stop()


def test_stop_from_another_thread_restores_at_the_next_signal(previous: list[int]) -> None:
    before = handler_of(signal.SIGUSR1)
    ctx, stop = gocontext.signal_context(signals=[signal.SIGUSR1])
    t = threading.Thread(target=stop)
    t.start()
    t.join(NEVER)
    assert isinstance(ctx.err(), gocontext.Canceled)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert previous == [signal.SIGUSR1]
    assert handler_of(signal.SIGUSR1) == before


def test_a_signal_while_the_main_thread_holds_the_tree_lock_does_not_deadlock(
    previous: list[int],
) -> None:
    """The handler runs between two bytecodes, perhaps under our lock: it must take none."""
    ctx, stop = gocontext.signal_context(signals=[signal.SIGUSR1])
    with _tree._lock:
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # bytecodes, so the handler runs while the lock is held
            pass
    assert ctx.done().wait(NEVER)
    assert isinstance(gocontext.cause(ctx), gocontext.SignalReceived)
    stop()


def test_called_from_another_thread_it_raises_naming_the_call() -> None:
    raised: list[BaseException] = []

    def call() -> None:
        try:
            gocontext.signal_context()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=call, name="not-main")
    t.start()
    t.join(NEVER)
    assert isinstance(raised[0], RuntimeError)
    assert "signal_context() must be called from the main thread" in str(raised[0])
    assert "'not-main'" in str(raised[0])


def test_bad_input_is_refused_at_the_call() -> None:
    before = handler_of(signal.SIGUSR1)
    with pytest.raises(TypeError, match=r"needs a Context as parent, got int: 3"):
        gocontext.signal_context(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one signal"):
        gocontext.signal_context(signals=[])
    with pytest.raises(ValueError, match="unknown signal: 9999"):
        gocontext.signal_context(signals=[9999])
    with pytest.raises(ValueError, match="unknown signal: 0"):
        gocontext.signal_context(signals=[signal.SIGUSR1, 0])
    with pytest.raises(TypeError, match="iterable of signals, got 'SIGINT'"):
        gocontext.signal_context(signals="SIGINT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot catch SIGKILL"):
        gocontext.signal_context(signals=[signal.SIGUSR1, signal.SIGKILL])
    assert handler_of(signal.SIGUSR1) == before  # nothing left installed


async def test_a_signal_reaches_a_task_waiting_in_a_running_loop(previous: list[int]) -> None:
    """Inside asyncio.run() and trio.run() (trio has its own wakeup fd)."""
    with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, stop):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, os.kill, os.getpid(), signal.SIGUSR1)
            with pytest.raises(gocontext.Canceled):
                async with gocontext.scope(ctx):
                    await anyio.sleep(NEVER)
    assert isinstance(gocontext.cause(ctx), gocontext.SignalReceived)
    assert previous == []


REENTRANT = textwrap.dedent(
    """
    import signal, gocontext

    seen = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    ctx, stop = gocontext.signal_context(signals=[signal.SIGUSR1])
    ours = signal.getsignal(signal.SIGUSR1)
    ours(int(signal.SIGUSR1), None)  # the first signal: ours
    ours(int(signal.SIGUSR1), None)  # a second one whose handler ran before the first's returned
    ctx.done().wait(10)
    print("forwarded", seen, repr(gocontext.cause(ctx)), flush=True)
    """
)


def test_a_second_signal_handled_inside_the_first_still_reaches_the_previous_handler() -> None:
    """In a subprocess: forwarding to the default action would end the process."""
    out = subprocess.run(
        [sys.executable, "-c", REENTRANT],
        capture_output=True,
        text=True,
        timeout=NEVER * 3,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout.strip() == "forwarded [10] SignalReceived(SIGUSR1)"


# --------------------------------------------------------------------------------------------
# SIGINT and SIGTERM, sent to subprocesses

STUCK = textwrap.dedent(
    """
    import signal, sys, threading, gocontext

    with gocontext.signal_context() as (ctx, stop):
        print("ready", flush=True)
        ctx.done().wait()
        print(f"first: {{gocontext.cause(ctx)!r}}", flush=True)
        {stuck}
    print("not reached", flush=True)
    """
)


@pytest.mark.parametrize(
    ("signum", "stuck", "exit_code"),
    [
        # a program stuck in a wait: the second Ctrl-C is a KeyboardInterrupt, as usual
        (signal.SIGINT, "threading.Event().wait()", -signal.SIGINT),
        # a program stuck in a loop: the second SIGTERM ends it by the default action
        (signal.SIGTERM, "while True: pass", -signal.SIGTERM),
    ],
)
def test_the_second_signal_stops_a_stuck_program_the_usual_way(
    signum: int, stuck: str, exit_code: int
) -> None:
    proc = spawn(STUCK.format(stuck=stuck))
    try:
        expect_line(proc, "ready")
        proc.send_signal(signum)
        expect_line(proc, f"first: SignalReceived({signal.Signals(signum).name})")
        proc.send_signal(signum)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert "not reached" not in out
    assert proc.returncode == exit_code, err


ASYNC_SERVICE = textwrap.dedent(
    """
    import sys, anyio, gocontext

    async def main():
        with gocontext.signal_context() as (ctx, stop):
            print("ready", flush=True)
            try:
                async with gocontext.scope(ctx):
                    await anyio.sleep(60)
            except gocontext.Canceled:
                print(f"draining after {{gocontext.cause(ctx)!r}}", flush=True)

    anyio.run(main, backend="{backend}")
    print("clean exit", flush=True)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_service_inside_a_running_loop(backend: str, signum: int) -> None:
    proc = spawn(ASYNC_SERVICE.format(backend=backend))
    try:
        expect_line(proc, "ready")
        proc.send_signal(signum)
        expect_line(proc, f"draining after SignalReceived({signal.Signals(signum).name})")
        out, err = finish(proc)
    finally:
        reap(proc)
    assert "clean exit" in out, (proc.returncode, err)
    assert proc.returncode == 0, err


def test_a_done_callback_raising_a_base_exception_does_not_stop_later_signals(
    previous: list[int],
) -> None:
    first, stop_first = gocontext.signal_context(signals=[signal.SIGUSR1])

    def hostile() -> None:
        raise SystemExit("from a done callback")

    first.done().add_callback(hostile)
    os.kill(os.getpid(), signal.SIGUSR1)
    second, stop_second = gocontext.signal_context(signals=[signal.SIGUSR2])
    os.kill(os.getpid(), signal.SIGUSR2)
    assert second.done().wait(NEVER), "the relay thread died with the first callback"
    assert isinstance(gocontext.cause(first), gocontext.SignalReceived)  # relayed in order
    stop_first()
    stop_second()


def _kick_once_the_main_thread_sleeps_in_its_loop(signum: int) -> threading.Thread:
    """A thread that waits until the main thread sleeps in its event loop's epoll_wait, then
    sends *signum* to itself: the signal lands on this thread, and the main thread's sleep is
    not interrupted by it (as when the system picks another thread, or the signal lands just
    before the loop blocks)."""
    main = threading.main_thread().native_id

    def kick() -> None:
        with open(f"/proc/self/task/{main}/wchan") as f:
            while f.read() != "do_epoll_wait":
                f.seek(0)
                threading.Event().wait(0.001)  # (polls a condition, bounded by the test)
        signal.pthread_kill(threading.get_ident(), signum)

    t = threading.Thread(target=kick, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<tid>/wchan")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_signal_delivered_to_another_thread_wakes_the_sleeping_loop(
    previous: list[int], backend: str
) -> None:
    """The handler runs in the main thread only once it runs bytecode: the loop must wake."""
    outcome: list[object] = []

    async def main() -> None:
        with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, _):
            try:
                async with gocontext.scope(ctx):
                    kicker = _kick_once_the_main_thread_sleeps_in_its_loop(signal.SIGUSR1)
                    await anyio.sleep(NEVER)  # the loop sleeps this long unless woken
                outcome.append("slept it all")
            except gocontext.Canceled:
                outcome.append(gocontext.cause(ctx))
            kicker.join(NEVER)

    anyio.run(main, backend=backend)
    assert len(outcome) == 1 and isinstance(outcome[0], gocontext.SignalReceived), outcome
    assert previous == []


def test_leaving_gives_the_wakeup_fd_back_and_keeps_one_set_by_someone_else() -> None:
    async def main() -> tuple[int, int, int]:
        with gocontext.signal_context(signals=[signal.SIGUSR1]):
            ours = signal.set_wakeup_fd(-1)  # (taken to look at, then put back)
            signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        after = signal.set_wakeup_fd(-1)
        theirs_r, theirs_w = socket.socketpair()
        theirs_w.setblocking(False)
        with theirs_r, theirs_w:
            signal.set_wakeup_fd(theirs_w.fileno())
            try:
                with gocontext.signal_context(signals=[signal.SIGUSR1]):
                    during = signal.set_wakeup_fd(theirs_w.fileno())
            finally:
                kept = signal.set_wakeup_fd(-1)
            assert during == kept == theirs_w.fileno()
        return ours, after, during

    ours, after, _ = anyio.run(main, backend="asyncio")
    assert ours != -1  # a wake-up fd of ours while the context was on
    assert after == -1  # given back on leaving


def test_under_trio_its_own_wakeup_fd_stays_in_place() -> None:
    """trio wakes on signals by itself: signal_context() leaves its wake-up fd as it is."""

    async def main() -> tuple[int, int, int]:
        trios = wakeup_fd()
        with gocontext.signal_context(signals=[signal.SIGUSR1]):
            during = wakeup_fd()
        return trios, during, wakeup_fd()

    trios, during, after = anyio.run(main, backend="trio")
    assert trios != -1
    assert during == after == trios


@pytest.mark.parametrize("failure", [OSError(24, "Too many open files"), KeyboardInterrupt()])
def test_a_failure_to_make_the_loops_wakeup_is_survived_or_leaves_nothing_installed(
    previous: list[int], monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """Out of file descriptors: the context works without the wake-up. An interrupt right
    there: it goes on, and the handlers are the previous ones again."""

    def socketpair() -> tuple[socket.socket, socket.socket]:
        raise failure

    before = handler_of(signal.SIGUSR1)

    async def main() -> object:
        monkeypatch.setattr(socket, "socketpair", socketpair)
        try:
            with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, _):
                os.kill(os.getpid(), signal.SIGUSR1)
                await ctx.done()
                return gocontext.cause(ctx)
        finally:
            monkeypatch.undo()

    if isinstance(failure, OSError):
        assert isinstance(anyio.run(main, backend="asyncio"), gocontext.SignalReceived)
        assert previous == []
    else:
        with pytest.raises(KeyboardInterrupt):
            anyio.run(main, backend="asyncio")
    assert handler_of(signal.SIGUSR1) == before
    assert signal.set_wakeup_fd(-1) == -1


# --------------------------------------------------------------------------------------------
# A loop that waits for a thread of ours wakes for a signal, wherever the system delivers it


def _handler_runs_while_the_loop_waits_for_a_thread(how: str, backend: str) -> bool:
    """Run, in a thread of ours, code that sends SIGUSR1 to its own thread once the main
    thread sleeps in its loop, then waits for the handler, which only the main thread runs."""
    ran = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        ran.set()

    def work(ctx: gocontext.Context) -> bool:
        _kick_once_the_main_thread_sleeps_in_its_loop(signal.SIGUSR1).join(NEVER)
        return ran.wait(NEVER)  # False: the main thread slept through the signal

    async def main() -> bool:
        if how == "to_thread":
            return await gocontext.to_thread(gocontext.background(), work)
        out: list[bool] = []
        async with gocontext.TaskGroup(gocontext.background()) as g:
            g.go_thread(lambda ctx: out.append(work(ctx)))
        return out[0]

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        return anyio.run(main, backend=backend)
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<tid>/wchan")
@pytest.mark.parametrize("how", ["to_thread", "go_thread"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_signal_handler_runs_while_the_loop_waits_for_a_thread(backend: str, how: str) -> None:
    """Ctrl-C while a thread runs: the handler (asyncio's runner cancels its main task there)
    runs at once, though the system handed the signal to another thread than the main one,
    or the signal landed just before the loop went to sleep."""
    assert _handler_runs_while_the_loop_waits_for_a_thread(how, backend)


@pytest.mark.parametrize("how", ["to_thread", "go_thread"])
def test_waiting_for_a_thread_gives_the_wakeup_fd_back_and_keeps_one_set_by_someone_else(
    how: str,
) -> None:
    async def wait_for_thread() -> int:
        return await while_a_thread_runs(wakeup_fd, how)

    async def main() -> tuple[int, int, int, int]:
        before = wakeup_fd()
        during = await wait_for_thread()
        after = wakeup_fd()
        theirs_r, theirs_w = socket.socketpair()
        theirs_w.setblocking(False)
        with theirs_r, theirs_w:
            signal.set_wakeup_fd(theirs_w.fileno())
            try:
                kept = await wait_for_thread()
            finally:
                signal.set_wakeup_fd(-1)
            assert kept == theirs_w.fileno()
        return before, during, after, kept

    before, during, after, _ = anyio.run(main, backend="asyncio")
    assert before == after == -1
    assert during != -1  # the loop's own, for the time of the wait


CTRL_C_IN_A_WORKER = textwrap.dedent(
    """
    import faulthandler, signal, sys, threading, anyio, gocontext

    faulthandler.dump_traceback_later({never}, exit=True)  # a hang shows where, then fails

    def work(ctx):
        main = threading.main_thread().native_id
        with open(f"/proc/self/task/{{main}}/wchan") as f:
            while f.read() != "do_epoll_wait":  # until the loop sleeps
                f.seek(0)
                threading.Event().wait(0.001)
        print("ready", flush=True)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # Ctrl-C, on this thread
        ctx.done().wait()  # only the interrupt, through ctx, ends this
        print("told", flush=True)

    async def main():
        await gocontext.to_thread(gocontext.background(), work)
        print("not interrupted", flush=True)

    try:
        anyio.run(main, backend="{backend}")
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<tid>/wchan")
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio's runner: a CancelledError")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_handed_to_a_worker_thread_ends_the_program(backend: str) -> None:
    proc = spawn(CTRL_C_IN_A_WORKER.format(backend=backend, never=NEVER))
    try:
        expect_line(proc, "ready")
        expect_line(proc, "told")  # asyncio's runner cancelled its main task: ctx ended
        out, err = finish(proc)
    finally:
        reap(proc)
    assert out.split() == ["KeyboardInterrupt"], (out, err)


def test_the_wakeup_fd_stays_while_anything_still_needs_it() -> None:
    """Two threads waited for at once, and a signal_context(): the fd goes back after the last."""

    async def main() -> list[int]:
        seen: list[int] = []
        with gocontext.signal_context(signals=[signal.SIGUSR1]) as (_, stop):
            seen.append(wakeup_fd())
            started = [gocontext.with_cancel(gocontext.background()) for _ in range(2)]
            ended = [gocontext.with_cancel(gocontext.background()) for _ in range(2)]
            go_on = [threading.Event() for _ in range(2)]

            def fn(ctx: gocontext.Context, i: int) -> None:
                started[i][1]()
                go_on[i].wait(NEVER)

            async def wait_for(i: int) -> None:
                await gocontext.to_thread(gocontext.background(), fn, i)
                ended[i][1]()

            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(wait_for, i)
                    await started[i][0].done()
                stop()  # the context lets go; the waits still hold it
                seen.append(wakeup_fd())
                go_on[0].set()
                await ended[0][0].done()
                seen.append(wakeup_fd())  # one wait is over, the other is not
                go_on[1].set()
        seen.append(wakeup_fd())
        return seen

    seen = anyio.run(main, backend="asyncio")
    assert seen[0] != -1
    assert seen[1] == seen[2] == seen[0]
    assert seen[3] == -1


def test_under_uvloop_its_own_wakeup_fd_stays_while_a_thread_is_waited_for() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[int, int, int]:
        before = wakeup_fd()  # (uvloop's)
        during = await while_a_thread_runs(wakeup_fd)
        return before, during, wakeup_fd()

    before, during, after = uvloop.run(main())
    assert before != -1
    assert during == after == before


def test_a_closed_loops_wakeup_sockets_are_closed_by_the_next_loop() -> None:
    """A loop per test, each waiting for a thread: descriptors do not pile up until a
    garbage collection frees the loops."""
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        if before is None:
            pytest.skip("needs /proc/self/fd")
        for _ in range(20):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(while_a_thread_runs(wakeup_fd))
            loop.close()
        after = len(os.listdir("/proc/self/fd"))
    finally:
        gc.enable()
    assert after - before <= 2, (before, after)  # the last loop's pair, at most


# --------------------------------------------------------------------------------------------
# Several contexts for one signal: each one gets it, and they leave in any order


def test_one_signal_cancels_every_context_waiting_for_it(previous: list[int]) -> None:
    before = handler_of(signal.SIGUSR1)
    other, stop_other = gocontext.signal_context(signals=[signal.SIGUSR2])
    with gocontext.signal_context(signals=[signal.SIGUSR1]) as (outer, _):
        with gocontext.signal_context(outer, [signal.SIGUSR1, signal.SIGUSR2]) as (inner, _):
            with gocontext.signal_context(signals=[signal.SIGUSR1]) as (third, _):
                os.kill(os.getpid(), signal.SIGUSR1)
                for ctx in (third, inner, outer):
                    assert ctx.done().wait(NEVER)
                    cause = gocontext.cause(ctx)
                    assert isinstance(cause, gocontext.SignalReceived), cause
                    assert cause.signum == signal.SIGUSR1
                assert previous == []  # the signal was theirs
                assert handler_of(signal.SIGUSR1) == before
                os.kill(os.getpid(), signal.SIGUSR1)  # the next one: as before
                assert previous == [signal.SIGUSR1]
                assert other.err() is None  # waits for another signal, which it still gets
                os.kill(os.getpid(), signal.SIGUSR2)
                assert other.done().wait(NEVER)
                assert isinstance(gocontext.cause(other), gocontext.SignalReceived)
                assert previous == [signal.SIGUSR1]
    stop_other()
    assert handler_of(signal.SIGUSR2) == before


NESTED_STUCK = textwrap.dedent(
    """
    import signal, threading, gocontext

    with gocontext.signal_context() as (outer, _):
        with gocontext.signal_context(signals=[signal.SIGINT]) as (inner, _):
            print("ready", flush=True)
            inner.done().wait({never})
            outer.done().wait({never})
            print(f"first: {{gocontext.cause(inner)!r}} {{gocontext.cause(outer)!r}}", flush=True)
            threading.Event().wait()
    print("not reached", flush=True)
    """
)


def test_one_ctrl_c_ends_every_context_and_the_next_interrupts_the_usual_way() -> None:
    proc = spawn(NESTED_STUCK.format(never=NEVER))
    try:
        expect_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        expect_line(proc, "first: SignalReceived(SIGINT) SignalReceived(SIGINT)")
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert "not reached" not in out
    assert proc.returncode == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_stops_in_any_order_put_back_the_handler_from_before_the_first(
    previous: list[int], order: tuple[int, ...]
) -> None:
    before = handler_of(signal.SIGUSR1)
    pairs = [gocontext.signal_context(signals=[signal.SIGUSR1]) for _ in range(3)]
    for i in order[:-1]:
        pairs[i].cancel()
        assert handler_of(signal.SIGUSR1) != before  # one still waits for the signal
    pairs[order[-1]].cancel()
    assert handler_of(signal.SIGUSR1) is before
    os.kill(os.getpid(), signal.SIGUSR1)
    assert previous == [signal.SIGUSR1]
    assert all(gocontext.cause(ctx).__class__ is gocontext.Canceled for ctx, _ in pairs)


@pytest.mark.parametrize("stopped", [(0,), (1,), (0, 2), (2, 1)])
def test_a_signal_after_some_stopped_cancels_the_others(
    previous: list[int], stopped: tuple[int, ...]
) -> None:
    before = handler_of(signal.SIGUSR1)
    pairs = [gocontext.signal_context(signals=[signal.SIGUSR1]) for _ in range(3)]
    for i in stopped:
        pairs[i].cancel()
    os.kill(os.getpid(), signal.SIGUSR1)
    for i, (ctx, stop) in enumerate(pairs):
        assert ctx.done().wait(NEVER)
        expected = gocontext.Canceled if i in stopped else gocontext.SignalReceived
        assert gocontext.cause(ctx).__class__ is expected, i
        stop()
    assert previous == []
    assert handler_of(signal.SIGUSR1) is before


OUT_OF_ORDER_THEN_ASYNCIO = textwrap.dedent(
    """
    import asyncio, signal, gocontext

    first = gocontext.signal_context(signals=[signal.SIGINT])
    second = gocontext.signal_context(signals=[signal.SIGINT])
    first.cancel()
    second.cancel()
    print("restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)

    async def main():
        try:
            # (told once this task sleeps: a Ctrl-C inside its step would be its own error on
            # Python 3.10, whose runner has no Ctrl-C handling of its own)
            asyncio.get_running_loop().call_soon(lambda: print("ready", flush=True))
            await asyncio.sleep({never})
            print("slept it all", flush=True)
        except asyncio.CancelledError:  # asyncio's runner turns Ctrl-C into this
            print("cancelled", flush=True)
            raise

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


def test_after_stops_out_of_order_asyncio_run_handles_ctrl_c_again() -> None:
    """asyncio.run() cancels its main task on Ctrl-C only if it finds Python's own handler."""
    proc = spawn(OUT_OF_ORDER_THEN_ASYNCIO.format(never=NEVER))
    try:
        expect_line(proc, "restored: True")
        expect_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert out.split() == ["cancelled", "KeyboardInterrupt"], (out, err)


def test_contexts_stopped_from_other_threads_leave_the_signal_to_those_still_waiting(
    previous: list[int],
) -> None:
    before = handler_of(signal.SIGUSR1)
    pairs = [gocontext.signal_context(signals=[signal.SIGUSR1]) for _ in range(8)]
    ready = threading.Barrier(len(pairs) - 1)

    def stop_with_the_others(stop: Callable[[], None]) -> None:
        ready.wait(NEVER)
        stop()

    threads = [threading.Thread(target=stop_with_the_others, args=(s,)) for _, s in pairs[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NEVER)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert pairs[0][0].done().wait(NEVER)
    assert isinstance(gocontext.cause(pairs[0][0]), gocontext.SignalReceived)
    assert all(gocontext.cause(ctx).__class__ is gocontext.Canceled for ctx, _ in pairs[1:])
    assert previous == []
    assert handler_of(signal.SIGUSR1) is before
    os.kill(os.getpid(), signal.SIGUSR1)
    assert previous == [signal.SIGUSR1]


def test_a_handler_installed_over_ours_stays_when_the_last_context_stops(
    previous: list[int],
) -> None:
    theirs: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        theirs.append(signum)

    first, stop_first = gocontext.signal_context(signals=[signal.SIGUSR1])
    second, stop_second = gocontext.signal_context(signals=[signal.SIGUSR1])
    signal.signal(signal.SIGUSR1, handler)
    stop_first()
    stop_second()
    assert handler_of(signal.SIGUSR1) is handler
    os.kill(os.getpid(), signal.SIGUSR1)
    assert theirs == [signal.SIGUSR1]
    assert previous == []


def test_a_context_made_over_a_handler_installed_over_ours_puts_that_one_back(
    previous: list[int],
) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        pass

    first, stop_first = gocontext.signal_context(signals=[signal.SIGUSR1])
    signal.signal(signal.SIGUSR1, handler)
    with gocontext.signal_context(signals=[signal.SIGUSR1]) as (second, _):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert second.done().wait(NEVER)
        assert handler_of(signal.SIGUSR1) is handler
    assert first.err() is None  # the signal went to the handler over its own
    stop_first()
    assert handler_of(signal.SIGUSR1) is handler


@pytest.mark.skipif(not hasattr(signal, "SIGRTMIN"), reason="no real-time signals")
def test_a_real_time_signal_cancels_too() -> None:
    s = signal.SIGRTMIN + 1
    with gocontext.signal_context(signals=[s]) as (ctx, _):
        os.kill(os.getpid(), s)
        assert ctx.done().wait(NEVER)
    cause = gocontext.cause(ctx)
    assert isinstance(cause, gocontext.SignalReceived)
    assert cause.signum == s
    assert repr(cause) == "SignalReceived(SIGRTMIN+1)"
    assert str(cause) == "received SIGRTMIN+1"
    assert handler_of(s) == signal.SIG_DFL


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_signals_and_the_parent_keeps_its_own(
    previous: list[int],
) -> None:
    before = handler_of(signal.SIGUSR1)
    with gocontext.signal_context(signals=[signal.SIGUSR1]) as (ctx, _):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                with gocontext.signal_context(signals=[signal.SIGUSR1]) as (inner, _):
                    os.kill(os.getpid(), signal.SIGUSR1)
                    both = inner.done().wait(NEVER) and ctx.done().wait(NEVER)
                code = 0 if both and handler_of(signal.SIGUSR1) is before else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ctx.err() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ctx.done().wait(NEVER)
    assert previous == []
    assert handler_of(signal.SIGUSR1) is before
