"""The errors a context reports: ContextError, Canceled and DeadlineExceeded."""

from __future__ import annotations

__all__ = ["Canceled", "Cancelled", "ContextError", "DeadlineExceeded"]


class ContextError(Exception):
    """Base of the errors a done context reports through ``ctx.err()``.

    Example:
        >>> import gocontext
        >>> issubclass(gocontext.Canceled, gocontext.ContextError)
        True
    """

    __module__ = "gocontext"
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

    __module__ = "gocontext"
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

    __module__ = "gocontext"
    _message = "context deadline exceeded"


Cancelled = Canceled
