"""Clients leaving and deadlines passing at random moments, against handlers of every kind
(parked, reading the body, streaming, blocked in a thread), under asyncio and trio: each
request's context ends one way, the one the rule says, and the middleware answers at most once.

The test plays the server (``Peer``), so the middleware runs under both loops. Which end is
right never depends on timing: a client leaving 10 s before the deadline is gone
(``ClientDisconnected``); one leaving within the last 250 ms leaves for the deadline.
``GOCONTEXT_STRESS=1`` runs more rounds.
"""

from __future__ import annotations

import os
import random
import threading

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import gocontext
import gocontext.http

from ..conftest import NEVER
from ..http.conftest import Peer

pytestmark = pytest.mark.slow

ROUNDS = 400 if os.environ.get("GOCONTEXT_STRESS") == "1" else 24


def _app(release: threading.Event) -> Starlette:
    async def parked(request: Request) -> Response:
        await anyio.sleep(NEVER)
        return PlainTextResponse("late")

    async def reads(request: Request) -> Response:
        await request.body()
        await anyio.sleep(NEVER)
        return PlainTextResponse("late")

    async def streams(request: Request) -> Response:
        return StreamingResponse(_Body())

    def blocked(request: Request) -> Response:
        release.wait(NEVER)
        return PlainTextResponse("late")

    return Starlette(
        routes=[
            Route("/parked", parked, methods=["POST"]),
            Route("/reads", reads, methods=["POST"]),
            Route("/streams", streams, methods=["POST"]),
            Route("/blocked", blocked, methods=["POST"]),
        ]
    )


class _Body:
    """One chunk, then a wait for ever: an iterator object, not an async generator, which trio
    would leave to the garbage collector to close once the stream is cut."""

    def __init__(self) -> None:
        self.sent = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if not self.sent:
            self.sent = True
            return b"first\n"
        await anyio.sleep(NEVER)
        raise StopAsyncIteration


@pytest.mark.parametrize("path", ["/parked", "/reads", "/streams", "/blocked"])
async def test_each_request_ends_the_way_the_rule_says_and_is_answered_at_most_once(
    path: str,
) -> None:
    rng = random.Random(path)
    release = threading.Event()
    middleware = gocontext.http.ContextMiddleware(_app(release), max_timeout=None)

    async def serve(peer: Peer) -> None:
        try:
            await middleware(peer.scope, peer.receive, peer.send)
        except ClientDisconnect:
            # Starlette's own word for a body read cut by the client, passed on unchanged;
            # only when the client left in the deadline's last moments is it not cut short
            # by the context first.
            assert path == "/reads"
            assert "gocontext" in peer.scope
            assert not isinstance(
                gocontext.cause(peer.scope["gocontext"]), gocontext.http.ClientDisconnected
            )

    async def release_once_ended(peer: Peer) -> None:
        # A thread cannot be interrupted: let it return once its context has ended.
        await peer.wait_for(lambda: "gocontext" in peer.scope)
        await peer.scope["gocontext"].done()
        release.set()

    try:
        for i in range(ROUNDS):
            far = i % 2 == 0  # leaves 10 s before the deadline, or within its last 250 ms
            peer = Peer([(b"grpc-timeout", b"10S" if far else b"60m")], path=path)
            peer.scope["method"] = "POST"
            peer.push({"type": "http.request", "body": b"x" * 70000, "more_body": True})
            with anyio.fail_after(NEVER):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(serve, peer)
                    if path == "/blocked":
                        tg.start_soon(release_once_ended, peer)
                    await anyio.sleep(rng.random() * 0.08)  # a random moment, not a wait
                    peer.push({"type": "http.disconnect"})
            release.clear()
            ctx: gocontext.Context = peer.scope["gocontext"]
            err = ctx.err()
            if far:
                assert isinstance(err, gocontext.Canceled), (i, err)
                assert isinstance(gocontext.cause(ctx), gocontext.http.ClientDisconnected)
            elif path in ("/parked", "/blocked"):  # they end only with their context
                assert isinstance(err, gocontext.DeadlineExceeded), (i, err)
            else:  # Starlette may end them when it reads the disconnect, before the deadline
                assert not isinstance(gocontext.cause(ctx), gocontext.http.ClientDisconnected)
            starts = [m for m in peer.sent if m["type"] == "http.response.start"]
            assert len(starts) <= 1, peer.sent
            if starts and starts[0]["status"] == 504:
                assert peer.body == b"deadline exceeded"
    finally:
        release.set()
