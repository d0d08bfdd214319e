"""Load on the requests wire: many calls, half cancelled at a random moment from another
thread. Every call ends as it should, no server handler is left running, the pool is whole.
``GOCONTEXT_STRESS=1`` runs ten times as many."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

import gocontext
import gocontext.http
from gocontext import _context

from ..conftest import NEVER
from ..wires.conftest import BOARD, RID, Uvicorn, starlette_app

CALLS = 5000 if os.environ.get("GOCONTEXT_STRESS") else 500
WORKERS = 8


def test_many_requests_half_cancelled_leave_no_handler_running_and_the_pool_whole() -> None:
    rng = random.Random(14)
    plan = [rng.random() < 0.5 for _ in range(CALLS)]
    delays = [rng.choice([0.0, 0.0005, 0.002]) for _ in range(CALLS)]
    session = requests.Session()
    adapter = gocontext.http.RequestsAdapter(pool_maxsize=WORKERS)
    session.mount("http://", adapter)
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    with Uvicorn(starlette_app()) as server:

        def call(i: int) -> None:
            name = f"stress-rq-{i}"
            ctx, cancel = gocontext.with_cancel(
                gocontext.with_value(gocontext.background(), RID, name)
            )
            if plan[i]:
                # Cancelled at a random moment: before sending, while connecting or waiting.
                timer = threading.Timer(delays[i], cancel)
                timer.start()
                path = "/wait"
            else:
                timer = None
                path = "/ok"
            try:
                r = gocontext.http.request(ctx, session, "GET", server.url + path)
                outcome = "ok" if r.text == "ok" else f"unexpected body {r.text!r}"
            except gocontext.Canceled:
                outcome = "canceled"
            except Exception as e:
                outcome = f"{type(e).__name__}: {e}"
            finally:
                if timer is not None:
                    timer.join(NEVER)
                cancel()
            if plan[i] != (outcome == "canceled"):
                outcome = f"wrong: {outcome} (cancelled={plan[i]})"
            assert _context.watcher_count(ctx) == 0
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(call, range(CALLS)))

        assert outcomes == {"ok": plan.count(False), "canceled": plan.count(True)}
        for name in list(BOARD.entered):
            if name.startswith("stress-rq-"):
                BOARD.wait_ended(name)
        r = gocontext.http.request(gocontext.background(), session, "GET", server.url + "/ok")
        assert r.text == "ok"
        cpool = adapter.poolmanager.connection_from_url(server.url)
        assert cpool.pool is not None
        assert cpool.pool.qsize() == cpool.pool.maxsize, "a connection is still checked out"
    session.close()
