"""Many requests at once against one ContextMiddleware server, half of them cancelled from
other threads at random moments: every request ends as it must, and nothing is left behind.

Outcomes and cleanup are asserted, never how many requests finish within some time: no request
here has a deadline a slow machine could reach. ``GOCONTEXT_STRESS=1`` runs more of them.
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from ..http.conftest import BOARD, RID, Server, starlette_app, wait_until

pytestmark = pytest.mark.slow

STRESS = os.environ.get("GOCONTEXT_STRESS") == "1"
N = 1000 if STRESS else 200
HANG = 900 if STRESS else 12 * NEVER  # seconds after which the run counts as hung


@pytest.fixture
def own_server() -> Iterator[Server]:
    with Server(starlette_app(max_timeout=None)) as s:
        yield s


@pytest.mark.timeout(HANG + 60)
async def test_requests_half_cancelled_at_random_all_end_and_leave_nothing_behind(
    own_server: Server,
) -> None:
    rng = random.Random(11)
    outcomes: dict[str, list[str]] = {"ok": [], "canceled": [], "other": []}
    cancelled_rids: list[str] = []
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=50))
    transport = gocontext.http.AsyncTransport(inner)
    async with httpx.AsyncClient(transport=transport, timeout=None) as client:

        async def one(i: int) -> None:
            rid = f"load-{i}-{uuid.uuid4().hex}"
            # No deadline: the even requests must succeed however slow the machine is.
            ctx, cancel = gocontext.with_cancel(
                gocontext.with_value(gocontext.background(), RID, rid)
            )
            if i % 2:
                cancelled_rids.append(rid)
                threading.Timer(rng.random() * 0.05, cancel).start()
            try:
                r = await client.get(
                    f"{own_server.url}{'/wait' if i % 2 else '/info'}",
                    extensions={"gocontext": ctx},
                )
                outcomes["ok" if r.status_code == 200 else "other"].append(f"{i}: {r}")
            except gocontext.Canceled:
                outcomes["canceled"].append(str(i))
            except Exception as e:
                outcomes["other"].append(f"{i}: {e!r}")
            finally:
                cancel()

        with anyio.fail_after(HANG):  # only turns a hang into a failure
            async with anyio.create_task_group() as tg:
                for i in range(N):
                    tg.start_soon(one, i)

        assert outcomes["other"] == []
        assert len(outcomes["ok"]) == N // 2  # every request nobody cancelled succeeded
        assert len(outcomes["canceled"]) == N // 2  # /wait ends only with its context
        # No hung handler: every cancelled request that reached its handler saw its context
        # end because the client left, and the server has no request left running.
        for rid in cancelled_rids:
            if BOARD.event(BOARD.entered, rid).is_set():
                assert BOARD.event(BOARD.ended, rid).wait(NEVER), rid
                assert isinstance(BOARD.causes[rid], gocontext.http.ClientDisconnected)
        wait_until(lambda: not own_server.server.server_state.tasks, "the server is idle")
        # The pool is idle and works: no queued request, no busy connection.
        pool = inner._pool
        assert not pool._requests
        assert all(c.is_idle() or c.is_closed() for c in pool.connections)
        assert (await client.get(f"{own_server.url}/info")).status_code == 200
