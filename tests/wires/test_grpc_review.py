"""gRPC clients and servers reviewed as a careful user and an attacker would: a server's own
``DEADLINE_EXCEEDED`` while the caller's context has time left, the caller's metadata in shapes
plain grpc takes (a ``baggage`` value as bytes, a one-shot iterable of pairs), a server stopped
while RPCs of every kind are in flight, a context done before a call of any kind, a handler
that raises a ``BaseException``. Real servers on 127.0.0.1, real channels. grpc.aio runs on
asyncio only: its tests have no trio twin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import anyio
import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
import gocontext.http
from gocontext import _context
from gocontext.grpc import _server
from gocontext.http._headers import parse_baggage

from ..conftest import NEVER
from . import conftest as wires
from .conftest import rid, with_rid
from .grpc_app import (  # the fixtures: used by name
    HOW,
    _server_loop,
    anyio_backend,  # noqa: F401
    new_aio_channel,
    on_the_modules_loop,
    one_loop_for_the_module,  # noqa: F401
    sync_channel,
)

OWN = "gocontext.test.Review"


def own(name: str) -> str:
    return f"/{OWN}/{name}"


# -- a plain server (no interceptor of ours): what any gRPC server may answer ---------------


def _downstream_timed_out(request: bytes, servicer_context: Any) -> bytes:
    """A handler whose own call downstream timed out: it says so, at once."""
    servicer_context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "downstream timed out")


def _downstream_timed_out_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    yield b"first"
    servicer_context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "downstream timed out")


def _downstream_timed_out_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    for _ in requests:
        pass
    servicer_context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "downstream timed out")


def _echo_md(request: bytes, servicer_context: Any) -> bytes:
    return json.dumps(
        [
            [k, v]
            for k, v in servicer_context.invocation_metadata()
            if not k.startswith("grpc-") and k != "user-agent" and not k.endswith("-bin")
        ]
    ).encode()


def _echo_md_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    for _ in requests:
        pass
    return _echo_md(b"", servicer_context)


@pytest.fixture(scope="module")
def plain_server() -> Iterator[str]:
    table = {
        "Expired": grpc.unary_unary_rpc_method_handler(_downstream_timed_out),
        "ExpiredStream": grpc.unary_stream_rpc_method_handler(_downstream_timed_out_stream),
        "ExpiredIn": grpc.stream_unary_rpc_method_handler(_downstream_timed_out_in),
        "EchoMd": grpc.unary_unary_rpc_method_handler(_echo_md),
        "EchoMdIn": grpc.stream_unary_rpc_method_handler(_echo_md_in),
    }
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(OWN, table),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait(NEVER)


def sync_ch(target: str, how: str) -> Any:
    return grpc.insecure_channel(target) if how == "plain" else sync_channel(target, how)


def aio_ch(target: str, how: str) -> Any:
    return grpc.aio.insecure_channel(target) if how == "plain" else new_aio_channel(target, how)


# ==========================================================================================
# 1. a server's own DEADLINE_EXCEEDED, with a minute left on the caller's context
# ==========================================================================================


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("form", ["call", "with_call", "future", "stream", "stream-in"])
def test_a_servers_deadline_exceeded_with_time_left_stays_an_rpc_error(
    plain_server: str, how: str, form: str
) -> None:
    """The context's deadline has not passed (nor gRPC's, the same): the status is the
    server's (here, its own call downstream timed out), raised as grpc's RpcError, as it would
    be without gocontext; never ``gocontext.DeadlineExceeded`` with the context still alive."""
    with sync_ch(plain_server, how) as ch:
        with gocontext.with_timeout(gocontext.background(), 60) as (ctx, _), gocontext.use(ctx):
            with pytest.raises(grpc.RpcError) as info:
                if form == "call":
                    ch.unary_unary(own("Expired"))(b"")
                elif form == "with_call":
                    ch.unary_unary(own("Expired")).with_call(b"")
                elif form == "future":
                    ch.unary_unary(own("Expired")).future(b"").result(NEVER)
                elif form == "stream":
                    list(ch.unary_stream(own("ExpiredStream"))(b""))
                else:
                    ch.stream_unary(own("ExpiredIn"))(iter([b"a"]))
            assert ctx.err() is None
        assert not isinstance(info.value, gocontext.ContextError)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == "downstream timed out"
        assert _context.watcher_count(ctx) == 0


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["unary", "stream", "stream-in"])
async def test_aio_a_servers_deadline_exceeded_with_time_left_stays_an_rpc_error(
    plain_server: str, how: str, kind: str
) -> None:
    async with aio_ch(plain_server, how) as ch:
        with gocontext.with_timeout(gocontext.background(), 60) as (ctx, _):
            with gocontext.use(ctx):
                if kind == "unary":
                    call = ch.unary_unary(own("Expired"))(b"")
                elif kind == "stream":
                    call = ch.unary_stream(own("ExpiredStream"))(b"")
                else:
                    call = ch.stream_unary(own("ExpiredIn"))(iter([b"a"]))
            with pytest.raises(grpc.RpcError) as info, anyio.fail_after(NEVER):
                if kind == "stream":
                    [r async for r in call]
                else:
                    await call
            assert ctx.err() is None
    assert not isinstance(info.value, gocontext.ContextError)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == "downstream timed out"
    assert _context.watcher_count(ctx) == 0


# ==========================================================================================
# 2. the caller's metadata, in shapes plain grpc takes
# ==========================================================================================


def _sent(got: bytes) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(got)]


@pytest.mark.parametrize("how", ["plain", *HOW])
@pytest.mark.parametrize("form", ["call", "future"])
def test_a_baggage_value_given_as_bytes_is_merged_as_its_text(
    plain_server: str, how: str, form: str
) -> None:
    """grpc takes a value of an ASCII key as bytes too: the caller's own baggage members, so
    given, go out as they are, merged with the context's (never as ``b'...'``, which the
    server drops as malformed)."""
    name = rid("review-bytes-baggage")
    metadata = (("baggage", b"user=ada"), ("x-bin", b"\x00\xff"))
    with sync_ch(plain_server, how) as ch:
        with gocontext.with_timeout(with_rid(name), 30) as (ctx, _), gocontext.use(ctx):
            c = ch.unary_unary(own("EchoMd"))
            if form == "call":
                got = c(b"", metadata=metadata)
            else:
                got = c.future(b"", metadata=metadata).result(NEVER)
    expected = "user=ada" if how == "plain" else f"user=ada,{wires.RID.name}={name}"
    assert _sent(got) == [("baggage", expected)]
    assert parse_baggage(expected)["user"] == "ada"


@on_the_modules_loop
@pytest.mark.parametrize("how", ["plain", *HOW])
async def test_aio_a_baggage_value_given_as_bytes_is_merged_as_its_text(
    plain_server: str, how: str
) -> None:
    name = rid("review-aio-bytes-baggage")
    metadata = (("baggage", b"user=ada"), ("x-bin", b"\x00\xff"))
    async with aio_ch(plain_server, how) as ch:
        with gocontext.with_timeout(with_rid(name), 30) as (ctx, _), gocontext.use(ctx):
            with anyio.fail_after(NEVER):
                got = await ch.unary_unary(own("EchoMd"))(b"", metadata=metadata)
    expected = "user=ada" if how == "plain" else f"user=ada,{wires.RID.name}={name}"
    assert _sent(got) == [("baggage", expected)]


@pytest.mark.parametrize("how", ["plain", *HOW])
@pytest.mark.parametrize("values", [True, False])
@pytest.mark.parametrize("form", ["call", "future", "stream-in"])
def test_metadata_given_as_a_one_shot_iterable_goes_out(
    plain_server: str, how: str, values: bool, form: str
) -> None:
    """grpc reads the metadata it is given once, as any iterable of pairs: so must whatever
    reads it before grpc does, whether or not the context has values to add."""
    name = rid("review-md-iter")
    parent = with_rid(name) if values else gocontext.background()

    def metadata() -> Iterator[tuple[str, str]]:
        yield ("x-extra", "a")

    with sync_ch(plain_server, how) as ch:
        with gocontext.with_timeout(parent, 30) as (ctx, _), gocontext.use(ctx):
            c = ch.unary_unary(own("EchoMd"))
            if form == "call":
                got = c(b"", metadata=metadata())
            elif form == "future":
                got = c.future(b"", metadata=metadata()).result(NEVER)
            else:
                got = ch.stream_unary(own("EchoMdIn"))(iter([b""]), metadata=metadata())
    mine = [("baggage", f"{wires.RID.name}={name}")] if values and how != "plain" else []
    assert sorted(_sent(got)) == sorted([("x-extra", "a"), *mine])


# ==========================================================================================
# 3. the server stops while RPCs of every kind are in flight
# ==========================================================================================


class Seen:
    """What one handler saw: that it was in (a stream's: past its first answer), and how its
    context ended."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.ended = threading.Event()
        self.err: BaseException | None = None
        self.cause: BaseException | None = None

    def record(self, ctx: gocontext.Context) -> None:
        self.err, self.cause = ctx.err(), gocontext.cause(ctx)
        self.ended.set()


SEEN: dict[str, Seen] = {}


def _seen() -> Seen:
    return SEEN[str(gocontext.current().value(wires.RID))]


def _sync_park() -> None:
    ctx, seen = gocontext.current(), _seen()
    done = threading.Event()  # (not ctx.done().wait(): the test is how the context ends)
    ctx.done().add_callback(done.set)
    seen.entered.set()
    if done.wait(3 * NEVER):
        seen.record(ctx)


def sync_unary(request: bytes, servicer_context: Any) -> bytes:
    _sync_park()
    return b"late"


def sync_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    yield b"first"
    _sync_park()


def sync_in(requests: Iterator[bytes], servicer_context: Any) -> bytes:
    next(requests)
    _sync_park()
    return b"late"


def sync_both(requests: Iterator[bytes], servicer_context: Any) -> Iterator[bytes]:
    yield next(requests)
    _sync_park()


async def _aio_park() -> None:
    ctx, seen = gocontext.current(), _seen()
    seen.entered.set()
    try:
        await ctx.done()
    finally:
        seen.record(ctx)


async def aio_unary(request: bytes, servicer_context: Any) -> bytes:
    await _aio_park()
    return b"late"


async def aio_stream(request: bytes, servicer_context: Any) -> Any:
    yield b"first"
    await _aio_park()


async def aio_in(requests: Any, servicer_context: Any) -> bytes:
    await requests.__anext__()
    await _aio_park()
    return b"late"


async def aio_both(requests: Any, servicer_context: Any) -> Any:
    yield await requests.__anext__()
    await _aio_park()


def _table(aio: bool) -> Any:
    return grpc.method_handlers_generic_handler(
        OWN,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(aio_unary if aio else sync_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(aio_stream if aio else sync_stream),
            "In": grpc.stream_unary_rpc_method_handler(aio_in if aio else sync_in),
            "Both": grpc.stream_stream_rpc_method_handler(aio_both if aio else sync_both),
        },
    )


RPC_KINDS = ["Unary", "Stream", "In", "Both"]


@pytest.mark.parametrize("kind", ["sync", "aio", "aio-sync"])
@pytest.mark.parametrize("grace", [None, 0.05])
def test_a_server_stopped_with_rpcs_in_flight_ends_each_handlers_context(
    kind: str, grace: float | None
) -> None:
    """``stop(grace)`` with an RPC of each kind in flight (its handler waiting for its context
    to end): every handler's context ends Canceled, none is left for ``context_of()``, the
    callers get grpc's own error (their contexts live on), and nothing hangs."""
    names = {k: rid(f"review-stop-{kind}-{k}") for k in RPC_KINDS}
    for name in names.values():
        SEEN[name] = Seen()
    pool = futures.ThreadPoolExecutor(8)
    loop = _server_loop()[0]
    if kind == "sync":
        server = grpc.server(pool, interceptors=[gocontext.grpc.server_interceptor()])
        server.add_generic_rpc_handlers((_table(aio=False),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    else:

        async def start() -> tuple[Any, int]:
            s = grpc.aio.server(
                migration_thread_pool=pool,
                interceptors=[gocontext.grpc.aio_server_interceptor()],
            )
            s.add_generic_rpc_handlers((_table(aio=kind == "aio"),))
            p = s.add_insecure_port("127.0.0.1:0")
            await s.start()
            return s, int(p)

        server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(NEVER)
    stop_requests = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"a"
        stop_requests.wait(NEVER)

    errors: dict[str, BaseException] = {}
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    try:
        with sync_channel(f"127.0.0.1:{port}", "channel") as ch:
            calls: dict[str, Any] = {}
            for k, name in names.items():
                with gocontext.use(gocontext.with_value(ctx, wires.RID, name)):
                    if k == "Unary":
                        calls[k] = ch.unary_unary(own(k)).future(b"")
                    elif k == "Stream":
                        calls[k] = ch.unary_stream(own(k))(b"")
                    elif k == "In":
                        calls[k] = ch.stream_unary(own(k)).future(requests())
                    else:
                        calls[k] = ch.stream_stream(own(k))(requests())
            for name in names.values():
                assert SEEN[name].entered.wait(NEVER), f"{name} never came in"
            if kind == "sync":
                stopped = server.stop(grace)
            else:
                stopping = asyncio.run_coroutine_threadsafe(server.stop(grace), loop)
            for k, call in calls.items():
                try:
                    if k in ("Stream", "Both"):
                        list(call)
                    else:
                        call.result(NEVER)
                except BaseException as e:  # (the outcome is the error)
                    errors[k] = e
            for name in names.values():
                assert SEEN[name].ended.wait(NEVER), f"{name}'s context never ended"
            if kind == "sync":
                assert stopped.wait(NEVER)
            else:
                stopping.result(NEVER)
    finally:
        stop_requests.set()
        pool.shutdown()
        cancel()
    for k, name in names.items():
        seen = SEEN.pop(name)
        assert isinstance(seen.err, gocontext.Canceled), (k, seen.err)
        assert not isinstance(seen.err, gocontext.DeadlineExceeded), k
        assert isinstance(errors.get(k), grpc.RpcError), (k, errors.get(k))
        assert not isinstance(errors[k], gocontext.ContextError), k
    assert not [c for c in _server._contexts.values() if c.value(wires.RID) in names.values()]


# ==========================================================================================
# 4. a context done before the call: every kind and form raises its error, sending nothing
# ==========================================================================================

SYNC_FORMS = ["call", "with_call", "future", "stream-out", "stream-in", "stream-in-future", "both"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("done", ["canceled", "expired"])
@pytest.mark.parametrize("form", SYNC_FORMS)
def test_a_done_context_sends_nothing_for_any_kind_of_call(how: str, done: str, form: str) -> None:
    ctx, expected = wires.done_context(done)
    sent: list[bytes] = []

    def requests() -> Iterator[bytes]:
        sent.append(b"a")  # (read only by a call that goes out)
        yield b"a"

    with wires.unreached_port() as port, sync_channel(f"127.0.0.1:{port}", how) as ch:
        with gocontext.use(ctx), pytest.raises(expected):
            if form == "call":
                ch.unary_unary(own("Unary"))(b"")
            elif form == "with_call":
                ch.unary_unary(own("Unary")).with_call(b"")
            elif form == "future":
                ch.unary_unary(own("Unary")).future(b"").result(NEVER)
            elif form == "stream-out":
                list(ch.unary_stream(own("Stream"))(b""))
            elif form == "stream-in":
                ch.stream_unary(own("In"))(requests())
            elif form == "stream-in-future":
                ch.stream_unary(own("In")).future(requests()).result(NEVER)
            else:
                list(ch.stream_stream(own("Both"))(requests()))
    assert sent == []
    assert _context.watcher_count(ctx) == 0


AIO_FORMS = ["stream-out", "stream-out-read", "stream-in", "stream-in-write", "both", "both-write"]


@on_the_modules_loop
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("done", ["canceled", "expired"])
@pytest.mark.parametrize("form", AIO_FORMS)
async def test_aio_a_done_context_sends_nothing_for_any_kind_of_call(
    how: str, done: str, form: str
) -> None:
    """(A unary call: ``test_aio_a_done_context_sends_nothing``.) Written to with ``write()``,
    the call raises the context's error (from the write or the call), never a grpc.aio
    ``InvalidStateError`` alone nor a bare ``CancelledError``."""
    ctx, expected = wires.done_context(done)
    sent: list[bytes] = []

    async def requests() -> Any:
        sent.append(b"a")  # (read only by a call that goes out)
        yield b"a"

    with wires.unreached_port() as port:
        async with new_aio_channel(f"127.0.0.1:{port}", how) as ch:
            with pytest.raises(expected), anyio.fail_after(NEVER):
                with gocontext.use(ctx):
                    if form.startswith("stream-out"):
                        call = ch.unary_stream(own("Stream"))(b"")
                    elif form == "stream-in":
                        call = ch.stream_unary(own("In"))(requests())
                    elif form == "both":
                        call = ch.stream_stream(own("Both"))(requests())
                    elif form == "stream-in-write":
                        call = ch.stream_unary(own("In"))()
                    else:
                        call = ch.stream_stream(own("Both"))()
                if form.endswith("-write"):
                    # (grpc.aio's own word for a call that is over: the call says why)
                    with contextlib.suppress(asyncio.InvalidStateError):
                        await call.write(b"a")
                if form in ("stream-out", "both", "both-write"):
                    [r async for r in call]
                elif form == "stream-out-read":
                    await call.read()
                else:
                    await call
    assert sent == []
    assert _context.watcher_count(ctx) == 0


# ==========================================================================================
# 5. a handler that raises a BaseException: its context ends with it, none is left behind
# ==========================================================================================


class Bail(BaseException):
    """Not an Exception: gRPC answers no status for it (the RPC hangs until the client ends
    it), but the handler's context must end at once all the same."""


KEPT: dict[str, tuple[gocontext.Context, Any]] = {}
BAILED: dict[str, threading.Event] = {}


def _keep_and_bail(servicer_context: Any) -> None:
    name = str(gocontext.current().value(wires.RID))
    KEPT[name] = (gocontext.current(), servicer_context)
    BAILED[name].set()
    raise Bail


def sync_bail(request: bytes, servicer_context: Any) -> bytes:
    _keep_and_bail(servicer_context)
    return b""


def sync_bail_stream(request: bytes, servicer_context: Any) -> Iterator[bytes]:
    _keep_and_bail(servicer_context)
    yield b""


@pytest.mark.parametrize("shape", ["unary", "stream"])
def test_a_handler_raising_a_base_exception_ends_its_context(shape: str) -> None:
    """On the sync server. (A grpc.aio server prints such an error's traceback from its own
    thread, at a moment no test can wait for: not tried here.)"""
    table = grpc.method_handlers_generic_handler(
        OWN,
        {
            "Bail": grpc.unary_unary_rpc_method_handler(sync_bail),
            "BailStream": grpc.unary_stream_rpc_method_handler(sync_bail_stream),
        },
    )
    name = rid(f"review-bail-{shape}")
    pool = futures.ThreadPoolExecutor(4)
    server = grpc.server(pool, interceptors=[gocontext.grpc.server_interceptor()])
    server.add_generic_rpc_handlers((table,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    bailed = BAILED[name] = threading.Event()
    ctx, cancel = gocontext.with_cancel(with_rid(name))
    try:
        with sync_channel(f"127.0.0.1:{port}", "channel") as ch:
            with gocontext.use(ctx):
                if shape == "unary":
                    call = ch.unary_unary(own("Bail")).future(b"")
                else:
                    call = ch.unary_stream(own("BailStream"))(b"")
            assert bailed.wait(NEVER), "the handler never ran"
            handlers_ctx, servicer_context = KEPT.pop(name)
            ended = threading.Event()
            handlers_ctx.done().add_callback(ended.set)
            assert ended.wait(NEVER), "the handler's context never ended"
            assert isinstance(handlers_ctx.err(), gocontext.Canceled)
            assert not isinstance(handlers_ctx.err(), gocontext.DeadlineExceeded)
            assert not isinstance(gocontext.cause(handlers_ctx), gocontext.http.ClientDisconnected)
            with pytest.raises(LookupError):
                gocontext.grpc.context_of(servicer_context)
            cancel()  # (gRPC answers nothing for the RPC: the caller ends it)
            with pytest.raises(gocontext.Canceled):
                call.result(NEVER) if shape == "unary" else list(call)
    finally:
        cancel()
        BAILED.pop(name, None)
        server.stop(None).wait(NEVER)
        pool.shutdown()
