"""The ambient context: ``current()`` and ``use()`` over one ContextVar.

A ContextVar follows asyncio tasks and trio tasks (each task starts with a copy of its
spawner's variables) and is copied into ``to_thread`` workers.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, final

from ._context import Context, RichContext, as_rich, background, check_context

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["current", "use"]

_current: ContextVar[RichContext] = ContextVar("gocontext.current")
_BACKGROUND = background()


def current() -> RichContext:
    """Return the ambient context: the one set by the nearest ``use()``, else ``background()``.

    Explicit passing is the primary style; this is for integration boundaries (a middleware
    sets it, a handler reads it).

    Example:
        >>> import gocontext
        >>> gocontext.current() is gocontext.background()
        True
    """
    return _current.get(_BACKGROUND)


@final
class use:  # noqa: N801 - used as a function: `with gocontext.use(ctx):`
    """Make *ctx* the ambient context for the ``with`` block (in this task or thread).

    A user-written context is held through a view of it that adds ``check()`` and
    ``remaining()`` (its cancellation, deadline and values are the context's own), so
    ``current()`` always has them; ``with use(ctx) as view:`` gives that view.

    Blocks left out of order (two generators, each suspended inside its own block, closed in
    the order they were opened) still leave the ambient context as a stack would: the
    innermost block still open, else what was ambient before the first. Leaving twice, or in
    a task or thread that never saw the block, changes nothing.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> with gocontext.use(ctx) as same:
        ...     gocontext.current() is ctx and same is ctx
        True
        >>> gocontext.current() is gocontext.background()
        True
    """

    # _outer: the block that was innermost when this one was entered (the chain of open
    # blocks runs through it, from _innermost); _prev: what to restore on leaving. A block
    # left out of order hands both to the block just inside it.
    __slots__ = ("_ctx", "_entered", "_outer", "_prev")

    def __init__(self, ctx: Context) -> None:
        check_context(ctx, "use", "ctx")
        # A user-written context is held through a view that has check() and remaining(),
        # so that current() always answers with a RichContext.
        self._ctx = as_rich(ctx)
        self._entered = False
        self._outer: use | None = None
        self._prev: RichContext = _BACKGROUND

    def __enter__(self) -> RichContext:
        if self._entered:
            raise RuntimeError("gocontext.use() is not reentrant: enter a new use(ctx)")
        self._outer = _innermost.get()
        self._prev = _current.get(_BACKGROUND)
        _current.set(self._ctx)
        _innermost.set(self)
        self._entered = True
        return self._ctx

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._entered:
            return
        self._entered = False
        top = _innermost.get()
        if top is self:
            _current.set(self._prev)
            _innermost.set(self._outer)
        else:
            # Left before a block entered inside it: that block takes over what this one was
            # to restore. Not found: the block is not open here (left in another task).
            inner = top
            while inner is not None and inner._outer is not self:
                inner = inner._outer
            if inner is not None:
                inner._outer = self._outer
                inner._prev = self._prev
        self._outer = None
        self._prev = _BACKGROUND


# The innermost use() block open in this task or thread (None: none).
_innermost: ContextVar[use | None] = ContextVar("gocontext.use", default=None)
