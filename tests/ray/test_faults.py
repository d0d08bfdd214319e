"""Contexts across Ray under faults: garbage collection mid-call, queued tasks, a dead channel,
a killed worker, get()'s fallback, Ray shut down under a live deadline, and log noise."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import signal as signals
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import gocontext

ray = pytest.importorskip("ray")
import gocontext.ray  # noqa: E402
from gocontext.ray import _channel, _get  # noqa: E402

from ..conftest import NEVER  # noqa: E402

pytestmark = pytest.mark.slow

START = NEVER * 6  # a bound on starting worker processes for new tasks, on a loaded machine


@ray.remote(num_cpus=0)
class Notes:
    """Notes from tasks, and a gate they wait on: a handshake across processes."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.changed = asyncio.Event()
        self.gate = asyncio.Event()

    async def add(self, note: str) -> None:
        self.notes.append(note)
        self.changed.set()

    async def wait_for(self, count: int) -> list[str]:
        while len(self.notes) < count:
            self.changed.clear()
            await self.changed.wait()
        return list(self.notes)

    async def get(self) -> list[str]:
        return list(self.notes)

    async def open(self) -> None:
        self.gate.set()

    async def passed(self) -> None:
        await self.gate.wait()


@pytest.fixture
def notes() -> Iterator[Any]:
    n = Notes.remote()  # type: ignore[attr-defined]
    yield n
    ray.kill(n)


def _notes(notes: Any, count: int, bound: float = NEVER) -> list[str]:
    """The first *count* notes, or a failure that shows the notes there are."""
    try:
        return list(ray.get(notes.wait_for.remote(count), timeout=bound))
    except ray.exceptions.GetTimeoutError:
        pytest.fail(f"waited for {count} notes, got {ray.get(notes.get.remote())}")


def _settled_size() -> int:
    """The channel's size once the asynchronous calls in flight have landed."""
    return int(ray.get(_channel.sender_channel().size.remote(), timeout=NEVER))


def _wait_size(target: int, bound: float) -> int:
    """Poll the channel until it holds *target* entries; the bound turns a leak into a failure."""
    give_up = time.monotonic() + bound
    size = _settled_size()
    while size != target and time.monotonic() < give_up:
        time.sleep(0.1)
        size = _settled_size()
    return size


# --- 1. a finalizer running inside the watch call ------------------------------------------


@ray.remote(num_cpus=0, max_retries=0)
def receive_while_collecting(first: bytes, second: bytes) -> str:
    """Receive one context, then run its finalizers (as a garbage collection would) from inside
    the first Ray actor call gocontext makes once the next context is received: the watcher
    thread's hint (or poll) that carries it."""
    held = pickle.loads(first)
    armed, done = threading.Event(), threading.Event()
    fired: list[str] = []
    original = ray.actor.ActorMethod.remote

    def remote(self: Any, *args: Any, **kwargs: Any) -> Any:  # in whichever thread calls Ray
        caller = sys._getframe(1)
        while caller is not None:
            if caller.f_globals.get("__name__") == "gocontext.ray._channel":
                if armed.is_set() and not done.is_set():
                    fired.append(f"{caller.f_code.co_name} -> remote")
                    for finalizer in list(weakref.finalize._registry):  # type: ignore[attr-defined]
                        if finalizer.peek() is not None and finalizer.peek()[0] is held:
                            fired.append("finalizer")
                            finalizer()  # as if the first context were collected right here
                    done.set()
                break
            caller = caller.f_back
        return original(self, *args, **kwargs)

    ray.actor.ActorMethod.remote = remote
    try:
        armed.set()
        ctx = pickle.loads(second)
        done.wait(START)
    finally:
        ray.actor.ActorMethod.remote = original
    return f"received {ctx.err()}; {fired}"


def test_a_collection_inside_the_watch_call_does_not_wedge_the_worker() -> None:
    a, cancel_a = gocontext.with_cancel(gocontext.background())
    b, cancel_b = gocontext.with_cancel(gocontext.background())
    ref = receive_while_collecting.remote(pickle.dumps(a), pickle.dumps(b))
    ready, _ = ray.wait([ref], timeout=START)
    if not ready:
        ray.cancel(ref, force=True)  # a wedged worker is killed, not left to the next test
    cancel_a()
    cancel_b()
    assert ready, "the worker receiving the context is wedged"
    got = ray.get(ref)
    assert got.startswith("received None; ") and "'finalizer'" in got


# --- 2. tasks queued behind a context that was cancelled, then dropped ---------------------


@ray.remote(num_cpus=1)
def hold_a_cpu(notes: Any) -> None:
    ray.get(notes.add.remote("holding"))
    ray.get(notes.passed.remote())


@ray.remote(num_cpus=1)
def report_end(ctx: gocontext.Context) -> str:
    ended = ctx.done().wait(NEVER)
    return f"{ended} {type(ctx.err()).__name__}"


def test_tasks_queued_behind_a_cancelled_dropped_context_see_it_end(notes: Any) -> None:
    cpus = int(ray.cluster_resources()["CPU"])
    holders = [hold_a_cpu.remote(notes) for _ in range(cpus)]
    _notes(notes, cpus, START)  # every CPU is taken: the rest queue
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    queued = [report_end.remote(ctx) for _ in range(4)]
    cancel()
    del ctx, cancel  # the sender lets its context go while the tasks still wait for a CPU
    gc.collect()
    _settled_size()  # the channel has taken in the end
    ray.get(notes.open.remote())
    ray.get(holders, timeout=START)
    assert ray.get(queued, timeout=START) == ["True Canceled"] * 4


# --- 3. a dead channel actor is replaced -------------------------------------------------


@ray.remote(num_cpus=0)
def err_on_arrival(ctx: gocontext.Context) -> str:
    return repr(gocontext.cause(ctx)) if ctx.err() is not None else "live"


@ray.remote(num_cpus=0)
def wait_for_end(ctx: gocontext.Context, notes: Any) -> str:
    ray.get(notes.add.remote("running"))
    ctx.done().wait(NEVER)
    return f"{type(ctx.err()).__name__} {gocontext.cause(ctx)!r}"


def test_a_dead_channel_is_replaced_for_the_contexts_sent_after(notes: Any) -> None:
    old, cancel_old = gocontext.with_cancel(gocontext.background())
    ref = wait_for_end.remote(old, notes)
    _notes(notes, 1, START)
    dead = _channel.sender_channel()
    ray.kill(dead)
    assert "ChannelGone" in ray.get(ref, timeout=START)  # what was sent ends with ChannelGone
    give_up = time.monotonic() + NEVER
    while _channel.sender_channel() is dead and time.monotonic() < give_up:
        time.sleep(0.01)  # the driver learns of the death through Ray: a bounded wait
    new, cancel_new = gocontext.with_cancel(gocontext.background())
    assert ray.get(err_on_arrival.remote(new), timeout=START) == "live"
    ref = wait_for_end.remote(new, notes)
    _notes(notes, 2, START)
    cancel_new()
    assert ray.get(ref, timeout=START) == "Canceled Canceled('context canceled')"
    cancel_old()


# --- 4. a killed worker's watch is forgotten ---------------------------------------------


@ray.remote(num_cpus=0, max_retries=0)
def wait_and_tell_pid(ctx: gocontext.Context, notes: Any) -> None:
    ray.get(notes.add.remote(str(os.getpid())))
    ctx.done().wait(NEVER * 10)


def test_a_killed_workers_watch_is_forgotten(notes: Any) -> None:
    baseline = _wait_size(0, NEVER)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = wait_and_tell_pid.remote(ctx, notes)
    (pid,) = _notes(notes, 1, START)
    assert _settled_size() > baseline  # the worker watches the context
    os.kill(int(pid), signals.SIGKILL)
    with pytest.raises(ray.exceptions.RayError):
        ray.get(ref, timeout=START)
    time.sleep(2.5)  # the fault: time passes, the dead worker's last long poll runs out
    cancel()
    del ctx, cancel
    gc.collect()
    assert _wait_size(baseline, NEVER * 3) == baseline


# --- 5. get() gives the cooperative signal first ----------------------------------------


@ray.remote(num_cpus=0)
def cooperative_child(ctx: gocontext.Context, notes: Any) -> None:
    try:
        ray.get(notes.add.remote("running"))
        ctx.done().wait(START)
        ray.get(notes.add.remote(f"cleaning up after {type(ctx.err()).__name__}"))
        ray.get(notes.passed.remote())  # a cleanup that takes as long as the test says
        ray.get(notes.add.remote("clean"))
    except KeyboardInterrupt:
        ray.get(notes.add.remote(f"interrupted with ctx.err() = {ctx.err()!r}"))


@ray.remote(num_cpus=0)
def parent_of_children(ctx: gocontext.Context, notes: Any, n: int) -> None:
    children = [cooperative_child.remote(ctx, notes) for _ in range(n)]
    gocontext.ray.get(ctx, children, grace=START)  # the test decides when cleanups end


def test_get_lets_nested_tasks_end_cooperatively_before_any_interrupt(notes: Any) -> None:
    n = 3
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = parent_of_children.remote(ctx, notes, n)
    _notes(notes, n, START)  # every child runs
    threading.Timer(0.05, cancel).start()
    with pytest.raises(gocontext.Canceled):
        gocontext.ray.get(ctx, ref, grace=NEVER * 3)
    _notes(notes, 2 * n)  # every child saw its context end
    ray.get(notes.open.remote())  # only now may the cleanups finish
    got = _notes(notes, 3 * n)
    assert sorted(got[n:]) == ["clean"] * n + ["cleaning up after Canceled"] * n


@ray.remote(num_cpus=0)
def ignores_its_context(notes: Any) -> str:
    try:  # (the note inside: Ray's cancel may land while its ray.get is still returning)
        ray.get(notes.add.remote("running"))
        ray.get(notes.passed.remote())  # never opened: only Ray's own cancel stops this
    except KeyboardInterrupt:
        return "interrupted"
    return "finished"


def test_get_falls_back_to_rays_cancel_after_the_grace(notes: Any) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = ignores_its_context.remote(notes)
    _notes(notes, 1, START)
    cancel()
    with pytest.raises(gocontext.Canceled):
        gocontext.ray.get(ctx, ref, grace=0.05)
    assert _get.wait_idle(START)
    assert ray.get(ref, timeout=START) == "interrupted"


@pytest.mark.parametrize("grace", [-1, float("nan"), True, "5"])
def test_get_rejects_a_bad_grace(grace: Any) -> None:
    ctx = gocontext.background()
    with pytest.raises((TypeError, ValueError), match="get"):
        gocontext.ray.get(ctx, [], grace=grace)


@pytest.mark.parametrize(
    ("name", "bad"),
    [("timeout", "5"), ("timeout", True), ("grace", "5"), ("grace", True), ("grace", None)],
)
def test_a_number_of_seconds_that_is_not_a_number_is_a_type_error(name: str, bad: Any) -> None:
    ctx = gocontext.background()
    with pytest.raises(TypeError, match=rf"gocontext\.ray\.get\(\).*{name}"):
        gocontext.ray.get(ctx, [], **{name: bad})
    if name == "timeout":
        with pytest.raises(TypeError, match=rf"gocontext\.ray\.wait\(\).*{name}"):
            gocontext.ray.wait(ctx, [], timeout=bad)


# --- 6. nothing of ours starts Ray again after ray.shutdown() ----------------------------


def test_a_deadline_after_ray_shutdown_starts_nothing_and_ray_init_works_again() -> None:
    code = textwrap.dedent(
        """
        import threading, ray, gocontext, gocontext.ray

        def start():
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")

        @ray.remote(num_cpus=0)
        def arrived(ctx):
            return ctx.err() is None

        start()
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 3)
        ray.get(arrived.remote(ctx))  # sent: its deadline will fire with Ray shut down
        kept, cancel_kept = gocontext.with_cancel(gocontext.background())
        ray.get(arrived.remote(kept))  # sent: it outlives this Ray connection
        ray.shutdown()
        after = threading.Event()
        ctx.done().add_callback(after.set)  # runs after ours, on the timer thread
        assert after.wait(30)
        print("ray started again:", ray.is_initialized())
        start()
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        assert ray.get(arrived.remote(ctx))
        print("after init:", ray.get(arrived.remote(ctx)))
        cancel_kept()  # ends, and is released, under the new connection
        del kept, cancel_kept
        import gc; gc.collect()
        print("still running:", ray.get(arrived.remote(ctx)))
        cancel()
        ray.shutdown()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False
    )
    assert "ray started again: False" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "after init: True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "still running: True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert out.returncode == 0, out.stderr[-3000:]


# --- 7. no "Unhandled error" for the tasks get() gave up on -------------------------------


@ray.remote(num_cpus=0)
def raise_its_err(ctx: gocontext.Context, notes: Any) -> None:
    ray.get(notes.add.remote("running"))
    while True:
        try:
            ctx.done().wait(START)
            break
        except KeyboardInterrupt:  # a task whose cleanup Ray's cancel must not cut short
            continue
    ray.get(notes.add.remote("raising"))
    err = ctx.err()
    assert err is not None
    raise err


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_get_collects_the_tasks_it_gave_up_on_so_nothing_logs_unhandled(notes: Any) -> None:
    records = _Records()
    logger = logging.getLogger("ray._private.worker")
    logger.addHandler(records)
    try:
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        refs = [raise_its_err.remote(ctx, notes) for _ in range(3)]
        _notes(notes, 3, START)
        cancel()
        with pytest.raises(gocontext.Canceled):
            gocontext.ray.get(ctx, refs)
        _notes(notes, 6, START)  # every task raised
        del refs
        gc.collect()
        assert _get.wait_idle(START)  # get() has collected every task it gave up on
        gc.collect()
        unhandled = [m for m in records.messages if "Unhandled error" in m and "raise_its_err" in m]
        assert unhandled == []
    finally:
        logger.removeHandler(records)
