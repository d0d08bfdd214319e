"""Contexts across a real local Ray cluster: deadlines, values and one cancel for a tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time

import anyio
import pytest

import gocontext

ray = pytest.importorskip("ray")
import gocontext.ray  # noqa: E402

from ..conftest import NEVER  # noqa: E402

BOUND = 600.0  # seconds: a bound that only turns a hang into a failure, on a loaded machine
RID = gocontext.PropagatedKey("ray-rid")
SECRET = gocontext.Key[str]("ray-secret")


@ray.remote(num_cpus=0)
def poll_until_done(ctx: gocontext.Context, signal: object) -> tuple[str, str]:
    ray.get(signal.set.remote("running"))  # type: ignore[attr-defined]
    started = time.monotonic()
    while ctx.err() is None:
        if time.monotonic() - started > BOUND:
            return ("never ended", "")
        sum(range(1000))  # busy in Python, no checkpoint Ray could interrupt cleanly
    return type(ctx.err()).__name__, repr(gocontext.cause(ctx))


@ray.remote(num_cpus=0)
def block_until_done(ctx: gocontext.Context, signal: object) -> str:
    ray.get(signal.set.remote("running"))  # type: ignore[attr-defined]
    ended = ctx.done().wait(NEVER)
    return f"{ended} {type(ctx.err()).__name__}"


@ray.remote(num_cpus=0)
def describe(ctx: gocontext.Context) -> dict[str, object]:
    return {
        "remaining": ctx.remaining(),  # type: ignore[attr-defined]
        "rid": ctx.value(RID),
        "secret": ctx.value(SECRET),
        "err": repr(ctx.err()),
    }


@ray.remote(num_cpus=0)
def parent_task(ctx: gocontext.Context, signal: object) -> str:
    child, cancel = gocontext.with_cancel(ctx)
    ref = poll_until_done.remote(child, signal)  # passed on: a tree of tasks
    try:
        return ray.get(ref)[0]
    finally:
        cancel()


@ray.remote(num_cpus=0, max_concurrency=2000)
class AsyncWorker:
    async def wait_done(self, ctx: gocontext.Context, signal: object) -> str:
        await signal.set.remote("running")  # type: ignore[attr-defined]
        await asyncio.wait_for(ctx.done(), NEVER)  # type: ignore[arg-type]
        return type(ctx.err()).__name__

    async def own_cancel(self, ctx: gocontext.Context, tag: int) -> tuple[int, str | None]:
        # BOUND, not NEVER: a thousand ends cross Ray on a shared, maybe loaded, host
        await asyncio.wait_for(ctx.done(), BOUND)  # type: ignore[arg-type]
        return tag, ctx.value(RID)


def test_a_busy_remote_loop_sees_the_drivers_cancel(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
    ref = poll_until_done.remote(ctx, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]
    cancel(ConnectionResetError("client left"))
    kind, why = ray.get(ref, timeout=NEVER)
    assert kind == "Canceled"
    assert "client left" in why


def test_a_remote_thread_blocked_in_wait_wakes(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = block_until_done.remote(ctx, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]
    cancel()
    assert ray.get(ref, timeout=NEVER) == "True Canceled"


def test_an_async_actor_method_awaiting_done_is_woken(signal: object) -> None:
    worker = AsyncWorker.remote()  # type: ignore[attr-defined]
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = worker.wait_done.remote(ctx, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]
    cancel()
    assert ray.get(ref, timeout=NEVER) == "Canceled"
    ray.kill(worker)


def test_deadline_and_only_propagated_values_travel() -> None:
    ctx = gocontext.with_value(gocontext.background(), RID, "r-9")
    ctx = gocontext.with_value(ctx, SECRET, "hunter2")
    ctx, cancel = gocontext.with_timeout(ctx, 30)
    got = ray.get(describe.remote(ctx), timeout=NEVER)
    cancel()
    assert got["rid"] == "r-9"
    assert got["secret"] is None
    assert 20 < got["remaining"] <= 30  # type: ignore[operator]
    assert got["err"] == "None"


def test_the_deadline_ends_the_remote_context(signal: object) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.5)
    kind, _ = ray.get(poll_until_done.remote(ctx, signal), timeout=NEVER)
    assert kind == "DeadlineExceeded"
    cancel()


def test_a_done_context_arrives_done() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    assert ray.get(describe.remote(ctx))["err"] == "Canceled('context canceled')"
    expired, _ = gocontext.with_timeout(gocontext.background(), 0)
    assert ray.get(describe.remote(expired))["err"].startswith("DeadlineExceeded")


def test_one_cancel_stops_a_tree_of_tasks(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    ref = parent_task.remote(ctx, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]  # the grandchild runs
    cancel()
    assert ray.get(ref, timeout=NEVER) == "Canceled"


def test_get_returns_results_or_raises_and_cancels_at_once(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    assert gocontext.ray.get(ctx, describe.remote(ctx))["err"] == "None"
    assert len(gocontext.ray.get(ctx, [describe.remote(ctx) for _ in range(3)])) == 3
    other, stop_other = gocontext.with_cancel(gocontext.background())
    ref = block_until_done.remote(other, signal)  # waits on a context get() does not know
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]
    import threading

    threading.Timer(0.05, cancel).start()
    with pytest.raises(gocontext.Canceled):
        gocontext.ray.get(ctx, ref)
    ready, _ = ray.wait([ref], timeout=0)  # get() did not wait for the task: it still runs
    assert ready == []
    stop_other()  # let the task end, whether or not Ray's own cancel reached it
    with contextlib.suppress(ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
        assert ray.get(ref, timeout=NEVER) == "True Canceled"


def test_get_with_a_deadline_raises_deadline_exceeded(signal: object) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.2)
    ref = block_until_done.remote(gocontext.background(), signal)
    with pytest.raises(gocontext.DeadlineExceeded):
        gocontext.ray.get(ctx, ref)
    cancel()


@pytest.mark.anyio
async def test_get_async_under_asyncio_and_trio() -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 30)
    got = await gocontext.ray.get_async(ctx, describe.remote(ctx))
    assert got["err"] == "None"
    cancel()
    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        await gocontext.ray.get_async(ctx, describe.remote(gocontext.background()))


def test_a_dying_worker_gives_rays_error_not_a_hang() -> None:
    @ray.remote(num_cpus=0, max_retries=0)
    def die(ctx: gocontext.Context) -> None:
        os._exit(1)

    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with pytest.raises(ray.exceptions.RayError):
        gocontext.ray.get(ctx, die.remote(ctx))
    assert ctx.err() is None
    cancel()


def test_a_dead_channel_ends_the_remote_contexts(signal: object) -> None:
    """The sender's process going away ends what it sent (here: its channel actor is killed)."""
    from gocontext.ray import _channel

    ctx, _cancel = gocontext.with_cancel(gocontext.background())
    ref = poll_until_done.remote(ctx, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]
    channel = _channel.sender_channel()
    ray.kill(channel)
    kind, why = ray.get(ref, timeout=BOUND)  # (a killed actor is noticed late on a busy host)
    assert kind == "Canceled"
    assert "ChannelGone" in why


def test_many_contexts_each_see_their_own_cancel_and_the_channel_empties() -> None:
    from gocontext.ray import _channel

    n = 1000
    worker = AsyncWorker.remote()  # type: ignore[attr-defined]
    rng = random.Random(3)
    pairs = [
        gocontext.with_cancel(gocontext.with_value(gocontext.background(), RID, f"c{i}"))
        for i in range(n)
    ]
    refs = [worker.own_cancel.remote(ctx, i) for i, (ctx, _) in enumerate(pairs)]
    order = list(range(n))
    rng.shuffle(order)
    for i in order:
        pairs[i][1]()
    results = ray.get(refs, timeout=BOUND)
    assert results == [(i, f"c{i}") for i in range(n)]
    channel = _channel.sender_channel()
    del pairs, refs
    import gc

    gc.collect()
    give_up = time.monotonic() + BOUND  # the watchers report what ended asynchronously
    while ray.get(channel.size.remote()) != 0 and time.monotonic() < give_up:
        time.sleep(0.05)
    assert ray.get(channel.size.remote()) == 0
    ray.kill(worker)


def test_contexts_pickle_only_with_the_integration_loaded() -> None:
    import pickle

    ctx, cancel = gocontext.with_cancel(gocontext.background())
    data = pickle.dumps(ctx)  # the reducer is installed by importing gocontext.ray
    copy = pickle.loads(data)
    assert copy.err() is None
    cancel()
    assert copy.done().wait(NEVER)


def test_without_ray_running_a_context_does_not_pickle_and_starts_nothing() -> None:
    import subprocess
    import sys

    code = (
        "import pickle, ray, gocontext, gocontext.ray\n"
        "ctx, _ = gocontext.with_cancel(gocontext.background())\n"
        "try:\n"
        "    pickle.dumps(ctx)\n"
        "except TypeError as e:\n"
        "    print('refused:', e)\n"
        "print('ray started:', ray.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "refused: a gocontext context cannot be pickled" in out.stdout
    assert "ray started: False" in out.stdout


def test_the_time_left_travels_on_the_deadline_clock() -> None:
    """A context sent under a fake clock carries the fake clock's time left, and one that
    arrives from another host counts from arrival on this process's deadline clock."""
    from gocontext.ray import _serialize
    from gocontext.testing import fake_clock

    with fake_clock() as clock:
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 100)
        clock.advance(90)
        _, (wire,) = _serialize.reduce(ctx)
        assert wire.deadline is not None
        assert wire.deadline.remaining == pytest.approx(10.0)
        cancel()
        clock.advance(50)  # the fake clock now runs 140 s ahead of the real one
        far = wire._replace(link=None, deadline=wire.deadline._replace(boot_id="another-host"))
        copy = _serialize.rebuild(far)
        assert copy.remaining() == pytest.approx(10.0)  # type: ignore[attr-defined]


def test_contexts_travel_even_when_they_refuse_pickling_by_themselves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gocontext.ray pickles contexts through copyreg, not through their own __reduce__."""
    import pickle

    from gocontext._context import _OURS, _Base, _ForeignValueContext

    def refuse(self: object) -> object:
        raise TypeError(f"cannot pickle {type(self).__name__}: import gocontext.ray")

    monkeypatch.setattr(_Base, "__reduce__", refuse)
    ctx, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), RID, "r-3"), 30
    )
    copy = pickle.loads(pickle.dumps(ctx))
    assert copy.value(RID) == "r-3"
    got = ray.get(describe.remote(ctx), timeout=NEVER)
    assert got["rid"] == "r-3"
    assert got["err"] == "None"
    cancel()
    assert copy.done().wait(NEVER)
    import copyreg

    for cls in (*_OURS, _ForeignValueContext):
        assert cls in copyreg.dispatch_table, cls


def test_a_deadline_the_sender_reaches_ends_the_remote_copy_as_deadline_exceeded(
    signal: object,
) -> None:
    """The channel carries how the context ended: here only the sender's clock reaches the
    deadline (a fake clock), so the remote copy learns it from the channel, not its own timer."""
    from gocontext.testing import fake_clock

    with fake_clock() as clock:
        ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
        ref = poll_until_done.remote(ctx, signal)
        ray.get(signal.wait.remote())  # type: ignore[attr-defined]
        clock.advance(3600)
        assert isinstance(ctx.err(), gocontext.DeadlineExceeded)
    kind, why = ray.get(ref, timeout=NEVER)
    assert kind == "DeadlineExceeded"
    assert why == "DeadlineExceeded('context deadline exceeded')"
    cancel()
