"""Header grammar for deadlines and propagated values: pure functions over strings.

- ``Grpc-Timeout``: gRPC's ``TimeoutValue TimeoutUnit``, 1 to 8 digits and one of
  ``H M S m u n`` (hours to nanoseconds).
- ``Connect-Timeout-Ms`` and Envoy's ``X-Envoy-Expected-Rq-Timeout-Ms``: whole milliseconds.
- ``baggage``: W3C Baggage, ``key=value`` list members separated by commas, values
  percent-encoded, optional ``;properties`` kept as they are.
"""

from __future__ import annotations

import math
import re
from urllib.parse import quote, unquote

__all__ = [
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_ENTRIES",
    "HeaderError",
    "format_baggage",
    "format_grpc_timeout",
    "parse_baggage",
    "parse_grpc_timeout",
    "parse_timeout_ms",
]

MAX_BAGGAGE_BYTES = 8192  # the W3C spec's minimum that every platform must accept
MAX_BAGGAGE_ENTRIES = 180  # likewise
_MAX_MS_DIGITS = 10  # about 115 days: anything longer is a mistake, not a deadline

_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])\Z")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MS = re.compile(rf"[0-9]{{1,{_MAX_MS_DIGITS}}}\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_SAFE = "!#$&'()*+-./:<=>?@[]^_`{|}~"  # baggage-octets that need no escaping (not , ; % \\ ")


class HeaderError(ValueError):
    """A deadline or baggage header that does not follow its grammar."""


def format_grpc_timeout(seconds: float) -> str:
    """The ``Grpc-Timeout`` value for *seconds* left: the finest unit that fits in 8 digits,
    rounded down so the receiver never gets more time than the sender had.

    Example:
        >>> format_grpc_timeout(0.25), format_grpc_timeout(90), format_grpc_timeout(-1)
        ('250000u', '90000000u', '0n')
    """
    if not seconds > 0:
        return "0n"
    for unit in "numSMH":
        value = math.floor(seconds / _GRPC_UNITS[unit])
        if value < 100_000_000:
            return f"{value}{unit}"
    return "99999999H"


def parse_grpc_timeout(value: str) -> float:
    """Seconds in a ``Grpc-Timeout`` value; HeaderError if it breaks the grammar.

    Example:
        >>> parse_grpc_timeout("250m"), parse_grpc_timeout("2S")
        (0.25, 2.0)
    """
    m = _GRPC.match(value.strip())
    if m is None:
        raise HeaderError(
            f"Grpc-Timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), got {value!r}"
        )
    return int(m.group(1)) * _GRPC_UNITS[m.group(2)]


def parse_timeout_ms(name: str, value: str) -> float:
    """Seconds in a whole-milliseconds header such as ``Connect-Timeout-Ms``.

    Example:
        >>> parse_timeout_ms("Connect-Timeout-Ms", "1500")
        1.5
    """
    v = value.strip()
    if _MS.match(v) is None:
        raise HeaderError(
            f"{name} must be a whole number of milliseconds "
            f"(at most {_MAX_MS_DIGITS} digits), got {value!r}"
        )
    return int(v) / 1000.0


def parse_baggage(header: str) -> dict[str, str]:
    """The ``key -> value`` pairs of a ``baggage`` header, bounded and forgiving.

    At most ``MAX_BAGGAGE_BYTES`` are read and ``MAX_BAGGAGE_ENTRIES`` kept; malformed members
    (no ``=``, a key that is not a token, a bad percent-escape) are dropped, never trusted.

    Example:
        >>> parse_baggage("request-id=r%2017;ttl=3, bad entry, user=ada")
        {'request-id': 'r 17', 'user': 'ada'}
    """
    out: dict[str, str] = {}
    data = header.encode("utf-8", "replace")[:MAX_BAGGAGE_BYTES].decode("utf-8", "ignore")
    for member in data.split(","):
        if len(out) >= MAX_BAGGAGE_ENTRIES:
            break
        pair = member.split(";", 1)[0]
        key, sep, raw = pair.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not _TOKEN.match(key):
            continue
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            continue
        out[key] = value
    return out


def format_baggage(values: dict[str, str], existing: str | None = None) -> str:
    """A ``baggage`` header carrying *values*, merged into *existing* (ours win on a clash).

    Bounded as W3C Baggage says: at most ``MAX_BAGGAGE_BYTES`` bytes and
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
    room = MAX_BAGGAGE_BYTES + 1  # every member costs its length and a comma; the last has none
    for k, v in values.items():
        if len(ours) == MAX_BAGGAGE_ENTRIES:
            break
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
