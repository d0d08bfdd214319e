"""``gocontext.grpc.channel()`` and ``aio_channel()``: channels whose calls honour their context
without grpc's interceptor machinery. The promises of the interceptors are tested for both ways
in ``test_grpc.py`` and ``test_grpc_client_faults.py``; here, what is the channels' own:
``with_call``, the caller's metadata, generated stubs' registered methods, a channel whose
callables are not grpc's own, ``read()`` of a streamed answer, a done context, closing, and
bad input. grpc.aio runs on asyncio only: its tests have no trio twin."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from . import conftest as wires
from .conftest import BOARD, cancel_when_entered, rid, with_rid
from .grpc_app import (  # the fixtures: used by name
    HOW,
    GrpcServer,
    anyio_backend,  # noqa: F401
    method,
    new_aio_channel,
    on_the_modules_loop,
    one_loop_for_the_module,  # noqa: F401
    sync_channel,
)


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    with GrpcServer("sync") as s:
        yield s


@pytest.mark.parametrize("how", HOW)
def test_with_call_gives_the_answer_and_the_call(server: GrpcServer, how: str) -> None:
    name = rid("with-call")
    with sync_channel(server.target, how) as ch:
        with gocontext.with_timeout(with_rid(name), 30) as (ctx, _), gocontext.use(ctx):
            answer, call = ch.unary_unary(method("Info")).with_call(b"")
        body = json.loads(answer)
        assert body["rid"] == name
        assert 0 < body["remaining"] <= 31
        assert call.code() == grpc.StatusCode.OK
        assert _context.watcher_count(ctx) == 0


@pytest.mark.parametrize("how", HOW)
def test_cancel_from_another_thread_ends_a_with_call(server: GrpcServer, how: str) -> None:
    name = rid("with-call-cancel")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    with sync_channel(server.target, how) as ch:
        t = cancel_when_entered(name, cancel)
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            ch.unary_unary(method("Wait")).with_call(b"", timeout=5)  # (5 s: a bound if it fails)
        t.join(NEVER)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0
        assert ch.unary_unary(method("Ok"))(b"", timeout=NEVER) == b"ok"


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("values", [True, False])
def test_the_callers_metadata_goes_out_with_the_values(
    server: GrpcServer, how: str, values: bool
) -> None:
    name = rid("sync-md")
    parent = with_rid(name) if values else gocontext.background()
    pairs = (("x-extra", "a"), ("baggage", "other=1"))
    with sync_channel(server.target, how) as ch:
        with gocontext.with_timeout(parent, 30) as (ctx, _), gocontext.use(ctx):
            body = json.loads(ch.unary_unary(method("Info"))(b"", metadata=pairs))
    merged = f"other=1,{wires.RID.name}={name}" if values else "other=1"
    assert sorted(tuple(pair) for pair in body["metadata"]) == [
        ("baggage", merged),
        ("x-extra", "a"),
    ]


@pytest.mark.parametrize("how", HOW)
def test_a_generated_stubs_registered_method_is_reached_by_a_cancel(
    server: GrpcServer, how: str
) -> None:
    """Stubs generated for grpc 1.62 on ask for their callables with ``_registered_method``."""
    name = rid("registered")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    with sync_channel(server.target, how) as ch:
        wait = ch.unary_unary(
            method("Wait"),
            request_serializer=bytes,
            response_deserializer=bytes,
            _registered_method=True,
        )
        t = cancel_when_entered(name, cancel)
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            wait(b"", timeout=5)  # (5 s: a bound if it fails)
        t.join(NEVER)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)


class _AddsMetadata(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """The caller's own interceptor, under ``channel()``: its callables are not grpc's own."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=[*(details.metadata or ()), ("x-later", "1")])
        return continuation(details, request)


def test_over_a_channel_of_the_callers_own_interceptors_every_promise_holds(
    server: GrpcServer,
) -> None:
    inner = grpc.intercept_channel(grpc.insecure_channel(server.target), _AddsMetadata())
    with gocontext.grpc.channel(inner) as ch:
        name = rid("over-interceptors")
        with gocontext.with_timeout(with_rid(name), 30) as (ctx, _), gocontext.use(ctx):
            body = json.loads(ch.unary_unary(method("Info"))(b""))
        assert body["rid"] == name
        assert 0 < body["remaining"] <= 31
        assert ("x-later", "1") in {tuple(pair) for pair in body["metadata"]}
        name = rid("over-interceptors-cancel")
        ctx, cancel = gocontext.with_cancel(with_rid(name))
        t = cancel_when_entered(name, cancel)
        with gocontext.use(ctx), pytest.raises(gocontext.Canceled):
            ch.unary_unary(method("Wait"))(b"", timeout=5)  # (5 s: a bound if it fails)
        t.join(NEVER)
        assert isinstance(BOARD.wait_ended(name), gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0


def test_a_context_that_can_never_end_calls_as_plain_grpc(server: GrpcServer) -> None:
    with gocontext.grpc.channel(grpc.insecure_channel(server.target)) as ch:
        body = json.loads(ch.unary_unary(method("Info"))(b""))
        answer, call = ch.unary_unary(method("Ok")).with_call(b"", timeout=NEVER)
    assert body["remaining"] is None
    assert body["rid"] is None
    assert (answer, call.code()) == (b"ok", grpc.StatusCode.OK)


def test_closing_it_closes_the_inner_channel(server: GrpcServer) -> None:
    inner = grpc.insecure_channel(server.target)
    with gocontext.grpc.channel(inner) as ch:
        assert ch.unary_unary(method("Ok"))(b"", timeout=NEVER) == b"ok"
    with pytest.raises(ValueError, match="closed channel"):
        inner.unary_unary(method("Ok"))(b"", timeout=NEVER)


def test_connectivity_is_the_inner_channels(server: GrpcServer) -> None:
    ready = threading.Event()

    def seen(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            ready.set()

    with gocontext.grpc.channel(grpc.insecure_channel(server.target)) as ch:
        ch.subscribe(seen, try_to_connect=True)
        assert ready.wait(NEVER)
        ch.unsubscribe(seen)


@pytest.mark.parametrize("bad", [None, "127.0.0.1:9", object()])
def test_a_value_that_is_not_a_channel_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match=r"gocontext\.grpc\.channel\(\) needs a grpc\.Channel"):
        gocontext.grpc.channel(bad)


# -- grpc.aio --------------------------------------------------------------------------------


@on_the_modules_loop
@pytest.mark.parametrize("kind", ["stream-out", "both-ways"])
async def test_aio_read_of_a_streamed_answer_raises_canceled_after_a_cancel(
    server: GrpcServer, kind: str
) -> None:
    name = rid(f"aio-read-{kind}")
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    async with gocontext.grpc.aio_channel(grpc.aio.insecure_channel(server.target)) as ch:
        with gocontext.use(ctx):
            if kind == "stream-out":
                call = ch.unary_stream(method("WaitStream"))(b"")
            else:
                call = ch.stream_stream(method("WaitBoth"))(iter([b"a"]))
        with anyio.fail_after(NEVER):
            assert await call.read() == b"first"
        t = cancel_when_entered(name, cancel)
        with pytest.raises(gocontext.Canceled), anyio.fail_after(NEVER):
            await call.read()
        await anyio.to_thread.run_sync(t.join, NEVER)
        cause = await anyio.to_thread.run_sync(BOARD.wait_ended, name)
        assert isinstance(cause, gocontext.http.ClientDisconnected)
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
async def test_aio_calls_are_grpc_aio_calls_of_their_kind(server: GrpcServer) -> None:
    with gocontext.with_timeout(with_rid(rid("aio-kinds")), 30) as (ctx, _):
        async with gocontext.grpc.aio_channel(grpc.aio.insecure_channel(server.target)) as ch:
            with gocontext.use(ctx):
                calls = {
                    grpc.aio.UnaryUnaryCall: ch.unary_unary(method("Ok"))(b""),
                    grpc.aio.StreamUnaryCall: ch.stream_unary(method("Collect"))(iter([b"a"])),
                    grpc.aio.UnaryStreamCall: ch.unary_stream(method("Echo"))(b"x"),
                    grpc.aio.StreamStreamCall: ch.stream_stream(method("Echo"))(iter([b"x"])),
                }
            for kind, call in calls.items():
                assert isinstance(call, kind)
                with anyio.fail_after(NEVER):
                    if kind in (grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
                        assert [r.split()[0] async for r in call] == [b"x"]
                    else:
                        await call
                    assert await call.code() == grpc.StatusCode.OK
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
async def test_aio_read_to_the_end_of_a_whole_stream_gives_eof(server: GrpcServer) -> None:
    with gocontext.with_timeout(with_rid(rid("aio-read-whole")), 30) as (ctx, _):
        async with gocontext.grpc.aio_channel(grpc.aio.insecure_channel(server.target)) as ch:
            with gocontext.use(ctx):
                call = ch.stream_stream(method("Echo"))(iter([b"x", b"y"]))
            with anyio.fail_after(NEVER):
                got = [await call.read() for _ in range(3)]
        assert got[2] is grpc.aio.EOF
        assert [r.split()[0] for r in got[:2]] == [b"x", b"y"]
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("done", ["canceled", "expired"])
async def test_aio_a_done_context_sends_nothing(how: str, done: str) -> None:
    ctx, expected = wires.done_context(done)
    with wires.unreached_port() as port:
        async with new_aio_channel(f"127.0.0.1:{port}", how) as ch:
            with gocontext.use(ctx), pytest.raises(expected), anyio.fail_after(NEVER):
                await ch.unary_unary(method("Ok"))(b"")


@on_the_modules_loop
async def test_aio_closing_it_closes_the_inner_channel(server: GrpcServer) -> None:
    inner = grpc.aio.insecure_channel(server.target)
    async with gocontext.grpc.aio_channel(inner) as ch:
        with anyio.fail_after(NEVER):
            await ch.channel_ready()
        assert ch.get_state() == grpc.ChannelConnectivity.READY
        assert await ch.unary_unary(method("Ok"))(b"") == b"ok"
    assert inner.get_state() == grpc.ChannelConnectivity.SHUTDOWN


@pytest.mark.parametrize("bad", [None, "127.0.0.1:9", object()])
def test_aio_a_value_that_is_not_an_aio_channel_is_a_type_error(bad: object) -> None:
    with pytest.raises(
        TypeError, match=r"gocontext\.grpc\.aio_channel\(\) needs a grpc\.aio\.Channel"
    ):
        gocontext.grpc.aio_channel(bad)


def test_aio_a_sync_channel_is_a_type_error(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.target) as sync, pytest.raises(TypeError, match="Channel"):
        gocontext.grpc.aio_channel(sync)
