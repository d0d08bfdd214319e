"""Header grammar for deadlines and propagated values: pure functions over strings.

- ``Grpc-Timeout``: gRPC's ``TimeoutValue TimeoutUnit``, 1 to 8 digits and one of
  ``H M S m u n`` (hours to nanoseconds).
- ``Connect-Timeout-Ms`` and Envoy's ``X-Envoy-Expected-Rq-Timeout-Ms``: whole milliseconds.
- ``baggage``: W3C Baggage, ``key=value`` list members separated by commas, values
  percent-encoded, optional ``;properties`` kept as they are.

Only HTTP's own whitespace (SP and HTAB) may surround a value; anything else that
``str.strip()`` would remove (``\\x85``, ``\\xa0``, ``\\x1c``) breaks the grammar.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_ENTRIES",
    "MAX_SENT_BAGGAGE_BYTES",
    "HeaderError",
    "format_baggage",
    "format_grpc_timeout",
    "grpc_timeout_of",
    "parse_baggage",
    "parse_grpc_timeout",
    "parse_timeout_ms",
]

MAX_BAGGAGE_BYTES = 8192  # the W3C spec's minimum that every platform must accept
# What we send: two bytes fewer, for aiohttp's server refuses a header value of more than 8,190
# bytes by default (its max_field_size) with a 400, and a call would fail for its baggage.
MAX_SENT_BAGGAGE_BYTES = 8190
MAX_BAGGAGE_ENTRIES = 180  # likewise
_MAX_MS_DIGITS = 10  # about 115 days: anything longer is a mistake, not a deadline

_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MS = re.compile(rf"[0-9]{{1,{_MAX_MS_DIGITS}}}\Z")
# A list member: a token key, '=', a value, optional ';properties', HTTP whitespace around each.
# The value is W3C's baggage-octets (no space, '"', ',', ';' or '\\'), plus raw non-ASCII text
# (not C1 controls, NBSP or surrogates), which some senders put there unescaped; every '%'
# starts a two-digit escape. Each character of a value can match in one way only (one
# character or one escape per repetition: a run inside the repetition, `(?:[…]+|…)*`, could be
# split in 2^n ways, all tried when the member then fails to match): matching is linear.
_MEMBER = re.compile(
    r"[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"
    r"((?:[\x21\x23\x24\x26-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E\xA1-\uD7FF\uE000-\U0010FFFF]|%[0-9A-Fa-f]{2})*)"
    r"[ \t]*(?:;.*)?",
    re.DOTALL,
)
# A whole baggage header of plain members (token key, '=', a value of baggage-octets other
# than '%': nothing to unescape), with no whitespace or properties: parsed by splitting. Bounded
# in length so that it holds fewer than MAX_BAGGAGE_ENTRIES members (each takes 3 bytes at least).
_SIMPLE_BAGGAGE = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[\x21\x23\x24\x26-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*"
    rb"(?:,[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[\x21\x23\x24\x26-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*)*"
).fullmatch
_SIMPLE_BAGGAGE_BYTES = 3 * MAX_BAGGAGE_ENTRIES - 1  # at most this long: at most 180 members
_OWS = " \t"  # HTTP's optional whitespace: nothing else is stripped
_SHOWN = 64  # characters of a bad header a message echoes
_SAFE = "!#$&'()*+-./:<=>?@[]^_`{|}~"  # baggage-octets that need no escaping (not , ; % \\ ")
# A value that quote(value, safe=_SAFE) leaves as it is: most are, and need no encoding.
_BARE = re.compile(r"[A-Za-z0-9_.~!#$&'()*+\-/:<=>?@\[\]^`{|}]*").fullmatch


class HeaderError(ValueError):
    """A deadline or baggage header that does not follow its grammar."""


def _shown(value: str) -> str:
    """*value* as a message shows it: its repr, cut to ``_SHOWN`` characters."""
    if len(value) <= _SHOWN:
        return repr(value)
    return repr(value[:_SHOWN]) + "…"


def format_grpc_timeout(seconds: float) -> str:
    """The ``Grpc-Timeout`` value for *seconds* left: the finest unit that fits in 8 digits,
    rounded down so the receiver never gets more time than the sender had.

    Example:
        >>> format_grpc_timeout(0.25), format_grpc_timeout(90), format_grpc_timeout(-1)
        ('250000u', '90000000u', '0n')
    """
    if not seconds > 0:
        return "0n"
    # The units from the finest, written out: a request pays this on every call. A positive
    # quotient below 10**8 is floored by int().
    if (v := seconds / 1e-9) < 1e8:
        return f"{int(v)}n"
    if (v := seconds / 1e-6) < 1e8:
        return f"{int(v)}u"
    if (v := seconds / 1e-3) < 1e8:
        return f"{int(v)}m"
    if seconds < 1e8:
        return f"{int(seconds)}S"
    if (v := seconds / 60.0) < 1e8:
        return f"{int(v)}M"
    if (v := seconds / 3600.0) < 1e8:
        return f"{int(v)}H"
    return "99999999H"


def parse_grpc_timeout(value: str) -> float:
    """Seconds in a ``Grpc-Timeout`` value; HeaderError if it breaks the grammar.

    Example:
        >>> parse_grpc_timeout("250m"), parse_grpc_timeout("2S")
        (0.25, 2.0)
    """
    v = value.strip(_OWS)
    unit = _GRPC_UNITS.get(v[-1:])
    digits = v[:-1]
    if unit is None or not (0 < len(digits) <= 8 and digits.isascii() and digits.isdigit()):
        raise HeaderError(
            f"Grpc-Timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), got {_shown(value)}"
        )
    return int(digits) * unit


_GRPC_UNIT_BYTES = {ord(k): v for k, v in _GRPC_UNITS.items()}


def grpc_timeout_of(value: bytes) -> float:
    """``parse_grpc_timeout`` of a raw header value (a server's bytes, read as latin-1),
    without decoding it first: what a server reads on every request.

    Example:
        >>> grpc_timeout_of(b"250m"), grpc_timeout_of(b" 2S ")
        (0.25, 2.0)
    """
    v = value.strip(b" \t")
    digits = v[:-1]
    # bytes.isdigit() is ASCII digits only (str.isdigit() also takes other scripts' digits).
    if 0 < len(digits) <= 8 and digits.isdigit():
        unit = _GRPC_UNIT_BYTES.get(v[-1])
        if unit is not None:
            return int(digits) * unit
    return parse_grpc_timeout(value.decode("latin-1"))  # (raises the error, said of the text)


def parse_timeout_ms(name: str, value: str) -> float:
    """Seconds in a whole-milliseconds header such as ``Connect-Timeout-Ms``.

    Example:
        >>> parse_timeout_ms("Connect-Timeout-Ms", "1500")
        1.5
    """
    v = value.strip(_OWS)
    if _MS.match(v) is None:
        raise HeaderError(
            f"{name} must be a whole number of milliseconds "
            f"(at most {_MAX_MS_DIGITS} digits), got {_shown(value)}"
        )
    return int(v) / 1000.0


def parse_baggage(header: str | bytes) -> dict[str, str]:
    """The ``key -> value`` pairs of a ``baggage`` header, bounded and forgiving.

    Only the members that lie whole within the first ``MAX_BAGGAGE_BYTES`` bytes are read (a
    member cut by the bound is dropped, never passed on as a prefix) and at most
    ``MAX_BAGGAGE_ENTRIES`` kept. Malformed members are dropped, never trusted: no ``=``, a key
    that is not a token, a value with a space, quote, backslash or control character, a bad
    percent-escape (``%zz``, a lone ``%``), or bytes that are not UTF-8. Raw bytes (an ASGI
    header) are read as UTF-8.

    Example:
        >>> parse_baggage("request-id=r%2017;ttl=3, bad entry, user=ada, q=%zz")
        {'request-id': 'r 17', 'user': 'ada'}
        >>> parse_baggage(b"city=Gen\\xc3\\xa8ve")
        {'city': 'Genève'}
    """
    data = header if isinstance(header, bytes) else header.encode("utf-8", "surrogatepass")
    if len(data) <= _SIMPLE_BAGGAGE_BYTES and _SIMPLE_BAGGAGE(data) is not None:
        # The common header: plain ASCII members, no whitespace, escapes or properties, few
        # enough: every member is well formed, and read as it is (the same result as below).
        simple: dict[str, str] = {}
        for member in data.decode("ascii").split(","):
            key, _, value = member.partition("=")
            simple[key] = value
        return simple
    if len(data) > MAX_BAGGAGE_BYTES:
        # Keep whole members only: cut after the last comma inside the bound.
        data = data[: data.rfind(b",", 0, MAX_BAGGAGE_BYTES + 1) + 1]
    try:
        members = data.decode("utf-8").split(",")
    except UnicodeDecodeError:  # rare: read member by member, dropping the ones that are not
        members = [m.decode("utf-8", "surrogateescape") for m in data.split(b",")]
    out: dict[str, str] = {}
    for member in members:
        if len(out) >= MAX_BAGGAGE_ENTRIES:
            break
        m = _MEMBER.fullmatch(member)
        if m is None:
            continue
        key, raw = m.groups()
        if "%" in raw:
            try:
                raw = unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                continue
        out[key] = raw
    return out


def format_baggage(values: dict[str, str], existing: str | None = None) -> str:
    """A ``baggage`` header carrying *values*, merged into *existing* (ours win on a clash).

    Bounded as W3C Baggage says, and within what common servers take: at most
    ``MAX_SENT_BAGGAGE_BYTES`` bytes (8,190: aiohttp's server refuses more by default) and
    ``MAX_BAGGAGE_ENTRIES`` members. A member that does not fit whole is dropped, never cut;
    *values* claim the room first, then *existing* members in order. A value that cannot be
    encoded (a lone surrogate) is dropped, and so is an existing member under one of our keys.

    Example:
        >>> format_baggage({"request-id": "r 17"}, "user=ada,request-id=old")
        'user=ada,request-id=r%2017'
        >>> format_baggage({"big": "x" * 9000, "bad": "\\ud800", "ok": "é"})
        'ok=%C3%A9'
    """
    ours: list[str] = []
    # Every member costs its length and a comma; the last has none.
    room = MAX_SENT_BAGGAGE_BYTES + 1
    for k, v in values.items():
        if len(ours) == MAX_BAGGAGE_ENTRIES:
            break
        if _BARE(v) is not None:
            member = f"{k}={v}"
        else:
            try:
                member = f"{k}={quote(v, safe=_SAFE)}"  # ASCII: keys are tokens, values escaped
            except UnicodeEncodeError:
                continue
        if len(member) < room:
            ours.append(member)
            room -= len(member) + 1
    if not existing:
        return ",".join(ours)
    theirs: list[str] = []
    slots = MAX_BAGGAGE_ENTRIES - len(ours)
    for raw in existing.split(","):
        member = raw.strip()
        if not member or len(theirs) == slots:
            continue
        if member.split(";", 1)[0].partition("=")[0].strip() in values:
            continue
        cost = len(member) if member.isascii() else len(member.encode("utf-8", "replace"))
        if cost < room:
            theirs.append(member)
            room -= cost + 1
    return ",".join(theirs + ours)
