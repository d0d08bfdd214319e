"""What a context sends with an outgoing call, for every client wire: the time it has left and
its ``PropagatedKey`` values as a ``baggage`` value.

A client calls ``time_left(ctx)`` first (it raises the context's error when the context is
done, so nothing is sent), then ``baggage(ctx, existing)`` for the header or metadata.
"""

from __future__ import annotations

import math
import weakref

from .. import _timer
from .._context import _NEXT, _OURS, Context
from .._errors import DeadlineExceeded
from .._propagation import _keys, outgoing_values
from ._headers import format_baggage

__all__ = ["baggage", "deadline_passed", "time_left"]

# A timeout that the deadline set fires at the deadline, and the deadline's own timer may
# mark the context a moment later: this close to it, a timeout is the deadline's doing.
_DEADLINE_SLACK = 0.005


def time_left(ctx: Context) -> float | None:
    """Seconds left before *ctx*'s deadline, None when it has none; raises its error if done.

    A deadline that has passed while the context has not noticed yet raises
    ``DeadlineExceeded`` all the same: a call made now would send no time at all.

    Example:
        >>> import gocontext
        >>> time_left(gocontext.background()) is None
        True
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 60)
        >>> 0 < time_left(ctx) <= 60
        True
        >>> cancel()
        >>> time_left(ctx)
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """
    err = ctx.err()
    if err is not None:
        raise err
    deadline = ctx.deadline()
    if deadline is None or deadline == math.inf:
        return None
    left = _timer.until(deadline)
    if left <= 0:
        raise DeadlineExceeded()
    return left


def baggage(ctx: Context, existing: str | None) -> str | None:
    """The ``baggage`` value that carries *ctx*'s ``PropagatedKey`` values, merged into the
    *existing* one (ours win on a clash); None when *ctx* carries none (send *existing*).

    Example:
        >>> import gocontext
        >>> key = gocontext.PropagatedKey("request-id")
        >>> baggage(gocontext.with_value(gocontext.background(), key, "r 1"), "user=ada")
        'user=ada,request-id=r%201'
        >>> baggage(gocontext.background(), "user=ada") is None
        True
    """
    vals = ctx._vals if type(ctx) in _OURS else None  # type: ignore[attr-defined]  # ours
    if vals is None or _NEXT in vals:  # (values found past this context's own dict)
        values = outgoing_values(ctx)
        if not values:
            return None
        return format_baggage(values, existing) if existing else _format(values)
    if not vals:  # a root's: no values at all
        return None
    # Every value of *ctx* is in its dict, which never changes (a context's children that add
    # no value share it): what goes out for it is found once, while no key is declared since.
    # The memo holds a context of that dict weakly, never the dict (its values are the
    # caller's, to be freed with its contexts): while that context lives, the dict's id is its
    # own.
    keys = len(_keys)
    known = _by_values.get(id(vals))
    if known is None or known[1] != keys or getattr(known[0](), "_vals", None) is not vals:
        if len(_by_values) >= _BY_VALUES_MAX:
            _by_values.clear()
        values = outgoing_values(ctx)
        known = _by_values[id(vals)] = (
            weakref.ref(ctx),
            keys,
            values,
            _format(values) if values else None,
        )
    if existing and known[2]:
        return format_baggage(known[2], existing)
    return known[3]


def _format(values: dict[str, str]) -> str:
    key = tuple(values.items())  # (the same values go out call after call: format them once)
    value = _formatted.get(key)
    if value is None:
        if len(_formatted) >= _FORMATTED_MAX:
            _formatted.clear()
        value = _formatted[key] = format_baggage(values)
    return value


# The baggage values formatted lately, by their (name, value) pairs; a bounded memo (dict
# operations are atomic: threads share it without a lock, at worst formatting twice).
_formatted: dict[tuple[tuple[str, str], ...], str] = {}
_FORMATTED_MAX = 256

# What goes out for the contexts seen lately, by the id of their values dict: (a context of
# that dict, weakly; how many keys were declared; the values; their baggage).
_by_values: dict[int, tuple[weakref.ref[Context], int, dict[str, str], str | None]] = {}
_BY_VALUES_MAX = 256


def deadline_passed(ctx: Context) -> bool:
    """Whether *ctx*'s deadline has passed (or is a few ms away): a timeout of a call whose
    timeouts were capped by it is the deadline's doing only then, not when a timeout the caller
    set shorter fires.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 60)
        >>> deadline_passed(ctx), deadline_passed(gocontext.background())
        (False, False)
        >>> cancel()
    """
    deadline = ctx.deadline()
    return deadline is not None and _timer.until(deadline) <= _DEADLINE_SLACK
