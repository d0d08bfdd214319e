"""Load on the gRPC wire (see ``_wires``), against the sync and the grpc.aio server, from a
grpc.aio client and from a sync one in threads, each taking its context either way (interceptors
or a channel wrapper): afterwards no handler is left running, no server context is left
registered, the channel still serves. (grpc.aio runs on asyncio only.)"""

from __future__ import annotations

import time

import anyio
import pytest

import gocontext
import gocontext.grpc
from gocontext.grpc import _server

from ..conftest import NEVER
from ..wires.grpc_app import (
    HOW,
    GrpcServer,
    method,
    new_aio_channel,
    run_and_keep_the_loop,
    sync_channel,
)
from ._wires import Load


def assert_no_server_context_left() -> None:
    # A handler unregisters its context just after it returns: give it that moment.
    end = time.monotonic() + NEVER
    while _server._contexts and time.monotonic() < end:
        time.sleep(0.01)
    assert not _server._contexts, "a server context is still registered"


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_many_calls_half_cancelled_leave_no_handler_or_context_behind(kind: str, how: str) -> None:
    load = Load(f"stress-g-{kind}-{how}-")

    async def main(server: GrpcServer) -> None:
        async with new_aio_channel(server.target, how) as ch:
            wait = ch.unary_unary(method("Wait"))
            ok = ch.unary_unary(method("Ok"))

            async def send(ctx: gocontext.Context, cancelled: bool) -> object:
                with gocontext.use(ctx):
                    return await (wait(b"", timeout=NEVER) if cancelled else ok(b""))  # (a bound)

            await load.run_in_tasks(send)
            with anyio.fail_after(NEVER):
                assert await ok(b"") == b"ok"

    with GrpcServer(kind) as server:
        run_and_keep_the_loop(main(server))
        load.check()
        assert_no_server_context_left()


@pytest.mark.parametrize("how", HOW)
def test_many_blocking_calls_from_threads_half_cancelled_leave_nothing_behind(how: str) -> None:
    load = Load(f"stress-gs-{how}-")
    with GrpcServer("sync") as server, sync_channel(server.target, how) as ch:
        wait = ch.unary_unary(method("Wait"))
        ok = ch.unary_unary(method("Ok"))

        def send(ctx: gocontext.Context, cancelled: bool) -> object:
            with gocontext.use(ctx):
                return wait(b"", timeout=NEVER) if cancelled else ok(b"")  # (a bound)

        load.run_in_threads(send)
        load.check()
        assert ok(b"", timeout=NEVER) == b"ok"
        assert_no_server_context_left()
