"""How a context travels as a Ray argument: time left, propagated values, a channel link.

A context pickles to a call of ``rebuild`` with one ``Wire`` (importing this module, and so
registering this reducer, in the worker that unpickles it). The reducer is registered with
``copyreg`` for each context class: ``pickle`` and Ray's cloudpickle both consult
``copyreg.dispatch_table`` before an object's own ``__reduce__``, which refuses.

What travels is the time remaining on the deadline clock (with the sender's boot id and
monotonic deadline: a worker on the same host uses the same clock, so time spent queued counts;
another host counts from arrival), the ``PropagatedKey`` values, and either how the context
ended (it had ended before it was sent) or the channel link that will carry its end. Ordinary
values never travel.
"""

from __future__ import annotations

import copyreg
import math
from typing import Any, NamedTuple

import ray

from .. import _propagation, _timer
from .._context import (
    _OURS,
    Context,
    _ForeignValueContext,
    _with_deadline,
    background,
    with_cancel_cause,
    with_deadline,
)
from .._errors import DeadlineExceeded
from ._channel import Ending, Link, link_for, watch
from ._channel import install as _install_shutdown

__all__ = ["Deadline", "Wire", "install", "rebuild", "reduce"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux: always count from arrival
        return ""


_BOOT_ID = _boot_id()


class Deadline(NamedTuple):
    """The time left when sent, and the sender's monotonic deadline on its boot's clock."""

    remaining: float
    boot_id: str
    at: float


class Wire(NamedTuple):
    """A context as it travels: its propagated values, then how it ended (it had ended before
    it was sent) or the link that will carry its end, and its deadline."""

    values: dict[str, str]
    ended: Ending | None
    link: Link | None
    deadline: Deadline | None


def reduce(ctx: Context) -> tuple[Any, tuple[Wire]]:
    if not ray.is_initialized():  # pickled for something else: never start Ray for it
        raise TypeError(
            "a gocontext context cannot be pickled by itself: its cancellation lives in this "
            "process. It travels as an argument to Ray tasks (once Ray is initialized) and "
            "across HTTP with gocontext.http"
        )
    values = _propagation.outgoing_values(ctx)
    err = ctx.err()
    if err is not None:
        return rebuild, (Wire(values, Ending(isinstance(err, DeadlineExceeded), None), None, None),)
    link = None if ctx.done() is background().done() else link_for(ctx)
    at = ctx.deadline()
    deadline = None if at is None or at == math.inf else Deadline(_timer.until(at), _BOOT_ID, at)
    return rebuild, (Wire(values, None, link, deadline),)


def rebuild(wire: Wire) -> Context:
    """The receiving side of a context: a live copy that ends when the original does."""
    parent = _propagation.attach_values(background(), wire.values)
    if wire.ended is not None:  # the original had ended before it was sent
        if wire.ended.deadline_exceeded:
            return with_deadline(parent, 0.0)[0]
        ctx, cancel = with_cancel_cause(parent)
        cancel(None)
        return ctx
    ctx, _ = with_cancel_cause(parent)
    if wire.link is not None:
        watch(wire.link, ctx)
    d = wire.deadline
    if d is None:
        return ctx
    if d.boot_id and d.boot_id == _BOOT_ID:  # one host, one monotonic clock
        # (unchecked: a sender's with_timeout may lie further than with_deadline accepts)
        return _with_deadline(ctx, d.at, None, "with_deadline")[0]
    return _with_deadline(ctx, _timer.now() + d.remaining, None, "with_deadline")[0]


def install() -> None:
    """Carry contexts in Ray arguments, and stop our threads before Ray shuts down."""
    for cls in (*_OURS, _ForeignValueContext):  # pickle (and cloudpickle) ask copyreg first
        copyreg.pickle(cls, reduce)
    _install_shutdown()
