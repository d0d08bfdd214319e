"""How the aiohttp middleware reads a request's deadline and values: by header name from
aiohttp's parsed headers, as ``timeout_and_values`` reads the raw ones. No sockets needed."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

import gocontext
from gocontext import _propagation
from gocontext.aiohttp import _server
from gocontext.http._headers import HeaderError
from gocontext.http._middleware import timeout_and_values

from .._servers import RID


def request(*headers: tuple[str, str]) -> web.Request:
    return make_mocked_request("GET", "/", headers=CIMultiDict(headers))


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("Grpc-Timeout", "250m"),),
        (("grpc-timeout", "100S"), ("Grpc-Timeout", "20S")),
        (("Grpc-Timeout", "100S"), ("Connect-Timeout-Ms", "30000")),
        (("X-Envoy-Expected-Rq-Timeout-Ms", "1500"), ("Grpc-Timeout", "2S")),
        (("Connect-Timeout-Ms", "900"), ("x-envoy-expected-rq-timeout-ms", "800")),
        (("Host", "example"), ("Grpc-Timeout", " 3S\t")),
    ],
)
def test_the_timeout_is_the_smallest_asked_as_the_raw_headers_give_it(
    headers: tuple[tuple[str, str], ...],
) -> None:
    req = request(*headers)
    timeout, _ = _server._timeout_and_baggage(req)
    assert timeout == timeout_and_values(req.raw_headers)[0]


@pytest.mark.parametrize(
    "headers",
    [
        (("Grpc-Timeout", "soon"),),
        (("Grpc-Timeout", "1S"), ("Connect-Timeout-Ms", "-5")),
        (("X-Envoy-Expected-Rq-Timeout-Ms", "12345678901"), ("Grpc-Timeout", "1x")),
    ],
)
def test_a_malformed_deadline_raises_what_the_raw_headers_raise(
    headers: tuple[tuple[str, str], ...],
) -> None:
    req = request(*headers)
    with pytest.raises(HeaderError) as raw:
        timeout_and_values(req.raw_headers)
    with pytest.raises(HeaderError) as ours:
        _server._timeout_and_baggage(req)
    assert str(ours.value) == str(raw.value)


def test_baggage_lines_are_read_together() -> None:
    req = request(("baggage", "other=1"), ("Baggage", f"{RID.name}=r%201"))
    _, baggage = _server._timeout_and_baggage(req)
    ctx = _server._values_context(req, baggage)
    assert ctx.value(RID) == "r 1"
    assert _server._timeout_and_baggage(request()) == (None, "")
    assert _server._values_context(request(), "") is gocontext.background()


def test_a_key_declared_after_its_value_was_first_seen_gets_the_value() -> None:
    name = f"test-late-{uuid.uuid4().hex[:8]}"
    header = f"{name}=v,{RID.name}=r"
    req = request(("baggage", header))
    before = _server._values_context(req, header)
    assert before.value(RID) == "r"
    assert _server._values_context(req, header) is before  # (made once, for every request)
    late = gocontext.PropagatedKey(name)
    after = _server._values_context(req, header)
    assert after.value(late) == "v"
    assert after.value(RID) == "r"


def test_the_values_contexts_kept_are_bounded() -> None:
    for i in range(2 * _propagation.VALUES_CONTEXTS_MAX + 3):
        header = f"{RID.name}=r{i}"
        ctx = _server._values_context(request(("baggage", header)), header)
        assert ctx.value(RID) == f"r{i}"
    assert len(_propagation._values_contexts) <= _propagation.VALUES_CONTEXTS_MAX
