"""Load on the aiohttp wire: many calls, half cancelled at a random moment from another thread.
Every call ends as it should, no handler is left running, the pool is whole.
``GOCONTEXT_STRESS=1`` runs ten times as many. (aiohttp runs on asyncio only.)"""

from __future__ import annotations

import asyncio
import os
import random
import threading

import aiohttp
import anyio

import gocontext
import gocontext.aiohttp
from gocontext import _context

from ..conftest import NEVER
from ..wires.aiohttp_app import AiohttpServer, make_app
from ..wires.conftest import BOARD, RID

CALLS = 5000 if os.environ.get("GOCONTEXT_STRESS") else 500
CONCURRENCY = 8


def test_many_calls_half_cancelled_leave_no_handler_running_and_the_pool_whole() -> None:
    rng = random.Random(14)
    plan = [rng.random() < 0.5 for _ in range(CALLS)]
    delays = [rng.choice([0.0, 0.0005, 0.002]) for _ in range(CALLS)]
    outcomes: dict[str, int] = {}

    async def main(server: AiohttpServer) -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with gocontext.aiohttp.client_session(connector=connector) as session:

            async def call(i: int) -> None:
                name = f"stress-ah-{i}"
                ctx, cancel = gocontext.with_cancel(
                    gocontext.with_value(gocontext.background(), RID, name)
                )
                timer = threading.Timer(delays[i], cancel) if plan[i] else None
                async with limit:
                    if timer is not None:
                        timer.start()
                    try:
                        path = "/wait" if plan[i] else "/ok"
                        async with session.get(server.url + path, trace_request_ctx=ctx) as r:
                            text = await r.text()
                        outcome = "ok" if text == "ok" else f"unexpected body {text!r}"
                    except gocontext.Canceled:
                        outcome = "canceled"
                    except Exception as e:
                        outcome = f"{type(e).__name__}: {e}"
                    finally:
                        if timer is not None:
                            await asyncio.to_thread(timer.join, NEVER)
                        cancel()
                if plan[i] != (outcome == "canceled"):
                    outcome = f"wrong: {outcome} (cancelled={plan[i]})"
                if _context.watcher_count(ctx) != 0:
                    outcome = "callback left registered"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

            await asyncio.gather(*(call(i) for i in range(CALLS)))
            with anyio.fail_after(NEVER):
                async with session.get(server.url + "/ok") as r:
                    assert await r.text() == "ok"
            # (aiohttp has no public count of connections in use: read the connector's own)
            assert not connector._acquired, "a connection is still checked out"

    with AiohttpServer(make_app()) as server:
        asyncio.run(main(server))
        assert outcomes == {"ok": plan.count(False), "canceled": plan.count(True)}
        for name in list(BOARD.entered):
            if name.startswith("stress-ah-"):
                BOARD.wait_ended(name)
