"""A Ray fan-out that stops at its first failure, and ``ray.wait`` bounded by a context."""

from __future__ import annotations

import threading

import anyio
import pytest

import gocontext

ray = pytest.importorskip("ray")
import gocontext.ray  # noqa: E402

from ..conftest import NEVER  # noqa: E402
from .conftest import Signal  # noqa: E402

SHARD_FAILED = "RemoteCause(\"ValueError('shard 1 failed')\")"


@ray.remote(num_cpus=0)
def slow_shard(ctx: gocontext.Context, running: object) -> tuple[str, str]:
    """Runs until its context ends (or NEVER), then says how it ended."""
    ray.get(running.set.remote("slow"))  # type: ignore[attr-defined]
    ended = ctx.done().wait(NEVER)
    if not ended:
        return ("never ended", "")
    return type(ctx.err()).__name__, repr(gocontext.cause(ctx))


@ray.remote(num_cpus=0)
def failing_shard(ctx: gocontext.Context, running: object) -> None:
    """Fails once its slow sibling is known to be running."""
    ray.get(running.wait.remote())  # type: ignore[attr-defined]
    raise ValueError("shard 1 failed")


@ray.remote(num_cpus=0)
def held_shard(ctx: gocontext.Context, running: object, release: object) -> str:
    """Runs until *release* is set, then reports its context's error."""
    ray.get(running.set.remote("held"))  # type: ignore[attr-defined]
    ray.get(release.wait.remote())  # type: ignore[attr-defined]
    return repr(ctx.err())


@ray.remote(num_cpus=0)
def quick(n: int) -> int:
    return n


@ray.remote(num_cpus=0)
def ends(ctx: gocontext.Context) -> str:
    """How *ctx* ended, once it has (the end reaches a task shortly after it starts)."""
    ctx.done().wait(NEVER)
    err = ctx.err()
    return "never ended" if err is None else type(err).__name__


def test_the_first_failure_in_completion_order_stops_the_siblings(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    slow = slow_shard.remote(ctx, signal)
    # The slow shard comes first in the list: ray.get's order would wait for it forever.
    with pytest.raises(ValueError, match="shard 1 failed"):
        gocontext.ray.get(ctx, [slow, failing_shard.remote(ctx, signal)])
    assert ctx.err() is None  # the caller's context is not get()'s to cancel
    # The slow shard ended only because its copy of ctx ended: nothing else can end it.
    assert ray.get(slow, timeout=NEVER) == ("Canceled", SHARD_FAILED)
    # As Ray tasks see it, ctx is spent: one sent it now sees it end.
    assert ray.get(ends.remote(ctx), timeout=NEVER * 2) == "Canceled"
    cancel()


def test_results_come_in_list_order_when_every_task_succeeds() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    refs = [quick.remote(n) for n in range(5)]
    assert gocontext.ray.get(ctx, refs + refs[:1]) == [0, 1, 2, 3, 4, 0]
    assert gocontext.ray.get(ctx, refs, fail_fast=False) == [0, 1, 2, 3, 4]
    cancel()


def test_without_fail_fast_get_waits_for_every_task(
    signal: object, request: pytest.FixtureRequest
) -> None:
    release = Signal.remote()  # type: ignore[attr-defined]
    request.addfinalizer(lambda: ray.kill(release))
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    held = held_shard.remote(ctx, signal, release)
    failing = failing_shard.remote(ctx, signal)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            gocontext.ray.get(ctx, [held, failing], fail_fast=False)
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=run)
    t.start()
    ray.wait([failing], timeout=NEVER)  # the failure is in
    assert t.is_alive()  # still waiting for the held shard
    ray.get(release.set.remote())
    t.join(NEVER)
    assert not t.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], ValueError)
    assert ray.get(held, timeout=NEVER) == "None"  # its context never ended
    cancel()


def test_wait_returns_the_ready_refs(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    other, stop_other = gocontext.with_cancel(gocontext.background())
    blocked = slow_shard.remote(other, signal)
    done = quick.remote(7)
    ready, not_ready = gocontext.ray.wait(ctx, [blocked, done], num_returns=1, timeout=NEVER)
    assert ready == [done] and not_ready == [blocked]
    assert ray.get(ready[0]) == 7
    ready, not_ready = gocontext.ray.wait(ctx, [blocked], timeout=0.01)
    assert ready == [] and not_ready == [blocked]  # a timeout is not an error, as in ray.wait
    stop_other()
    assert ray.get(blocked, timeout=NEVER)[0] == "Canceled"
    cancel()


def test_wait_raises_canceled_when_ctx_is_cancelled_from_another_thread(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    other, stop_other = gocontext.with_cancel(gocontext.background())
    blocked = slow_shard.remote(other, signal)
    ray.get(signal.wait.remote())  # type: ignore[attr-defined]  # it runs
    t = threading.Thread(target=cancel)
    t.start()
    with pytest.raises(gocontext.Canceled):
        gocontext.ray.wait(ctx, [blocked])  # no timeout: only ctx can end this wait
    t.join(NEVER)
    with pytest.raises(gocontext.Canceled):  # already ended: raised at once
        gocontext.ray.wait(ctx, [quick.remote(1)])
    stop_other()
    assert ray.get(blocked, timeout=NEVER)[0] == "Canceled"  # wait() left the task alone


def test_bad_arguments_are_named() -> None:
    ctx = gocontext.background()
    ref = quick.remote(1)
    with pytest.raises(TypeError, match=r"gocontext\.ray\.get\(\).*fail_fast"):
        gocontext.ray.get(ctx, [ref], fail_fast="yes")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"gocontext\.ray\.get\(\)"):
        gocontext.ray.get(ctx, "not refs")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"gocontext\.ray\.get\(\).*timeout"):
        gocontext.ray.get(ctx, [ref], timeout=-1)
    with pytest.raises(TypeError, match=r"gocontext\.ray\.wait\(\)"):
        gocontext.ray.wait(ctx, ref)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"gocontext\.ray\.wait\(\)"):
        gocontext.ray.wait(ctx, [ref, 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"gocontext\.ray\.wait\(\).*num_returns"):
        gocontext.ray.wait(ctx, [ref], num_returns=2)
    with pytest.raises(ValueError, match=r"gocontext\.ray\.wait\(\).*distinct"):
        gocontext.ray.wait(ctx, [ref, ref])
    with pytest.raises(ValueError, match=r"gocontext\.ray\.wait\(\).*timeout"):
        gocontext.ray.wait(ctx, [ref], timeout=float("nan"))
    with pytest.raises(TypeError, match="wait"):
        gocontext.ray.wait(object(), [ref])  # type: ignore[arg-type]
    assert ray.get(ref) == 1


@pytest.mark.anyio
async def test_get_async_stops_the_siblings_at_the_first_failure(signal: object) -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    slow = slow_shard.remote(ctx, signal)
    with anyio.fail_after(NEVER * 3), pytest.raises(ValueError, match="shard 1 failed"):
        await gocontext.ray.get_async(ctx, [slow, failing_shard.remote(ctx, signal)])
    assert ctx.err() is None
    assert ray.get(slow, timeout=NEVER) == ("Canceled", SHARD_FAILED)
    cancel()


def test_wait_raises_deadline_exceeded_when_ctx_times_out(signal: object) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 0.05)
    other, stop_other = gocontext.with_cancel(gocontext.background())
    blocked = slow_shard.remote(other, signal)
    with pytest.raises(gocontext.DeadlineExceeded):
        gocontext.ray.wait(ctx, [blocked], timeout=NEVER * 3)  # ctx's deadline comes first
    stop_other()
    assert ray.get(blocked, timeout=NEVER)[0] == "Canceled"
    cancel()
