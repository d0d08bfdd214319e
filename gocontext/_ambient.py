"""The ambient context: ``current()`` and ``use()`` over one ContextVar.

A ContextVar follows asyncio tasks and trio tasks (each task starts with a copy of its
spawner's variables) and is copied into ``to_thread`` workers.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
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

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> with gocontext.use(ctx) as same:
        ...     gocontext.current() is ctx and same is ctx
        True
        >>> gocontext.current() is gocontext.background()
        True
    """

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: Context) -> None:
        check_context(ctx, "use", "ctx")
        # A user-written context is held through a view that has check() and remaining(),
        # so that current() always answers with a RichContext.
        self._ctx = as_rich(ctx)
        self._token: Token[RichContext] | None = None

    def __enter__(self) -> RichContext:
        if self._token is not None:
            raise RuntimeError("gocontext.use() is not reentrant: enter a new use(ctx)")
        self._token = _current.set(self._ctx)
        return self._ctx

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)
