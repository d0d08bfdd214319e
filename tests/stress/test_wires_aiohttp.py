"""Load on the aiohttp wire (see ``_wires``): calls from asyncio tasks; afterwards no handler is
left running and the pool is whole. (aiohttp runs on asyncio only.)"""

from __future__ import annotations

import asyncio

import aiohttp
import anyio

import gocontext
import gocontext.aiohttp

from ..conftest import NEVER
from ..wires.aiohttp_app import AiohttpServer, make_app
from ._wires import CONCURRENCY, Load


def test_many_calls_half_cancelled_leave_no_handler_running_and_the_pool_whole() -> None:
    load = Load("stress-ah-")

    async def main(server: AiohttpServer) -> None:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with gocontext.aiohttp.client_session(connector=connector) as session:

            async def send(ctx: gocontext.Context, cancelled: bool) -> str:
                path = "/wait" if cancelled else "/ok"
                async with session.get(server.url + path, trace_request_ctx=ctx) as r:
                    return await r.text()

            await load.run_in_tasks(send)
            with anyio.fail_after(NEVER):
                async with session.get(server.url + "/ok") as r:
                    assert await r.text() == "ok"
            # (aiohttp has no public count of connections in use: read the connector's own)
            assert not connector._acquired, "a connection is still checked out"

    with AiohttpServer(make_app()) as server:
        asyncio.run(main(server))
        load.check()
