"""ContextMiddleware on real servers: deadlines in, 400s and 504s, disconnects, chains, load."""

from __future__ import annotations

import random
import threading
import uuid

import anyio
import httpx
import pytest

import gocontext
import gocontext.http

from ..conftest import NEVER
from .conftest import BOARD, RID, Server


def test_handlers_see_the_callers_deadline_and_values_on_starlette_and_fastapi(
    server: Server, fastapi_server: Server
) -> None:
    for url in (
        f"{server.url}/info",
        f"{fastapi_server.url}/info",
        f"{fastapi_server.url}/sync-info",
    ):
        r = httpx.get(url, headers={"grpc-timeout": "3S", "baggage": "test-rid=abc,unknown=x"})
        assert r.status_code == 200, r.text
        assert r.json()["rid"] == "abc"
        assert 2.5 < r.json()["remaining"] <= 3.0


def test_no_deadline_header_means_no_deadline_unless_capped(
    server: Server, capped_server: Server
) -> None:
    assert httpx.get(f"{server.url}/info").json()["remaining"] is None
    assert 4.5 < httpx.get(f"{capped_server.url}/info").json()["remaining"] <= 5.0
    r = httpx.get(f"{capped_server.url}/info", headers={"connect-timeout-ms": "3600000"})
    assert r.json()["remaining"] <= 5.0  # no header extends a deadline past max_timeout


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("grpc-timeout", "soon"),
        ("grpc-timeout", "-1S"),
        ("grpc-timeout", "123456789H"),
        ("connect-timeout-ms", "1e9"),
        ("x-envoy-expected-rq-timeout-ms", "99999999999999999999999"),
        ("x-envoy-expected-rq-timeout-ms", "-5"),
    ],
)
def test_a_malformed_deadline_header_gets_a_400_and_the_server_keeps_serving(
    server: Server, name: str, value: str
) -> None:
    r = httpx.get(f"{server.url}/info", headers={name: value})
    assert r.status_code == 400
    assert "bad deadline header" in r.text
    assert value.strip() in r.text
    assert httpx.get(f"{server.url}/info").status_code == 200


def test_a_handler_that_ignores_its_context_gets_a_504_at_the_deadline(server: Server) -> None:
    r = httpx.get(f"{server.url}/ignore", headers={"grpc-timeout": "100m"}, timeout=NEVER)
    assert r.status_code == 504


def test_a_client_disconnect_cancels_the_handlers_context(server: Server) -> None:
    rid = uuid.uuid4().hex
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    # Open the request, wait until the handler runs, then drop the connection.
    with httpx.Client(transport=gocontext.http.Transport(), timeout=NEVER) as c:
        sent = gocontext.with_value(ctx, RID, rid)
        t = threading.Thread(
            target=lambda: BOARD.event(BOARD.entered, rid).wait(NEVER) and cancel()
        )
        t.start()
        with pytest.raises(gocontext.Canceled):
            c.get(f"{server.url}/wait", extensions={"gocontext": sent})
        t.join(NEVER)
    assert BOARD.event(BOARD.ended, rid).wait(NEVER)
    assert isinstance(BOARD.causes[rid], gocontext.http.ClientDisconnected)


async def test_a_chain_carries_one_deadline_and_one_cancel(
    server: Server, second_server: Server
) -> None:
    ctx, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), RID, "chain"), 4
    )
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        r = await client.get(
            f"{server.url}/call",
            params={"to": f"{second_server.url}/info"},
            extensions={"gocontext": ctx},
        )
    body = r.json()
    assert body["here"]["rid"] == body["next"]["rid"] == "chain"
    assert body["next"]["remaining"] <= body["here"]["remaining"] <= 4.0

    # The client's cancel reaches the second hop's handler.
    rid = uuid.uuid4().hex
    parent, cancel2 = gocontext.with_cancel(gocontext.background())
    sent = gocontext.with_value(parent, RID, rid)
    t = threading.Thread(target=lambda: BOARD.event(BOARD.entered, rid).wait(NEVER) and cancel2())
    t.start()
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport()) as client:
        with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
            await client.get(
                f"{server.url}/call",
                params={"to": f"{second_server.url}/wait"},
                extensions={"gocontext": sent},
            )
    t.join(NEVER)
    assert BOARD.event(BOARD.ended, rid).wait(NEVER)
    assert isinstance(BOARD.causes[rid], gocontext.http.ClientDisconnected)
    cancel()


def test_max_timeout_must_be_positive() -> None:
    for bad in (0, -1, float("nan"), "5"):
        with pytest.raises(ValueError, match="max_timeout"):
            gocontext.http.ContextMiddleware(lambda s, r, se: None, max_timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_load_500_requests_half_cancelled_at_random(server: Server) -> None:
    """Every request ends as success, Canceled or DeadlineExceeded; every aborted request's
    server-side context ends; the client's pool still works."""
    n = 500
    rng = random.Random(11)
    outcomes: dict[str, int] = {"ok": 0, "canceled": 0, "deadline": 0}
    aborted: list[str] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=100)
    inner = httpx.AsyncHTTPTransport(limits=limits)
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(inner)) as client:

        async def one(i: int) -> None:
            rid = f"load-{i}-{uuid.uuid4().hex}"
            ctx, cancel = gocontext.with_timeout(
                gocontext.with_value(gocontext.background(), RID, rid), 5
            )
            path = "/wait" if i % 2 else "/info"
            if i % 2:
                delay = rng.random() * 0.5
                threading.Timer(delay, cancel).start()
            try:
                r = await client.get(f"{server.url}{path}", extensions={"gocontext": ctx})
                assert r.status_code == 200
                outcomes["ok"] += 1
            except gocontext.Canceled as e:
                outcomes["canceled"] += 1
                aborted.append(rid)
                if not i % 2:
                    failures.append(repr(e.__cause__ or e.__context__))
            except gocontext.DeadlineExceeded as e:
                outcomes["deadline"] += 1
                aborted.append(rid)
                if not i % 2:
                    failures.append(repr(e.__cause__ or e.__context__))
            finally:
                cancel()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        assert sum(outcomes.values()) == n
        # Uncancelled requests mostly succeed; a few may wait in httpcore's pool queue past
        # their deadline while it reshuffles after cancellations: those end as
        # DeadlineExceeded, which is an allowed end.
        assert outcomes["ok"] >= n // 3, failures[:5]
        assert outcomes["canceled"] > 0
        for rid in aborted:  # requests that reached the handler saw their context end
            if BOARD.event(BOARD.entered, rid).is_set():
                assert BOARD.event(BOARD.ended, rid).wait(NEVER)
        assert (await client.get(f"{server.url}/info")).status_code == 200
        pool = inner._pool  # nothing left behind: no queued request, no busy connection
        assert not pool._requests
        assert all(c.is_idle() or c.is_closed() for c in pool.connections)
