"""What crosses a process boundary: the time remaining and the values of ``PropagatedKey``s.

Pure functions over strings and contexts; the integrations (HTTP headers, Ray arguments) carry
what these produce. Only values under a ``PropagatedKey`` ever leave the process.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, final

from ._context import Context, Key, background, with_value

__all__ = [
    "PropagatedKey",
    "attach_values",
    "outgoing_values",
    "values_context",
]

# A baggage key is an RFC 7230 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

# Every PropagatedKey by its wire name; guarded by _keys_lock for writes. Keys are interned: the
# name is the identity, so a value that arrives is found by any code that declares the key.
_keys: dict[str, PropagatedKey] = {}
_keys_lock = threading.Lock()


@final
class PropagatedKey(Key[str]):
    """A ``Key[str]`` whose values travel across HTTP hops and into Ray tasks.

    The name is the wire name (a token, as W3C baggage keys are); keys are interned by name,
    so ``PropagatedKey("request-id") is PropagatedKey("request-id")``. Values must be ``str``.
    Values under ordinary keys never leave the process.

    Example:
        >>> import gocontext
        >>> REQUEST_ID = gocontext.PropagatedKey("request-id")
        >>> ctx = gocontext.with_value(gocontext.background(), REQUEST_ID, "r-17")
        >>> ctx.value(REQUEST_ID)
        'r-17'
    """

    __slots__ = ()

    def __new__(cls, name: str) -> PropagatedKey:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(
                f"PropagatedKey() needs a token name (letters, digits, -._~ and the like), "
                f"got {name!r}"
            )
        with _keys_lock:
            key = _keys.get(name)
            if key is None:
                key = _keys[name] = super().__new__(cls)
                Key.__init__(key, name)
        return key

    def __init__(self, name: str) -> None:
        pass  # set once, in __new__

    def __repr__(self) -> str:
        return f"PropagatedKey({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PropagatedKey, (self.name,))

    def _check_value(self, value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(
                f"with_value() needs a str value under {self!r}, got {type(value).__name__}: "
                f"{value!r}"
            )


def outgoing_values(ctx: Context) -> dict[str, str]:
    """Every ``PropagatedKey`` value visible from *ctx*, by wire name."""
    out: dict[str, str] = {}
    for name, key in list(_keys.items()):
        v = ctx.value(key)
        if v is not None:
            out[name] = v
    return out


def attach_values(parent: Context, values: Mapping[str, str]) -> Context:
    """Return *parent* with the values whose names are declared ``PropagatedKey``s.

    Names no key declares, and values that are not strings, are dropped.
    """
    ctx = parent
    for name, v in values.items():
        key = _keys.get(name)
        if key is not None and isinstance(v, str):
            ctx = with_value(ctx, key, v)
    return ctx


def values_context(baggage: str | bytes, values: Callable[[], Mapping[str, str]]) -> Context:
    """``background()`` with the propagated values of an incoming ``baggage`` value (text, or
    an ASGI server's raw bytes); *values* reads them (called only when this value is new here).

    Such a context never ends and never changes, so the one made for a value serves every
    request that sends it: a bounded memo, keyed also by how many keys are declared (a key
    declared since may keep a value the memo's context dropped).
    """
    if not baggage:
        return background()
    key = (baggage, len(_keys))
    ctx = _values_contexts.get(key)
    if ctx is None:
        if len(_values_contexts) >= VALUES_CONTEXTS_MAX:
            _values_contexts.clear()
        ctx = _values_contexts[key] = attach_values(background(), values())
    return ctx


_values_contexts: dict[tuple[str | bytes, int], Context] = {}  # (dict operations are atomic)
VALUES_CONTEXTS_MAX = 256  # baggage values kept by values_context()
