"""How a context travels as a Ray argument: time left, propagated values, a channel token.

A context pickles to a call of ``rebuild`` (importing this module, and so installing this
reducer, in the worker that unpickles it). What travels is the time remaining (with the
sender's boot id and monotonic deadline: a worker on the same host uses the same clock, so
time spent queued counts; another host counts from arrival), the ``PropagatedKey`` values, and
the channel and token that carry its end. Ordinary values never travel.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray

from .. import _propagation
from .._context import Context, background, with_cancel_cause, with_deadline
from .._errors import DeadlineExceeded
from ._channel import token_for, watch

__all__ = ["install", "rebuild"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux: always count from arrival
        return ""


BOOT_ID = _boot_id()


def reduce(ctx: Context) -> tuple[Any, tuple[Any, ...]]:
    if not ray.is_initialized():  # pickled for something else: never start Ray for it
        raise TypeError(
            "a gocontext context cannot be pickled by itself: its cancellation lives in this "
            "process. It travels as an argument to Ray tasks (once Ray is initialized) and "
            "across HTTP with gocontext.http"
        )
    err = ctx.err()
    deadline = ctx.deadline()
    values = _propagation.outgoing_values(ctx)
    if err is not None:
        return rebuild, (None, None, None, None, values, type(err) is DeadlineExceeded)
    channel, token = (None, None) if ctx.done() is _never_done() else token_for(ctx)
    remaining = None if deadline is None or deadline == math.inf else deadline - time.monotonic()
    return rebuild, (channel, token, remaining, (BOOT_ID, deadline), values, False)


def _never_done() -> Any:
    return background().done()


def rebuild(
    channel: Any,
    token: str | None,
    remaining: float | None,
    clock: tuple[str, float | None] | None,
    values: dict[str, str],
    expired: bool,
) -> Context:
    """The receiving side of a context: a live copy that ends when the original does."""
    parent = _propagation.attach_values(background(), values)
    ctx, cancel = with_cancel_cause(parent)
    if token is None and remaining is None and clock is None:  # the original had ended
        if expired:
            return with_deadline(ctx, 0.0)[0]
        cancel(None)
        return ctx
    if token is not None:
        watch(channel, token, ctx)
    if remaining is not None and clock is not None:
        boot, deadline = clock
        if boot and boot == BOOT_ID and deadline is not None:  # one host, one monotonic clock
            return with_deadline(ctx, deadline)[0]
        return with_deadline(ctx, time.monotonic() + remaining)[0]
    return ctx


def install() -> None:
    _propagation.install_reducer(reduce)
