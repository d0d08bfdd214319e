"""Load on the gRPC wire: many calls, half cancelled at a random moment from another thread,
against the sync and the grpc.aio server. Every call ends as it should, no handler is left
running, no server context is left registered, the channel still serves.
``GOCONTEXT_STRESS=1`` runs ten times as many. (grpc.aio runs on asyncio only.)"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import anyio
import grpc.aio  # type: ignore[import-untyped]
import pytest

import gocontext
import gocontext.grpc
from gocontext import _context
from gocontext.grpc import _server

from ..conftest import NEVER
from ..wires.conftest import BOARD, RID
from ..wires.grpc_app import GrpcServer, method

CALLS = 5000 if os.environ.get("GOCONTEXT_STRESS") else 500
CONCURRENCY = 8


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_many_calls_half_cancelled_leave_no_handler_or_context_behind(kind: str) -> None:
    rng = random.Random(14)
    plan = [rng.random() < 0.5 for _ in range(CALLS)]
    delays = [rng.choice([0.0, 0.0005, 0.002]) for _ in range(CALLS)]
    outcomes: dict[str, int] = {}

    async def main(server: GrpcServer) -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with grpc.aio.insecure_channel(
            server.target, interceptors=gocontext.grpc.aio_client_interceptors()
        ) as ch:
            wait = ch.unary_unary(method("Wait"))
            ok = ch.unary_unary(method("Ok"))

            async def call(i: int) -> None:
                name = f"stress-g-{kind}-{i}"
                ctx, cancel = gocontext.with_cancel(
                    gocontext.with_value(gocontext.background(), RID, name)
                )
                timer = threading.Timer(delays[i], cancel) if plan[i] else None
                async with limit:
                    if timer is not None:
                        timer.start()
                    try:
                        with gocontext.use(ctx):
                            answer = await (wait(b"") if plan[i] else ok(b""))
                        outcome = "ok" if answer == b"ok" else f"unexpected {answer!r}"
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
                assert await ok(b"") == b"ok"

    with GrpcServer(kind) as server:
        asyncio.run(main(server))
        assert outcomes == {"ok": plan.count(False), "canceled": plan.count(True)}
        for name in list(BOARD.entered):
            if name.startswith(f"stress-g-{kind}-"):
                BOARD.wait_ended(name)
        # A handler unregisters its context just after it returns: give it that moment.
        end = time.monotonic() + NEVER
        while _server._contexts and time.monotonic() < end:
            time.sleep(0.01)
        with _server._lock:
            assert not _server._contexts, "a server context is still registered"
