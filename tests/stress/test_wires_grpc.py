"""Load on the gRPC wire (see ``_wires``), against the sync and the grpc.aio server: afterwards
no handler is left running, no server context is left registered, the channel still serves.
(grpc.aio runs on asyncio only.)"""

from __future__ import annotations

import time

import anyio
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
from gocontext.grpc import _server

from ..conftest import NEVER
from ..wires.grpc_app import GrpcServer, method, run_and_keep_the_loop
from ._wires import Load


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_many_calls_half_cancelled_leave_no_handler_or_context_behind(kind: str) -> None:
    load = Load(f"stress-g-{kind}-")

    async def main(server: GrpcServer) -> None:
        async with grpc.aio.insecure_channel(
            server.target, interceptors=gocontext.grpc.aio_client_interceptors()
        ) as ch:
            wait = ch.unary_unary(method("Wait"))
            ok = ch.unary_unary(method("Ok"))

            async def send(ctx: gocontext.Context, cancelled: bool) -> object:
                with gocontext.use(ctx):
                    return await (wait(b"") if cancelled else ok(b""))

            await load.run_in_tasks(send)
            with anyio.fail_after(NEVER):
                assert await ok(b"") == b"ok"

    with GrpcServer(kind) as server:
        run_and_keep_the_loop(main(server))
        load.check()
        # A handler unregisters its context just after it returns: give it that moment.
        end = time.monotonic() + NEVER
        while _server._contexts and time.monotonic() < end:
            time.sleep(0.01)
        assert not _server._contexts, "a server context is still registered"
