"""One async request's watch over its steps (sending it, then each read of its body), under
asyncio and trio: the steps take turns under one registration on the context, a cancel reaches
the step in flight and every later one, and a framework's cancellation of one step leaves the
next alone. A finished request, async or blocking, leaves nothing of ours to the garbage
collector but the body wrapper, and its inner body is closed once. A body read in part, because
the context ended between two reads or because it was closed, has its iterator finished there
and then, not left suspended for the collector."""

from __future__ import annotations

import gc
import threading
import warnings
from typing import Any

import anyio
import httpx
import pytest

import gocontext
import gocontext.http
from gocontext import _context, _loops
from gocontext.http._transport import _AsyncBoundedStream, _Watch

from ..conftest import NEVER
from .conftest import Server

pytestmark = pytest.mark.anyio


def _cancel_when(entered: threading.Event, cancel: Any) -> threading.Thread:
    def run() -> None:
        if entered.wait(NEVER):
            cancel()

    t = threading.Thread(target=run)
    t.start()
    return t


async def test_steps_take_turns_and_a_cancel_reaches_the_step_in_flight_and_every_later_one() -> (
    None
):
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    try:
        for _ in range(3):  # steps that finish leave nothing behind for the next
            with watch:
                await anyio.sleep(0)
        assert _context.watcher_count(ctx) == 1  # one registration for every step
        entered = threading.Event()
        t = _cancel_when(entered, cancel)
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            with watch:
                entered.set()
                await anyio.sleep(NEVER)
        t.join(NEVER)
        with pytest.raises(gocontext.Canceled):  # a step after the end raises at once
            with watch:
                pytest.fail("the step ran")
        await anyio.sleep(0)  # and the task has no cancellation left pending
    finally:
        watch.close()
    assert _context.watcher_count(ctx) == 0


async def test_a_framework_cancellation_of_one_step_passes_and_leaves_the_next_alone() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    try:
        with anyio.CancelScope() as outer:
            outer.cancel()
            with watch:
                await anyio.sleep(NEVER)
            pytest.fail("the framework's cancellation was swallowed")
        assert outer.cancelled_caught
        with anyio.fail_after(NEVER):
            with watch:  # the next step is neither cancelled nor left cancelling
                await anyio.sleep(0.01)
        assert ctx.err() is None
    finally:
        watch.close()
        cancel()


async def test_steps_in_other_tasks_are_each_cancelled_in_their_own_task() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    entered = threading.Event()
    errors: list[BaseException] = []

    async def step(block: bool) -> None:
        try:
            with watch:
                if block:
                    entered.set()
                    await anyio.sleep(NEVER)
                else:
                    await anyio.sleep(0)
        except gocontext.Canceled as e:
            errors.append(e)

    try:
        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                tg.start_soon(step, False)
            t = _cancel_when(entered, cancel)
            async with anyio.create_task_group() as tg:
                tg.start_soon(step, True)
            t.join(NEVER)
    finally:
        watch.close()
    assert [type(e) for e in errors] == [gocontext.Canceled]


async def test_a_cancel_waits_for_a_shield_inside_the_step_then_interrupts_it() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    events: list[str] = []
    try:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            with watch:
                with anyio.CancelScope(shield=True):
                    t = threading.Thread(target=cancel)
                    t.start()
                    await ctx.done()  # ended, the end on its way to this step
                    for _ in range(3):  # waits in the shield: the interrupt lands in none
                        await anyio.sleep(0.01)
                    events.append("shielded work done")
                t.join(NEVER)
                await anyio.sleep(NEVER)  # the first wait outside the shield is interrupted
                events.append("not interrupted")
    finally:
        watch.close()
    assert events == ["shielded work done"]


async def test_a_step_that_waits_again_after_the_interrupt_is_interrupted_again() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    entered = threading.Event()
    t = _cancel_when(entered, cancel)
    try:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            with watch:
                try:
                    entered.set()
                    await anyio.sleep(NEVER)
                finally:
                    await anyio.sleep(NEVER)  # cleanup that waits, unshielded
    finally:
        t.join(NEVER)
        watch.close()


async def test_a_task_group_inside_the_step_is_stopped_with_it() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    watch = _Watch(ctx, False)
    entered = threading.Event()
    t = _cancel_when(entered, cancel)
    stopped: list[str] = []

    async def child() -> None:
        try:
            entered.set()
            await anyio.sleep(NEVER)
        finally:
            stopped.append("child")

    try:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            with watch:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(child)
    finally:
        t.join(NEVER)
        watch.close()
    assert stopped == ["child"]
    await anyio.sleep(0)  # and the task has no cancellation left pending


def _garbage_per_request(client: httpx.AsyncClient, url: str, ext: dict[str, Any]) -> Any:
    """Objects that each request leaves for the garbage collector (cycles), on average."""

    async def count() -> float:
        await client.get(url, extensions=ext)  # connected, warm
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                r = await client.get(url, extensions=ext)
                assert r.status_code == 200
            del r
            return gc.collect() / 20
        finally:
            gc.enable()

    return count()


async def test_a_finished_request_leaves_the_garbage_collector_no_more_than_httpx_does(
    server: Server,
) -> None:
    # httpx's response and its stream refer to each other: whatever our body wrapper still
    # holds once the response is closed (the watch, its scope, the registration's handle, the
    # inner iterator) would wait for the collector too, and make it run sooner.
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
    url = f"{server.url}/info"
    with anyio.fail_after(NEVER):
        async with httpx.AsyncClient() as plain:
            theirs = await _garbage_per_request(plain, url, {})
        async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
            ours = await _garbage_per_request(client, url, {"gocontext": ctx})
    assert ours <= theirs + 1, (ours, theirs)  # + the wrapper itself
    assert _context.watcher_count(ctx) == 0
    cancel()


def test_a_finished_blocking_request_leaves_the_garbage_collector_no_more_than_httpx_does(
    server: Server,
) -> None:
    ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
    url = f"{server.url}/info"

    def per_request(client: httpx.Client, ext: dict[str, Any]) -> float:
        client.get(url, extensions=ext)  # connected, warm
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert client.get(url, extensions=ext).status_code == 200
            return gc.collect() / 20
        finally:
            gc.enable()

    with httpx.Client() as plain:
        theirs = per_request(plain, {})
    with httpx.Client(transport=gocontext.http.Transport()) as client:
        ours = per_request(client, {"gocontext": ctx})
    assert ours <= theirs + 1, (ours, theirs)  # + the body wrapper itself
    assert _context.watcher_count(ctx) == 0
    cancel()


class _Closing(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.closed = 0

    async def __aiter__(self) -> Any:
        yield b"hello"

    async def aclose(self) -> None:
        self.closed += 1


async def test_the_inner_body_is_closed_once_after_its_end() -> None:
    streams: list[_Closing] = []

    class Inner(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            streams.append(_Closing())
            return httpx.Response(200, stream=streams[-1])

    ctx, cancel = gocontext.with_timeout(gocontext.background(), 3600)
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(Inner())) as client:
        r = await client.get("http://127.0.0.1:9/", extensions={"gocontext": ctx})
        assert r.content == b"hello"
        async with client.stream("GET", "http://127.0.0.1:9/", extensions={"gocontext": ctx}) as r:
            pass  # closed unread
    assert [s.closed for s in streams] == [1, 1]
    assert _context.watcher_count(ctx) == 0
    cancel()


async def test_one_scope_serves_every_step_one_at_a_time_where_the_library_allows(
    anyio_backend: str,
) -> None:
    loops = _loops.backend()
    step = loops.step_scope(loops.here())
    if anyio_backend == "trio" or not _loops.HAS_CANCELLING:
        assert step is None  # a trio scope (or anyio's, on 3.10) is entered once: one a step
        return
    assert isinstance(step, _loops.StepScope)
    with step, pytest.raises(RuntimeError, match="one step at a time"):
        with step:
            pass
    with step:  # and again, once the step has left
        await anyio.sleep(0)


class _Recorded(httpx.AsyncByteStream):
    """A body of two chunks whose iterator says when it was left unfinished."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __aiter__(self) -> Any:
        try:
            yield b"one"
            await anyio.sleep(0)  # the next chunk waits for the network: a checkpoint
            yield b"two"
            self.events.append("exhausted")
        finally:
            self.events.append("finalized")

    async def aclose(self) -> None:
        self.events.append("closed")


async def _client_reading(
    ctx: gocontext.Context, between_reads: Any
) -> tuple[_Recorded, BaseException | None]:
    body = _Recorded()

    class Inner(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, stream=body)

    raised: BaseException | None = None
    gc.disable()  # what is left unfinished must not be finished by the collector either
    try:
        async with (
            httpx.AsyncClient(transport=gocontext.http.AsyncTransport(Inner())) as client,
            client.stream("GET", "http://127.0.0.1:9/", extensions={"gocontext": ctx}) as r,
        ):
            try:
                async for _chunk in r.aiter_raw():
                    await between_reads()
            except gocontext.Canceled as e:
                raised = e
    finally:
        gc.enable()
    return body, raised


async def test_a_cancel_between_two_reads_of_a_body_finishes_its_iterator() -> None:
    # The caller works between reads (an await of its own): the cancel lands there, and the
    # next read raises Canceled, with the body's iterator finished, not left suspended for
    # the garbage collector (trio warns of that, and its cleanup would run there).
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    async def cancel_between_reads() -> None:
        cancel()
        await anyio.sleep(0)

    body, raised = await _client_reading(ctx, cancel_between_reads)
    assert isinstance(raised, gocontext.Canceled)
    assert body.events == ["finalized", "closed"]


async def test_a_body_read_in_part_has_its_iterator_finished_when_it_is_closed() -> None:
    # (At the body's own level: httpx's iterators above it are httpx's to finish.)
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    body = _Recorded()
    stream = _AsyncBoundedStream(body, _Watch(ctx, False))
    gc.disable()
    try:
        async for chunk in stream:
            assert chunk == b"one"
            break
        await stream.aclose()
    finally:
        gc.enable()
    assert body.events == ["finalized", "closed"]
    assert _context.watcher_count(ctx) == 0
    cancel()


async def test_a_cancel_between_two_reads_of_a_real_body_finishes_httpcores_generators(
    server: Server,
) -> None:
    """httpcore reads a body through nested async generators: closing the outer one leaves
    the inner ones suspended, for the garbage collector to finish (trio warns of each). A
    cancel between two reads must end them all, as one inside a read does."""
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
            with pytest.raises(gocontext.Canceled):
                async with client.stream(
                    "GET", f"{server.url}/stream", extensions={"gocontext": ctx}
                ) as r:
                    async for _ in r.aiter_raw():
                        cancel()  # between this read and the next
            gc.collect()
            await anyio.sleep(0)  # (trio finishes collected generators in a system task)
            r2 = await client.get(f"{server.url}/info")
        assert r2.status_code == 200
    unfinished = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unfinished == []
