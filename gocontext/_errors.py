"""The errors a context reports (ContextError, Canceled, DeadlineExceeded), and the checks that
turn bad arguments into a TypeError or ValueError naming the call and what came in."""

from __future__ import annotations

import inspect

__all__ = [
    "Canceled",
    "Cancelled",
    "ContextError",
    "DeadlineExceeded",
    "async_callable",
    "check_real",
    "describe",
    "refuse_coroutine",
]


class ContextError(Exception):
    """Base of the errors a done context reports through ``ctx.err()``.

    Example:
        >>> import gocontext
        >>> issubclass(gocontext.Canceled, gocontext.ContextError)
        True
    """

    _message = "context error"

    # No __init__: errors are made on every err() of a done context, and BaseException's own
    # constructor is several times quicker than a Python one. The message is the default str().
    def __str__(self) -> str:
        return super().__str__() or self._message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class Canceled(ContextError):
    """The context was canceled (``str()`` is ``"context canceled"``), like Go's ``Canceled``.

    An ordinary exception: never a subclass of ``asyncio.CancelledError`` or ``trio.Cancelled``,
    so it never looks like a framework cancellation.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> str(ctx.err())
        'context canceled'
    """

    _message = "context canceled"


class DeadlineExceeded(ContextError, TimeoutError):
    """The context's deadline passed (``str()`` is ``"context deadline exceeded"``).

    Also a ``TimeoutError``, so code that already handles timeouts handles it.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 0)
        >>> isinstance(ctx.err(), TimeoutError)
        True
    """

    _message = "context deadline exceeded"


Cancelled = Canceled


def describe(x: object) -> str:
    """A short, safe ``repr`` of a bad argument for an error message (never raises).

    Example:
        >>> describe("ctx"), describe(10**400)
        ("str: 'ctx'", 'int of 1329 bits')
    """
    if type(x) is int and x.bit_length() > 64:
        return f"int of {x.bit_length()} bits"
    try:
        text = repr(x)
    except Exception:
        return f"{type(x).__name__} object with a broken repr"
    if len(text) > 80:
        text = text[:77] + "..."
    return text if x is None else f"{type(x).__name__}: {text}"


def async_callable(fn: object) -> bool:
    """Whether calling *fn* makes a coroutine by its definition: an async function (a
    ``functools.partial`` of one too) or an object whose ``__call__`` is one.

    Example:
        >>> async def job(): ...
        >>> async_callable(job), async_callable(print)
        (True, False)
    """
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method, not callability
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def refuse_coroutine(result: object, fn: object, where: str, instead: str) -> None:
    """Raise TypeError if *result*, what *fn* returned in a worker thread of *where*, is a
    coroutine (closed first: it would never run, and nobody awaits it) or an async generator.

    Example:
        >>> async def job(): ...
        >>> try:
        ...     refuse_coroutine(job(), job, "Group.go()", "use gocontext.TaskGroup")
        ... except TypeError as e:
        ...     print(str(e).split(", and ")[0])
        Group.go() runs functions in threads
    """
    if inspect.iscoroutine(result):
        result.close()
        what = "a coroutine"
    elif inspect.isasyncgen(result):  # (never started: dropping it runs nothing)
        what = "an async generator"
    else:
        return
    raise TypeError(
        f"{where} runs functions in threads, and {describe(fn)} returned {what}, which would "
        f"never run: {instead}"
    )


def check_real(x: object, fname: str, what: str, expected: str) -> float:
    """Return *x* as a float if it is a real number (not a bool, not NaN), else raise.

    ``TypeError`` for what is not a number, ``ValueError`` for NaN and for ints too large for
    a float; both name the call (*fname*) and the argument (*what*). Infinities pass.

    Example:
        >>> check_real(2, "with_timeout", "timeout", "seconds")
        2.0
        >>> check_real(float("nan"), "with_timeout", "timeout", "seconds")
        Traceback (most recent call last):
          ...
        ValueError: with_timeout() got a NaN timeout
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{fname}() needs {expected} as {what}, got {describe(x)}")
    try:
        f = float(x)
    except OverflowError:
        raise ValueError(f"{fname}() got a {what} too large for a float: {describe(x)}") from None
    except Exception as e:  # a number subclass whose __float__ is broken
        raise TypeError(f"{fname}() needs {expected} as {what}, got {describe(x)}") from e
    if f != f:
        raise ValueError(f"{fname}() got a NaN {what}")
    return f
