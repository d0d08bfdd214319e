"""Load on the requests wire (see ``_wires``): calls from a pool of threads; afterwards no
server handler is left running and the connection pool is whole."""

from __future__ import annotations

import requests

import gocontext
import gocontext.http

from ..wires.conftest import Uvicorn, starlette_app
from ._wires import CONCURRENCY, Load


def test_many_requests_half_cancelled_leave_no_handler_running_and_the_pool_whole() -> None:
    load = Load("stress-rq-")
    session = requests.Session()
    adapter = gocontext.http.RequestsAdapter(pool_maxsize=CONCURRENCY)
    session.mount("http://", adapter)

    with Uvicorn(starlette_app()) as server:

        def send(ctx: gocontext.Context, cancelled: bool) -> str:
            path = "/wait" if cancelled else "/ok"
            return gocontext.http.request(ctx, session, "GET", server.url + path).text

        load.run_in_threads(send)
        load.check()
        r = gocontext.http.request(gocontext.background(), session, "GET", server.url + "/ok")
        assert r.text == "ok"
        cpool = adapter.poolmanager.connection_from_url(server.url)
        assert cpool.pool is not None
        assert cpool.pool.qsize() == cpool.pool.maxsize, "a connection is still checked out"
    session.close()
