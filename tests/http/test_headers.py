"""The header grammar, driven by tables of inputs: no sockets."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gocontext.http import _headers
from gocontext.http._headers import (
    MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_ENTRIES,
    HeaderError,
    format_baggage,
    format_grpc_timeout,
    grpc_timeout_of,
    parse_baggage,
    parse_grpc_timeout,
    parse_timeout_ms,
)
from gocontext.http._middleware import timeout_and_values as incoming_deadline

from ..conftest import NEVER


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1S", 1.0), ("250m", 0.25), ("7u", 7e-6), ("3n", 3e-9), ("2M", 120.0), ("1H", 3600.0),
     ("99999999H", 99999999 * 3600.0), ("0n", 0.0), (" 5S ", 5.0)],
)  # fmt: skip
def test_grpc_timeout_parses(text: str, seconds: float) -> None:
    assert parse_grpc_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "S",
        "1",
        "1s",
        "-1S",
        "1.5S",
        "123456789S",
        "1SS",
        "1 S",
        "\uff11S",
        "0x10S",
        "inf",
        "+5S",
        "5_0S",
        "\u00b2S",
        "\u0661S",
        "5\u00a0S",
    ],
)
def test_grpc_timeout_rejects_what_breaks_the_grammar(bad: str) -> None:
    with pytest.raises(HeaderError, match="Grpc-Timeout"):
        parse_grpc_timeout(bad)


@pytest.mark.parametrize("seconds", [1e-9, 0.000123, 0.25, 1.0, 59.9, 3600.5, 86400 * 30, 1e9])
def test_grpc_timeout_round_trips_without_ever_growing(seconds: float) -> None:
    text = format_grpc_timeout(seconds)
    back = parse_grpc_timeout(text)
    assert back <= seconds
    assert back >= seconds * 0.999999 or seconds < 1e-6


@given(st.floats(min_value=0, exclude_min=True, allow_nan=False))
def test_grpc_timeout_is_the_finest_unit_that_fits_in_eight_digits_rounded_down(
    seconds: float,
) -> None:
    expected = "99999999H"
    for unit, size in (("n", 1e-9), ("u", 1e-6), ("m", 1e-3), ("S", 1.0), ("M", 60.0)):
        quotient = seconds / size
        if quotient < 1e8:
            expected = f"{math.floor(quotient)}{unit}"
            break
    else:
        if seconds / 3600.0 < 1e8:
            expected = f"{math.floor(seconds / 3600.0)}H"
    assert format_grpc_timeout(seconds) == expected


def test_grpc_timeout_of_nothing_left_is_zero() -> None:
    assert format_grpc_timeout(0) == "0n"
    assert format_grpc_timeout(-5) == "0n"


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("1500", 1.5), ("9999999999", 9999999.999)]
)
def test_ms_headers_parse(text: str, seconds: float) -> None:
    assert parse_timeout_ms("Connect-Timeout-Ms", text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["", "-1", "1.5", "12345678901", "1e3", "abc", "99999999999999999999"]
)
def test_ms_headers_reject_garbage_and_absurd_values(bad: str) -> None:
    with pytest.raises(HeaderError, match="X-Envoy-Expected-Rq-Timeout-Ms"):
        parse_timeout_ms("X-Envoy-Expected-Rq-Timeout-Ms", bad)


def test_the_smallest_incoming_timeout_wins() -> None:
    headers = [
        (b"grpc-timeout", b"5S"),
        (b"Connect-Timeout-Ms", b"3000"),
        (b"x-envoy-expected-rq-timeout-ms", b"4000"),
        (b"baggage", b"a=1"),
        (b"baggage", b"b=2"),
    ]
    timeout, values = incoming_deadline(headers)
    assert timeout == 3.0
    assert values == {"a": "1", "b": "2"}
    assert incoming_deadline([]) == (None, {})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("k=v", {"k": "v"}),
        ("k=v;prop=1;other", {"k": "v"}),
        (" k = v , j=w ", {"k": "v", "j": "w"}),
        ("k=%E2%9C%93", {"k": "✓"}),
        ("k=a%2Cb", {"k": "a,b"}),
        ("novalue, =v, bad key=v, k=v", {"k": "v"}),
        ("k=%FF", {}),
        ("", {}),
        (",,,", {}),
        ("a=%zz, b=%, c=%4, d=x%, k=v", {"k": "v"}),  # bad escapes are dropped, not passed on
        ('a=two words, b="quoted", c=back\\slash, d=\x7f, k=v', {"k": "v"}),
        ("k=\tv\t , j=", {"k": "v", "j": ""}),  # HTTP whitespace only, an empty value is one
        ("k=\xa0v, j=v\x85", {}),  # not HTTP whitespace, and not W3C baggage-octets
        ("k=\udcff", {}),  # a lone surrogate is no text
    ],
)
def test_baggage_parses_and_drops_malformed_members(header: str, expected: dict[str, str]) -> None:
    assert parse_baggage(header) == expected


def test_baggage_is_bounded() -> None:
    many = ",".join(f"k{i}=v" for i in range(1000))
    assert len(parse_baggage(many)) == MAX_BAGGAGE_ENTRIES
    huge = "k=" + "x" * (MAX_BAGGAGE_BYTES * 4) + ",j=1"
    assert parse_baggage(huge) == {}


def test_a_member_cut_by_the_bound_is_dropped_whole() -> None:
    head = "a=" + "x" * 7000 + ","  # 7,003 bytes
    assert parse_baggage(head + "b=" + "y" * 2000) == {"a": "x" * 7000}
    assert parse_baggage(head + "b=" + "y" * 2000 + ",c=1") == {"a": "x" * 7000}
    whole = head + "b=" + "y" * (MAX_BAGGAGE_BYTES - len(head) - 2)  # ends on the bound
    assert parse_baggage(whole + ",c=1")["b"] == "y" * (MAX_BAGGAGE_BYTES - len(head) - 2)


def test_raw_utf8_baggage_reads_as_utf8_and_bad_bytes_drop_the_member() -> None:
    assert parse_baggage("city=Genève".encode()) == {"city": "Genève"}
    assert parse_baggage(b"a=\xff\xfe, b=ok") == {"b": "ok"}
    assert parse_baggage(b"city=Gen%C3%A8ve") == {"city": "Genève"}


@pytest.mark.parametrize("junk", ["\x85", "\x1c", "\xa0", "\u2003", "\n", "\x0b"])
def test_only_http_whitespace_may_surround_a_deadline(junk: str) -> None:
    with pytest.raises(HeaderError, match="Grpc-Timeout"):
        parse_grpc_timeout(f"{junk}5S")
    with pytest.raises(HeaderError, match="Grpc-Timeout"):
        parse_grpc_timeout(f"5S{junk}")
    with pytest.raises(HeaderError, match="Connect-Timeout-Ms"):
        parse_timeout_ms("Connect-Timeout-Ms", f"{junk}500")
    assert parse_grpc_timeout(" \t5S\t ") == 5.0
    assert parse_timeout_ms("Connect-Timeout-Ms", "\t500 ") == 0.5


def test_a_huge_bad_header_is_echoed_in_part() -> None:
    value = "9" * 65536
    for parse in (parse_grpc_timeout, lambda v: parse_timeout_ms("Connect-Timeout-Ms", v)):
        with pytest.raises(HeaderError) as info:
            parse(value)
        message = str(info.value)
        assert len(message) < 200
        assert message.endswith("…")


def test_baggage_formats_merges_and_escapes() -> None:
    out = format_baggage({"request-id": "a b,c;d%"}, "user=ada;p=1,request-id=old")
    assert out == "user=ada;p=1,request-id=a%20b%2Cc%3Bd%25"
    assert parse_baggage(out)["request-id"] == "a b,c;d%"
    assert format_baggage({}, None) == ""


@pytest.mark.parametrize(
    "member",
    [
        "k=" + "a" * 4000 + '"',  # a long value, then a character no value may hold
        "k=" + "a" * 4000 + "%zz",  # then a bad escape
        "k=" + "%41" * 1300 + ";\x00",  # escapes, then properties (accepted as they come)
        "k" * 4000 + "=v x",  # a long key, then garbage
    ],
)
def test_a_hostile_baggage_member_is_read_in_one_pass(member: str) -> None:
    """A value's characters each match one way: a member that fails to match fails at once,
    whatever its length (a nested repetition would try every way to split the run: 2^n). A
    hang is a failure at the bound, in a child process (the regex engine holds the GIL)."""
    code = (
        "from gocontext.http._headers import parse_baggage\n"
        f"print(sorted(parse_baggage({member!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=NEVER,
        check=True,
        env=env,
    )
    assert out.stdout.strip() in ("[]", "['k']"), out.stdout


# The shortcuts a server takes on every request read exactly what the general grammar reads.

_KEYS = st.text(alphabet="ak-_%!", min_size=1, max_size=3) | st.sampled_from(["", " a", "a b"])
_VALUES = st.lists(
    st.sampled_from(["a", "1", "%41", "~", "=", "!"])
    | st.sampled_from(["%zz", "%", " ", '"', ";p", "é", "\\", "\x7f", "%C3%A9", "%ff"]),
    max_size=4,
).map("".join)
_HEADERS = st.lists(
    st.tuples(_KEYS, _VALUES).map("=".join) | st.sampled_from(["", " ", "a", "a=b ", "\t"]),
    min_size=1,
    max_size=5,
).map(",".join)


def _general_baggage(header: bytes) -> dict[str, str]:
    saved = _headers._SIMPLE_BAGGAGE_BYTES
    _headers._SIMPLE_BAGGAGE_BYTES = -1  # no header takes the shortcut
    try:
        return parse_baggage(header)
    finally:
        _headers._SIMPLE_BAGGAGE_BYTES = saved


@given(_HEADERS)
@settings(max_examples=500)
@example("request-id=r1,user=ada")
def test_the_plain_baggage_shortcut_reads_what_the_grammar_reads(text: str) -> None:
    header = text.encode("utf-8")
    assert parse_baggage(header) == _general_baggage(header)


@pytest.mark.parametrize("members", [1, 2, 179, 180, 181, 400])
def test_the_plain_baggage_shortcut_keeps_the_entry_bound(members: int) -> None:
    for header in (
        ",".join(f"k{i}=v" for i in range(members)).encode(),
        ",".join("k=" for _ in range(members)).encode(),
    ):
        got = parse_baggage(header)
        assert got == _general_baggage(header)
        assert len(got) <= MAX_BAGGAGE_ENTRIES


@given(
    st.binary(max_size=12)
    | st.lists(st.sampled_from(list(b" \t09S m\x85")), max_size=12).map(bytes)
)
def test_a_raw_grpc_timeout_reads_as_its_text(raw: bytes) -> None:
    try:
        expected: object = parse_grpc_timeout(raw.decode("latin-1"))
    except HeaderError as e:
        expected = str(e)
    try:
        got: object = grpc_timeout_of(raw)
    except HeaderError as e:
        got = str(e)
    assert got == expected
