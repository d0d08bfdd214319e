"""Outgoing baggage: bounded as W3C Baggage says (180 members, a member that does not fit whole
is dropped, never cut) and within 8,190 bytes (W3C's 8,192, less the 2 that aiohttp's server
refuses by default), and a value that cannot be encoded is dropped, never an error at send
time."""

from __future__ import annotations

import uuid

import httpx
import pytest

import gocontext
import gocontext.http
from gocontext._done import CallbackHandle
from gocontext.http._headers import (
    MAX_BAGGAGE_ENTRIES,
    MAX_SENT_BAGGAGE_BYTES,
    format_baggage,
    parse_baggage,
)

from ..conftest import OtherContext


class _Spy(httpx.BaseTransport):
    """Answers 200 at once and keeps every request it was handed, as it was sent (the
    transport puts the caller's own headers back on the request once it is sent)."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(httpx.Request(request.method, request.url, headers=request.headers.copy()))
        return httpx.Response(200)


def size(header: str) -> int:
    return len(header.encode("utf-8"))


def test_a_huge_value_is_dropped_whole_and_the_rest_goes_out() -> None:
    out = format_baggage({"small": "s", "huge": "x" * 100_000, "tail": "t"})
    assert size(out) <= MAX_SENT_BAGGAGE_BYTES
    assert parse_baggage(out) == {"small": "s", "tail": "t"}


def test_members_that_no_longer_fit_are_dropped_whole() -> None:
    values = {f"k{i}": "v" * 1000 for i in range(20)}  # about 20 KB
    out = format_baggage(values)
    assert size(out) <= MAX_SENT_BAGGAGE_BYTES
    got = parse_baggage(out)
    assert 0 < len(got) < 20
    assert all(v == "v" * 1000 for v in got.values())  # none cut


def test_no_more_than_the_member_limit_goes_out() -> None:
    values = {f"k{i}": "v" for i in range(MAX_BAGGAGE_ENTRIES + 50)}
    out = format_baggage(values, "theirs=1")
    assert len(out.split(",")) == MAX_BAGGAGE_ENTRIES
    assert size(out) <= MAX_SENT_BAGGAGE_BYTES


def test_our_values_win_the_space_over_existing_members() -> None:
    existing = ",".join(f"e{i}={'y' * 100}" for i in range(100))  # about 10 KB already there
    out = format_baggage({"request-id": "r-17"}, existing)
    assert size(out) <= MAX_SENT_BAGGAGE_BYTES
    got = parse_baggage(out)
    assert got["request-id"] == "r-17"
    assert all(v == "y" * 100 for k, v in got.items() if k != "request-id")


def test_a_value_that_cannot_be_encoded_is_dropped() -> None:
    out = format_baggage({"bad": "a\ud800b", "good": "été"})
    assert parse_baggage(out) == {"good": "été"}
    assert out.isascii()


def test_the_exact_bound_is_allowed() -> None:
    value = "x" * (MAX_SENT_BAGGAGE_BYTES - len("k="))
    assert parse_baggage(format_baggage({"k": value})) == {"k": value}
    assert format_baggage({"k": value + "x"}) == ""


def test_a_request_with_a_lone_surrogate_value_is_sent_without_it() -> None:
    spy = _Spy()

    bad = gocontext.PropagatedKey(f"bad-{uuid.uuid4().hex}")
    good = gocontext.PropagatedKey(f"good-{uuid.uuid4().hex}")
    ctx = gocontext.with_value(gocontext.background(), bad, "a\udc80b")
    ctx = gocontext.with_value(ctx, good, "fine")
    huge = gocontext.PropagatedKey(f"huge-{uuid.uuid4().hex}")
    ctx = gocontext.with_value(ctx, huge, "h" * 100_000)
    with httpx.Client(transport=gocontext.http.Transport(spy)) as client:
        assert client.get("http://127.0.0.1:9/", extensions={"gocontext": ctx}).status_code == 200
    header = spy.seen[0].headers["baggage"]
    assert size(header) <= MAX_SENT_BAGGAGE_BYTES
    got = parse_baggage(header)
    assert got[good.name] == "fine"
    assert bad.name not in got
    assert huge.name not in got


def test_baggage_and_grpc_timeout_already_on_the_request_are_merged_and_replaced() -> None:
    spy = _Spy()

    key = gocontext.PropagatedKey(f"rid-{uuid.uuid4().hex}")
    ctx = gocontext.with_value(gocontext.background(), key, "ours")
    ctx, cancel = gocontext.with_timeout(ctx, 30)
    headers = [
        ("baggage", f"user=ada,{key.name}=theirs"),
        ("Baggage", "tenant=t%C3%A9"),
        ("Grpc-Timeout", "99999999H"),
        ("x-other", "kept"),
    ]
    with httpx.Client(transport=gocontext.http.Transport(spy)) as client:
        client.get("http://127.0.0.1:9/", headers=headers, extensions={"gocontext": ctx})
    cancel()
    sent = spy.seen[0].headers
    assert sent.get_list("baggage") == [sent["baggage"]]  # one header, merged
    assert parse_baggage(sent["baggage"]) == {"user": "ada", "tenant": "té", key.name: "ours"}
    assert len(sent.get_list("grpc-timeout")) == 1
    assert sent["grpc-timeout"] != "99999999H"
    assert sent["x-other"] == "kept"


@pytest.mark.parametrize("carries", ["deadline", "values"])
def test_a_header_the_context_has_nothing_for_is_left_as_the_caller_set_it(carries: str) -> None:
    spy = _Spy()

    key = gocontext.PropagatedKey(f"rid-{uuid.uuid4().hex}")
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    if carries == "deadline":
        ctx, _ = gocontext.with_timeout(ctx, 30)
    else:
        ctx = gocontext.with_value(ctx, key, "ours")
    headers = [("Baggage", "user=ada"), ("Grpc-Timeout", "5S"), ("x-other", "kept")]
    with httpx.Client(transport=gocontext.http.Transport(spy)) as client:
        client.get("http://127.0.0.1:9/", headers=headers, extensions={"gocontext": ctx})
    cancel()
    sent = spy.seen[0].headers
    if carries == "deadline":
        assert sent.get_list("baggage") == ["user=ada"]
        assert len(sent.get_list("grpc-timeout")) == 1 and sent["grpc-timeout"] != "5S"
    else:
        assert parse_baggage(sent["baggage"]) == {"user": "ada", key.name: "ours"}
        assert sent.get_list("grpc-timeout") == ["5S"]
    assert sent["x-other"] == "kept"


class _AsyncSpy(httpx.AsyncBaseTransport):
    """``_Spy``, for ``AsyncTransport``."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(httpx.Request(request.method, request.url, headers=request.headers.copy()))
        return httpx.Response(200)


_CALLERS = [("baggage", "user=ada"), ("Grpc-Timeout", "99999999H"), ("x-other", "kept")]


def _check_sent_and_kept(sent: httpx.Headers, request: httpx.Request, key_name: str) -> None:
    """What went out has our headers; the caller's request has its own, as it set them."""
    assert parse_baggage(sent["baggage"]) == {"user": "ada", key_name: "ours"}
    assert sent["grpc-timeout"] != "99999999H"
    _check_kept(request)


def _check_kept(request: httpx.Request) -> None:
    headers = request.headers
    assert headers.get_list("baggage") == ["user=ada"]
    assert headers.get_list("grpc-timeout") == ["99999999H"]
    assert headers["x-other"] == "kept"


def _full_context() -> tuple[gocontext.Context, gocontext.CancelFunc, str]:
    key = gocontext.PropagatedKey(f"rid-{uuid.uuid4().hex}")
    ctx, cancel = gocontext.with_timeout(
        gocontext.with_value(gocontext.background(), key, "ours"), 30
    )
    return ctx, cancel, key.name


@pytest.mark.parametrize("carries", ["deadline and values", "values only"])
def test_the_callers_request_keeps_its_own_headers_once_sent(carries: str) -> None:
    # Grpc-Timeout and baggage are the wire's, made for each hop: httpx reads every header of
    # the request again after its response (cookies, a redirect), so they go on what is sent.
    spy = _Spy()
    ctx, cancel, name = _full_context()
    if carries == "values only":
        ctx = gocontext.with_value(gocontext.background(), gocontext.PropagatedKey(name), "ours")
    with httpx.Client(transport=gocontext.http.Transport(spy)) as client:
        response = client.get(
            "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": ctx}
        )
    cancel()
    sent = spy.seen[0].headers
    assert parse_baggage(sent["baggage"]) == {"user": "ada", name: "ours"}
    assert (sent["grpc-timeout"] != "99999999H") is (carries == "deadline and values")
    _check_kept(response.request)


def test_a_failed_request_keeps_its_own_headers_too() -> None:
    class Failing(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            assert "ours" in request.headers["baggage"]
            raise httpx.ConnectError("refused", request=request)

    ctx, cancel, _ = _full_context()
    request = httpx.Request(
        "GET", "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": ctx}
    )
    with httpx.Client(transport=gocontext.http.Transport(Failing())) as client:
        with pytest.raises(httpx.ConnectError):
            client.send(request)
    cancel()
    _check_kept(request)


@pytest.mark.anyio
async def test_the_callers_request_keeps_its_own_headers_once_sent_async() -> None:
    spy = _AsyncSpy()
    ctx, cancel, name = _full_context()
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(spy)) as client:
        response = await client.get(
            "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": ctx}
        )
    cancel()
    _check_sent_and_kept(spy.seen[0].headers, response.request, name)


@pytest.mark.anyio
async def test_a_failed_async_request_keeps_its_own_headers_too() -> None:
    class Failing(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            assert "ours" in request.headers["baggage"]
            raise httpx.ConnectError("refused", request=request)

    ctx, cancel, _ = _full_context()
    request = httpx.Request(
        "GET", "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": ctx}
    )
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(Failing())) as client:
        with pytest.raises(httpx.ConnectError):
            await client.send(request)
    cancel()
    _check_kept(request)


def _unsendable() -> gocontext.Context:
    """A context whose only propagated value cannot be sent (a lone surrogate)."""
    key = gocontext.PropagatedKey(f"bad-{uuid.uuid4().hex}")
    return gocontext.with_value(gocontext.background(), key, "a\udc80b")


@pytest.mark.parametrize("callers", [[], [("baggage", "user=ada")]])
def test_values_that_all_drop_out_send_no_baggage_header_of_ours(
    callers: list[tuple[str, str]],
) -> None:
    spy = _Spy()
    with httpx.Client(transport=gocontext.http.Transport(spy)) as client:
        client.get("http://127.0.0.1:9/", headers=callers, extensions={"gocontext": _unsendable()})
    assert spy.seen[0].headers.get_list("baggage") == [v for _, v in callers]


@pytest.mark.anyio
async def test_values_that_all_drop_out_send_no_baggage_header_of_ours_async() -> None:
    spy = _AsyncSpy()
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(spy)) as client:
        await client.get("http://127.0.0.1:9/", extensions={"gocontext": _unsendable()})
    assert spy.seen[0].headers.get_list("baggage") == []


class _RefusingDone(gocontext.Done):
    """A user-written Done whose add_callback fails."""

    def is_set(self) -> bool:
        return False

    def add_callback(self, fn: object, /) -> CallbackHandle:
        raise RuntimeError("no callbacks here")


class _Refusing(OtherContext):
    def done(self) -> gocontext.Done:
        return _RefusingDone()


def test_a_request_that_fails_before_it_is_sent_keeps_its_own_headers_too() -> None:
    ctx, cancel, _ = _full_context()
    request = httpx.Request(
        "GET", "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": _Refusing(ctx)}
    )
    with httpx.Client(transport=gocontext.http.Transport(_Spy())) as client:
        with pytest.raises(RuntimeError, match="no callbacks here"):
            client.send(request)
    cancel()
    _check_kept(request)


@pytest.mark.anyio
async def test_an_async_request_that_fails_before_it_is_sent_keeps_its_own_headers_too() -> None:
    ctx, cancel, _ = _full_context()
    request = httpx.Request(
        "GET", "http://127.0.0.1:9/", headers=_CALLERS, extensions={"gocontext": _Refusing(ctx)}
    )
    async with httpx.AsyncClient(transport=gocontext.http.AsyncTransport(_AsyncSpy())) as client:
        with pytest.raises(RuntimeError, match="no callbacks here"):
            await client.send(request)
    cancel()
    _check_kept(request)
