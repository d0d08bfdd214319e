"""ContextMiddleware on real servers: deadlines in, 400s and 504s, disconnects, chains, load."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest

import gocontext
import gocontext.http
from gocontext.http import _middleware

from ..conftest import NEVER
from .conftest import BOARD, RID, ROUNDING, Server


def test_handlers_see_the_callers_deadline_and_values_on_starlette_and_fastapi(
    server: Server, fastapi_server: Server
) -> None:
    for url in (
        f"{server.url}/info",
        f"{fastapi_server.url}/info",
        f"{fastapi_server.url}/sync-info",
    ):
        start = time.monotonic()
        r = httpx.get(url, headers={"grpc-timeout": "3S", "baggage": "test-rid=abc,unknown=x"})
        assert r.status_code == 200, r.text
        assert r.json()["rid"] == "abc"
        assert 3.0 - (time.monotonic() - start) - ROUNDING <= r.json()["remaining"] <= 3.0


def test_no_deadline_header_means_no_deadline_unless_capped(
    server: Server, capped_server: Server
) -> None:
    assert httpx.get(f"{server.url}/info").json()["remaining"] is None
    start = time.monotonic()
    remaining = httpx.get(f"{capped_server.url}/info").json()["remaining"]
    assert 5.0 - (time.monotonic() - start) - ROUNDING <= remaining <= 5.0
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


def test_max_timeout_must_be_positive_seconds_none_or_a_function() -> None:
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match=r"ContextMiddleware\(\).*max_timeout.*got"):
            gocontext.http.ContextMiddleware(lambda s, r, se: None, max_timeout=bad)  # type: ignore[arg-type, return-value]
    for wrong in ("5", True, b"5"):
        with pytest.raises(TypeError, match=r"ContextMiddleware\(\).*max_timeout.*got"):
            gocontext.http.ContextMiddleware(lambda s, r, se: None, max_timeout=wrong)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="ASGI app"):
        gocontext.http.ContextMiddleware(None, max_timeout=None)  # type: ignore[arg-type]


async def test_back_to_back_short_requests_share_one_ticker(
    monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str
) -> None:
    """The ticker that starts disconnect watchers (a timer callback on asyncio, a task under
    trio) outlives a request that ends before the loop runs it, so requests one after another
    do not start one each, and spawn no task at all."""
    monkeypatch.setattr(_middleware, "_WATCH_AFTER", NEVER)  # it sleeps through the test
    started: list[object] = []
    spawned: list[object] = []
    start_ticking = _middleware._Watchers.start_ticking
    spawn = _middleware._Watchers.spawn

    def counting_starts(self: Any) -> None:
        started.append(self)
        start_ticking(self)

    def counting_spawns(self: Any, fn: Any, context: Any) -> object:
        spawned.append(fn)
        return spawn(self, fn, context)

    monkeypatch.setattr(_middleware._Watchers, "start_ticking", counting_starts)
    monkeypatch.setattr(_middleware._Watchers, "spawn", counting_spawns)

    async def app(scope: Any, receive: Any, send: Any) -> None:  # done without yielding
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = gocontext.http.ContextMiddleware(app)
    for _ in range(5):
        await middleware(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send
        )
        for _ in range(3):  # the loop runs the ticking task between two requests
            await anyio.sleep(0)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200] * 5
    assert len(started) == 1
    # (a task under trio, none on asyncio: a tick there is a timer callback)
    assert len(spawned) == (1 if anyio_backend_name == "trio" else 0)
