"""Contexts: the Context protocol, keys, the roots, the derivations, and the context types.

Read in this order: the protocol and keys, the roots, the public derivations, then the private
context types. A cancelable context is a node of the cancel tree (``_tree.Node``): how a
cancel travels, the tree lock and registrations live there; this module adds values,
deadlines, and parents that are not ours (linked to through their ``done().add_callback``).

Values. Each ``with_value`` copies its parent's values into one dict (up to ``_MAX_COPY``, 64;
past that a new dict starts, and a lookup that misses in it continues at the parent through
``_NEXT``), so a lookup is one dict probe for the first 64 values of a chain, and one more per
further 64; that dict's ``get`` is the context's ``value`` itself when nothing continues. The
price is memory: a chain of n values holds about n * min(n, 64) / 2 dict entries. A merge's
lookup asks its parents in order, in the same loop (no recursion at any depth).

Links. A merge, and a node under a parent that is not ours, learns of its parent's end through
a callback on the parent's done signal (``_link``): the tree hands nothing down across it. As
ending a node runs its callbacks, a chain of links would end in one nested call per link; so
the first link callback in a thread runs the ends that the chain queues in a loop, batch by
batch, before it returns (``_parent_done``), and a cancel reaches a chain of any depth before
``cancel()`` returns. One consequence: a done callback that runs in that loop and cancels
another context sees the contexts linked to that one end after the callback returns, not
before its ``cancel()`` does (deriving from an ended context still gives an ended one).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta, timezone
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Generic,
    Protocol,
    TypeVar,
    cast,
    final,
    overload,
    runtime_checkable,
)

from . import _afterfunc, _timer, _tree
from ._done import CallbackHandle, Done
from ._errors import Canceled, ContextError, DeadlineExceeded, check_real, describe
from ._mutex import Busy
from ._timer import FakeInstant, _monotonic
from ._tree import CANCELED, Node, end, ext_locked, state_of

_node_cancel = Node._cancel  # (a global's load is quicker than a class attribute's)

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "CancelCauseFunc",
    "CancelCausePair",
    "CancelFunc",
    "CancelPair",
    "Context",
    "Key",
    "RichContext",
    "after_func",
    "background",
    "cause",
    "merge",
    "todo",
    "with_cancel",
    "with_cancel_cause",
    "with_deadline",
    "with_deadline_cause",
    "with_timeout",
    "with_timeout_cause",
    "with_value",
    "without_cancel",
]

T = TypeVar("T")
_log = logging.getLogger("gocontext")

# --------------------------------------------------------------------------------------------
# The protocol, keys and pairs


class Key(Generic[T]):
    """A unique key for ``with_value``; ``Key[str]("user")`` types ``ctx.value(USER)`` as
    ``str | None``, and a type checker rejects ``with_value(ctx, USER, 42)``. Keys compare by
    identity; the name is for ``repr`` only.

    Example:
        >>> import gocontext
        >>> USER = gocontext.Key[str]("user")
        >>> ctx = gocontext.with_value(gocontext.background(), USER, "ada")
        >>> ctx.value(USER)
        'ada'
    """

    __slots__ = ("__orig_class__", "name")

    if TYPE_CHECKING:
        # Keys hash by identity at run time; to a type checker they are not Hashable, so that
        # with_value(ctx, Key[int](...), "text") cannot fall through to the any-hashable overload.
        __hash__: ClassVar[None]  # type: ignore[assignment]  # keys hash by identity at run time; checkers see none

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Key() needs a str name, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return self.name


@runtime_checkable
class Context(Protocol):
    """What every context provides: a deadline, a done signal, an error and values.

    Contexts of this library implement it, and so can user-written classes, which then work as
    parents of every derivation. Every method is safe to call from any thread and event loop.
    What the library hands out is typed as the richer ``RichContext`` (with ``check()`` and
    ``remaining()``); annotate a parameter ``Context`` to accept any context.

    Example:
        >>> import gocontext
        >>> isinstance(gocontext.background(), gocontext.Context)
        True
    """

    def deadline(self) -> float | None:
        """The absolute deadline on the ``time.monotonic()`` clock, or None."""
        ...

    def done(self) -> Done:
        """The done signal; the same object on every call."""
        ...

    def err(self) -> ContextError | None:
        """None while not done; afterwards a fresh ``Canceled`` or ``DeadlineExceeded``."""
        ...

    @overload
    def value(self, key: Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Key[Any], /) -> object: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: object, /) -> object:
        """The value stored under *key* by the nearest ``with_value`` ancestor, else None."""
        ...


@runtime_checkable
class RichContext(Context, Protocol):
    """A ``Context`` with the extras every context of this library has: ``remaining()`` and
    ``check()``. Everything the library hands out (``with_*``, ``merge``, ``current()``,
    ``scope``, groups, ``signal_context``) is typed as one; parents need only be a ``Context``.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 60)
        >>> isinstance(ctx, gocontext.RichContext), ctx.remaining() > 59
        (True, True)
        >>> cancel()
        >>> ctx.check()
        Traceback (most recent call last):
          ...
        gocontext.Canceled: context canceled
    """

    def remaining(self) -> float | None:
        """Seconds until the deadline (may be <= 0), or None without one."""
        ...

    def check(self) -> None:
        """Raise ``err()`` if the context is done, else return None."""
        ...


class CancelFunc(Protocol):
    """Cancels its context: idempotent, thread-safe, never blocks on waiters, returns None.

    A thread it wakes from ``done().wait()`` runs first: ``cancel()`` releases the GIL until
    that thread has run, for 1 ms at most, rather than keep it waiting for its time slice.
    """

    def __call__(self) -> None: ...


class CancelCauseFunc(Protocol):
    """Cancels its context and records *cause* (if it is the first to end it)."""

    def __call__(self, cause: BaseException | None = None) -> None: ...


class CancelPair(tuple[RichContext, CancelFunc]):
    """``(ctx, cancel)``: unpack it, or use it as ``with ... as (ctx, cancel):``.

    Leaving the ``with`` block calls ``cancel()``, like Go's ``defer cancel()``. The parts
    are also ``pair.ctx`` and ``pair.cancel``.

    Example:
        >>> import gocontext
        >>> with gocontext.with_cancel(gocontext.background()) as (ctx, cancel):
        ...     ctx.err() is None
        True
        >>> ctx.err()
        Canceled('context canceled')
    """

    # A tuple subclass with no __new__ of its own: made by tuple's C constructor, about
    # 40 % cheaper than a NamedTuple's Python-level __new__ on every with_cancel.
    __slots__ = ()

    @property
    def ctx(self) -> RichContext:
        """The child context."""
        return self[0]

    @property
    def cancel(self) -> CancelFunc:
        """The function that cancels it."""
        return self[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self[1]()

    def __repr__(self) -> str:
        return f"CancelPair(ctx={self[0]!r}, cancel={self[1]!r})"


class CancelCausePair(tuple[RichContext, CancelCauseFunc]):
    """``(ctx, cancel)`` where ``cancel(cause)`` records why; also a context manager.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        >>> cancel(ValueError("bad input"))
        >>> gocontext.cause(ctx)
        ValueError('bad input')
    """

    __slots__ = ()

    @property
    def ctx(self) -> RichContext:
        """The child context."""
        return self[0]

    @property
    def cancel(self) -> CancelCauseFunc:
        """The function that cancels it, with an optional cause."""
        return self[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self[1]()

    def __repr__(self) -> str:
        return f"CancelCausePair(ctx={self[0]!r}, cancel={self[1]!r})"


# --------------------------------------------------------------------------------------------
# Roots


def background() -> RichContext:
    """Return the root context: never canceled, no deadline, no values. A singleton.

    Example:
        >>> import gocontext
        >>> ctx = gocontext.background()
        >>> ctx.err() is None and ctx.deadline() is None and ctx is gocontext.background()
        True
    """
    return _BACKGROUND


def todo() -> RichContext:
    """Return a root like ``background()`` that says "not decided yet" in its repr.

    Example:
        >>> import gocontext
        >>> gocontext.todo()
        <gocontext todo done=False>
    """
    return _TODO


# --------------------------------------------------------------------------------------------
# Derivations


def with_cancel(parent: Context) -> CancelPair:
    """Return ``(ctx, cancel)``: a child of *parent* that ends when ``cancel()`` is called or
    *parent* ends, whichever comes first.

    ``cancel()`` is idempotent, thread-safe, never blocks on waiters and returns None (a thread
    it wakes from ``done().wait()`` is let run first, for 1 ms at most). A child that is
    dropped without ``cancel()`` is simply freed: nothing in *parent* holds it.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> ctx.err()
        Canceled('context canceled')
    """
    ctx = _CancelContext()
    t = type(parent)
    # _init_node() for a parent of ours, written out: the call costs a tenth of create +
    # cancel, the row of the benchmark that every request pays.
    if t in _NODES:
        up: _CancelContext | None = parent  # type: ignore[assignment]  # t is a node type
    elif t in _OURS:
        up = parent._up  # type: ignore[attr-defined]  # t is one of ours
    else:
        _init_node(ctx, parent, "with_cancel")
        return CancelPair((ctx, ctx._cancel))
    ctx._parent = parent
    ctx._up = up
    if up is None:
        ctx._deadline = ctx._tag = None
    else:
        ctx._deadline = up._deadline
        ctx._tag = up._tag
    ctx._vals = parent._vals  # type: ignore[attr-defined]  # parent is one of ours
    ctx._state = ctx._done = ctx._end = None
    return CancelPair((ctx, ctx._cancel))


def with_cancel_cause(parent: Context) -> CancelCausePair:
    """Like ``with_cancel``, but ``cancel(cause)`` records why; ``cause(ctx)`` returns it.

    ``ctx.err()`` is still ``Canceled``, with the cause as its ``__cause__``.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        >>> cancel(ConnectionResetError("client went away"))
        >>> ctx.err(), ctx.err().__cause__
        (Canceled('context canceled'), ConnectionResetError('client went away'))
    """
    ctx = _CancelCauseContext()
    _init_node(ctx, parent, "with_cancel_cause")
    return CancelCausePair((ctx, ctx._cancel))


def with_deadline(parent: Context, deadline: float | datetime) -> CancelPair:
    """Return ``(ctx, cancel)``: a child of *parent* that ends at *deadline* at the latest.

    *deadline* is a ``time.monotonic()`` float, or a timezone-aware ``datetime`` (converted to
    the monotonic clock once, here). The child's deadline is the earlier of *parent*'s and
    *deadline*; a deadline already past gives a child that is done with ``DeadlineExceeded``.
    A naive ``datetime``, and a float more than 10 years away on the monotonic clock (plainly a
    ``time.time()`` value), are ``ValueError``. All deadlines share one timer thread.

    Example:
        >>> import gocontext, time
        >>> from datetime import datetime, timedelta, timezone
        >>> ctx, cancel = gocontext.with_deadline(gocontext.background(), time.monotonic() - 1)
        >>> ctx.err()
        DeadlineExceeded('context deadline exceeded')
        >>> at = datetime.now(timezone.utc) + timedelta(minutes=5)
        >>> ctx, cancel = gocontext.with_deadline(gocontext.background(), at)
        >>> 299 < ctx.remaining() <= 300
        True
    """
    return _with_deadline(parent, _check_deadline(deadline, "with_deadline"), None, "with_deadline")


def with_deadline_cause(
    parent: Context, deadline: float | datetime, cause: BaseException | None
) -> CancelPair:
    """Like ``with_deadline``; *cause* is recorded if the deadline (not ``cancel``) ends it.

    Example:
        >>> import gocontext, time
        >>> slow = TimeoutError("backend too slow")
        >>> ctx, cancel = gocontext.with_deadline_cause(gocontext.background(), 0.0, slow)
        >>> gocontext.cause(ctx) is slow
        True
    """
    _check_cause(cause, "with_deadline_cause")
    return _with_deadline(
        parent, _check_deadline(deadline, "with_deadline_cause"), cause, "with_deadline_cause"
    )


def with_timeout(parent: Context, timeout: float | timedelta) -> CancelPair:
    """Return a child of *parent* that becomes done *timeout* seconds from now.

    *timeout* is seconds or a ``timedelta``. A zero or negative timeout gives a child that is
    already done; NaN raises ValueError.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 0)
        >>> isinstance(ctx.err(), gocontext.DeadlineExceeded)
        True
    """
    if type(timeout) is not float or timeout != timeout:  # fast path for a plain float
        timeout = _check_timeout(timeout, "with_timeout")
    deadline = _timer.now() + timeout
    t = type(parent)
    # _with_deadline() for a live parent of ours whose deadline (if any) is later, written
    # out: the call and its general checks cost a sixth of create + cancel.
    if t in _NODES:
        up: _CancelContext | None = parent  # type: ignore[assignment]  # t is a node type
    elif t in _OURS:
        up = parent._up  # type: ignore[attr-defined]  # t is one of ours
    else:
        return _with_deadline(parent, deadline, None, "with_timeout", timeout <= 0)
    if up is None:
        tag = None
    else:
        cur = up._deadline
        if (
            (cur is not None and (type(cur) is not float or cur <= deadline))
            or up._state is not None
            or up._end is not None
        ):
            return _with_deadline(parent, deadline, None, "with_timeout", timeout <= 0)
        tag = up._tag
    if timeout <= 0 or deadline == _INF:
        return _with_deadline(parent, deadline, None, "with_timeout", timeout <= 0)
    ctx = _DeadlineContext()
    ctx._cause = ctx._entry = None  # (set before the timer can reach the node)
    ctx._parent = parent
    ctx._up = up
    ctx._tag = tag
    ctx._vals = parent._vals  # type: ignore[attr-defined]  # parent is one of ours
    ctx._state = ctx._done = ctx._end = None
    ctx._deadline = deadline
    ctx._entry = _timer.timer.schedule(deadline, ctx)
    return CancelPair((ctx, ctx._cancel))


def timeout_cancel_cause(parent: Context, timeout: float) -> CancelCausePair:
    """``with_timeout(parent, timeout)`` whose cancel takes a cause, in one node: what a server
    makes for a request, which ends at its deadline or when its client goes away (for the
    wires; not exported). *timeout* is a float, not NaN.

    Example:
        >>> import gocontext
        >>> from gocontext._context import timeout_cancel_cause
        >>> ctx, cancel = timeout_cancel_cause(gocontext.background(), 60.0)
        >>> cancel(ConnectionResetError("gone"))
        >>> gocontext.cause(ctx), 59 < ctx.remaining() <= 60
        (ConnectionResetError('gone'), True)
    """
    pair = _with_deadline(
        parent, _timer.now() + timeout, None, "with_timeout", timeout <= 0, _DeadlineCauseContext
    )
    ctx = pair[0]
    if type(ctx) is _DeadlineCauseContext:  # (not when the parent's deadline comes first)
        ctx._owner = None  # (set here, off with_timeout's path: _expire may run before it)
    return pair  # type: ignore[return-value]  # its pair's cancel takes a cause


def with_timeout_cause(
    parent: Context, timeout: float | timedelta, cause: BaseException | None
) -> CancelPair:
    """Like ``with_timeout``; *cause* is recorded if the timeout (not ``cancel``) ends it.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_timeout_cause(
        ...     gocontext.background(), 0, TimeoutError("too slow"))
        >>> gocontext.cause(ctx)
        TimeoutError('too slow')
    """
    _check_cause(cause, "with_timeout_cause")
    timeout = _check_timeout(timeout, "with_timeout_cause")
    return _with_deadline(parent, _timer.now() + timeout, cause, "with_timeout_cause", timeout <= 0)


@overload
def with_value(parent: Context, key: Key[T], value: T) -> RichContext: ...
@overload
def with_value(parent: Context, key: Hashable, value: object) -> RichContext: ...
def with_value(parent: Context, key: object, value: object) -> RichContext:
    """Return a child of *parent* whose ``value(key)`` is *value*; other keys go to *parent*.

    *key* must be hashable and not None (else TypeError); a ``Key`` object is the best key, and
    with a ``Key[T]`` a type checker rejects a *value* that is not a ``T``. The child shares
    *parent*'s cancellation and deadline. Values never appear in ``repr``.

    Example:
        >>> import gocontext
        >>> REQUEST = gocontext.Key[int]("request")
        >>> ctx = gocontext.with_value(gocontext.background(), REQUEST, 42)
        >>> ctx.value(REQUEST), ctx.value("other")
        (42, None)
    """
    t = type(parent)
    ours = t in _OURS
    if not ours and t is not _ForeignValueContext:
        _check_foreign(parent, "with_value")
    if key is None:
        raise TypeError("with_value() needs a key that is not None, got None")
    try:
        hash(key)
    except Exception as e:
        raise TypeError(f"with_value() needs a hashable key, got unhashable {describe(key)}") from (
            None if type(e) is TypeError else e
        )
    check = getattr(key, "_check_value", None)
    if check is not None:
        check(value)
    if not ours:
        # A parent that is not ours: nothing registered on it (a forgotten child costs it
        # nothing); cancellation, deadline and errors are asked of it when asked of the child.
        f = _ForeignValueContext()
        f._parent = parent
        f._key = key
        f._base = parent._base if type(parent) is _ForeignValueContext else parent
        f._vals = {key: value}
        return f
    ctx = _ValueContext()
    ctx._parent = parent
    ctx._key = key
    ctx._up = up = parent if t._node else parent._up  # type: ignore[attr-defined, assignment]  # t is ours
    pv: dict[object, object] = parent._vals  # type: ignore[attr-defined]  # parent is one of ours (t in _OURS)
    if len(pv) < _MAX_COPY:
        ctx._vals = d = {**pv, key: value, _CANCEL_KEY: up}
    else:  # stop copying: lookups that miss here continue in the parent
        ctx._vals = d = {_NEXT: parent, key: value, _CANCEL_KEY: up}
    ctx.value = functools.partial(_lookup, d) if _NEXT in d else d.get  # type: ignore[method-assign, assignment]  # a slot here (see the class)
    return ctx


def _lookup(vals: dict[object, object], key: object) -> object:
    """``value(key)`` of a ``_ValueContext`` whose *vals* continue elsewhere (``_NEXT``)."""
    v = vals.get(key, _MISSING)
    return _value_after(vals, key) if v is _MISSING else v


def without_cancel(parent: Context) -> RichContext:
    """Return a context with *parent*'s values that is never canceled and has no deadline.

    For work that must outlive the request that started it (an audit write, a cache fill).

    Example:
        >>> import gocontext
        >>> KEY = gocontext.Key[str]("k")
        >>> parent, cancel = gocontext.with_cancel(
        ...     gocontext.with_value(gocontext.background(), KEY, "v"))
        >>> cancel()
        >>> ctx = gocontext.without_cancel(parent)
        >>> ctx.err(), ctx.value(KEY)
        (None, 'v')
    """
    ours = type(parent) in _OURS
    if not ours:
        _check_foreign(parent, "without_cancel")
    ctx = _WithoutCancel()
    ctx._parent = parent
    ctx._vals = parent._vals if ours else {_NEXT: parent}  # type: ignore[attr-defined]  # parent is one of ours when ours
    return ctx


def merge(*parents: Context) -> CancelPair:
    """Return ``(ctx, cancel)``: a context that ends when ANY of *parents* ends.

    Its error and cause are those of the first parent to end; its deadline is the earliest of
    theirs; ``value(key)`` asks the parents in order. ``merge`` registers with every parent
    until it ends, so call ``cancel()`` when done with it.

    Example:
        >>> import gocontext
        >>> a, cancel_a = gocontext.with_cancel(gocontext.background())
        >>> b, cancel_b = gocontext.with_cancel(gocontext.background())
        >>> ctx, cancel = gocontext.merge(a, b)
        >>> cancel_b()
        >>> ctx.err()
        Canceled('context canceled')
    """
    if not parents:
        raise TypeError("merge() needs at least one parent Context, got none")
    for p in parents:
        check_context(p, "merge")
    ctx = _MergeContext()
    ctx._parent = parents
    ctx._up = ctx._tag = ctx._end = ctx._state = ctx._done = None
    ctx._vals = {_NEXT: _MergeValues(parents)}
    deadlines = [d for d in (_deadline_of(p, "merge") for p in parents) if d is not None]
    ctx._deadline = min(deadlines) if deadlines else None
    _link(ctx, parents, "merge")
    return CancelPair((ctx, ctx._cancel))


def after_func(ctx: Context, fn: Callable[[], object]) -> Callable[[], bool]:
    """Arrange for ``fn()`` to run once, in a worker thread, after *ctx* is done; return stop.

    No thread waits while *ctx* is live; ``fn`` never runs in ``cancel()``'s caller. ``stop()``
    returns True if it prevented ``fn`` from running (False if ``fn`` has started or was already
    stopped), and is safe to race with the cancel. A function waiting for a worker when the
    process forks runs in the parent only; a context that ends in the child runs its functions
    there.

    Example:
        >>> import gocontext, threading
        >>> ran = threading.Event()
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> stop = gocontext.after_func(ctx, ran.set)
        >>> cancel()
        >>> ran.wait(5), stop()
        (True, False)
    """
    check_context(ctx, "after_func", "ctx")
    if not callable(fn):
        raise TypeError(f"after_func() needs a callable, got {fn!r}")
    handle = _add_callback(ctx, functools.partial(_afterfunc.submit, fn), "after_func", "ctx")
    return handle.cancel


def cause(ctx: Context) -> BaseException | None:
    """Return why *ctx* ended: the recorded cause, else ``ctx.err()``; None while live.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        >>> gocontext.cause(ctx) is None
        True
        >>> cancel(KeyError("session"))
        >>> gocontext.cause(ctx)
        KeyError('session')
    """
    t = type(ctx)
    if t in _OURS:
        s = state_of(ctx._up if not t._node else ctx)  # type: ignore[attr-defined, arg-type]  # t is one of ours
    else:
        _check_foreign(ctx, "cause", "ctx")
        node = ctx.value(_CANCEL_KEY)
        s = state_of(node) if isinstance(node, _CancelContext) else None
        if s is None:
            return ctx.err()
    if s is None:
        return None
    return s[1] if s[1] is not None else s[0]()


# --------------------------------------------------------------------------------------------
# Argument checks (at the public boundary, saying what came in)


def check_context(ctx: object, fname: str, name: str = "parent") -> None:
    """Raise a TypeError naming the call *fname* and its argument *name* unless *ctx* is a
    Context: at once for ours, by the protocol (the slow check) for any other.

    *fname* is a function's name (``"with_value"``, shown as ``with_value()``) or a phrase
    (``"an httpx request"``, shown as it is).
    """
    if type(ctx) not in _OURS:
        _check_foreign(ctx, fname, name)


def _check_foreign(ctx: object, fname: str, name: str = "parent") -> None:
    if type(ctx) is _ForeignValueContext:
        return
    try:
        ok = ctx is not None and isinstance(ctx, Context)
        # A class has the protocol's methods too, unbound: `with_cancel(MyContext)`.
        cls = isinstance(ctx, type)
    except Exception:  # a hostile __getattr__ or __class__
        ok = cls = False
    if not ok or cls:
        call = f"{fname}()" if fname.replace(".", "").isidentifier() else fname
        got = f"the class {ctx.__qualname__}, not an instance" if cls else describe(ctx)  # type: ignore[attr-defined]  # a class
        raise TypeError(f"{call} needs a Context as {name}, got {got}")


_WALL_CLOCK_GAP = 10 * 365.25 * 86400.0  # a monotonic deadline further off is a time.time()


def _check_deadline(deadline: float | datetime, fname: str) -> float:
    """*deadline* on the monotonic clock: an aware datetime converted, a float checked."""
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise ValueError(
                f"{fname}() got a naive datetime as deadline ({deadline!r}): it names no "
                f"moment; give it a timezone, e.g. datetime.now(timezone.utc) + timedelta(...)"
            )
        return _timer.now() + (deadline - datetime.now(timezone.utc)).total_seconds()
    d = check_real(deadline, fname, "deadline", "a time.monotonic() float or an aware datetime")
    if _timer.now is not _monotonic:  # under a fake clock: a deadline on it
        d = FakeInstant(d)
    if d != _INF and d - _timer.now() > _WALL_CLOCK_GAP:
        raise ValueError(
            f"{fname}() got deadline={d!r}, more than 10 years away on the monotonic clock: "
            f"that looks like a time.time() value; use time.monotonic() + seconds, "
            f"with_timeout(), or a timezone-aware datetime"
        )
    return d


def _check_timeout(timeout: float | timedelta, fname: str) -> float:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return check_real(timeout, fname, "timeout", "seconds or a timedelta")


def _deadline_of(parent: Context, fname: str) -> float | None:
    """*parent*'s deadline, checked if *parent* is not ours (a float or None, else raise)."""
    d = parent.deadline()
    if d is None or type(parent) in _OURS:
        return d
    try:
        return check_real(d, "deadline", "result", "a float or None")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{fname}() needs a Context as parent: {type(parent).__name__}.deadline() "
            f"returned {describe(d)}"
        ) from e


def _check_cause(cause: object, fname: str) -> None:
    if cause is not None and not isinstance(cause, BaseException):
        raise TypeError(f"{fname}() needs an exception or None as cause, got {cause!r}")


# --------------------------------------------------------------------------------------------
# Private context classes

_EMPTY: Final[dict[object, object]] = {}
_MISSING: Final = object()
_NEXT: Final = object()  # in _vals: where a lookup that misses continues
_CANCEL_KEY: Final = object()  # value(_CANCEL_KEY) finds the nearest node of ours (Go's trick)
_MAX_COPY = 64  # with_value copies at most this many inherited values
_INF: Final = math.inf


class _Base:
    """What every context of ours shares: values through ``_vals``, and the extras.

    A context is made by calling its class with no arguments, then filled in by the function
    that derives it: no class has an ``__init__`` to run (``_Root`` aside), and the type's C
    constructor is quicker than ``object.__new__(cls)``.
    """

    __slots__ = ()
    _node: bool = False  # True for cancel tree nodes
    _up: Node | None = None
    _vals: dict[object, object]

    if TYPE_CHECKING:

        def err(self) -> ContextError | None: ...
        def deadline(self) -> float | None: ...
        def done(self) -> Done: ...
        def _label(self) -> str: ...

    def _chain(self) -> str:
        return _chain_of(self)

    @overload
    def value(self, key: Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Key[Any], /) -> object: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: object, /) -> object:
        """The value stored under *key* by the nearest ``with_value`` ancestor, else None."""
        if key is _CANCEL_KEY:  # (the dicts hold the entry of the context that made them)
            return self if self._node else self._up
        v = self._vals.get(key, _MISSING)
        if v is _MISSING:
            return _value_after(self._vals, key)
        return v

    def remaining(self) -> float | None:
        """Seconds until the deadline (may be <= 0), or None without one.

        Example:
            >>> import gocontext
            >>> ctx, cancel = gocontext.with_timeout(gocontext.background(), 60)
            >>> 59 < ctx.remaining() <= 60
            True
        """
        d = self.deadline()
        return None if d is None else _timer.until(d)  # (on the clock it was made on)

    def check(self) -> None:
        """Raise ``err()`` if the context is done, else return None. For loops in threads.

        Example:
            >>> import gocontext
            >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
            >>> cancel()
            >>> ctx.check()
            Traceback (most recent call last):
              ...
            gocontext.Canceled: context canceled
        """
        e = self.err()
        if e is not None:
            raise e

    def __repr__(self) -> str:
        return f"<gocontext {_chain_of(self)} done={self.err() is not None}>"

    def __reduce__(self) -> Any:
        # gocontext.ray registers how contexts cross into Ray tasks through copyreg, which
        # pickle consults before this method.
        raise TypeError(
            f"a gocontext context ({type(self).__name__}) cannot be pickled by itself: its "
            f"cancellation lives in this process. To pass one to Ray tasks, import gocontext.ray "
            f"(pip install 'gocontext[ray]'); across HTTP, use gocontext.http"
        )

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: object) -> Self:
        return self


class _NeverDone(Done):
    """The done signal of contexts that can never end."""

    __slots__ = ()

    def is_set(self) -> bool:
        return False

    def add_callback(self, fn: Callable[[], object], /) -> CallbackHandle:
        if not callable(fn):
            raise TypeError(f"add_callback() needs a callable, got {fn!r}")
        return _NEVER_HANDLE


class _NeverHandle:
    __slots__ = ()

    def cancel(self) -> bool:
        return True


_NEVER = _NeverDone()
_NEVER_HANDLE = _NeverHandle()


@final
class _Root(_Base):
    __slots__ = ("_name",)
    _vals = _EMPTY

    def __init__(self, name: str) -> None:
        self._name = name

    def deadline(self) -> float | None:
        return None

    def done(self) -> Done:
        return _NEVER

    def err(self) -> ContextError | None:
        return None


_BACKGROUND = _Root("background")
_TODO = _Root("todo")


@final
class _WithoutCancel(_Base):
    __slots__ = ("__weakref__", "_parent", "_vals")
    _parent: Context

    def deadline(self) -> float | None:
        return None

    def done(self) -> Done:
        return _NEVER

    def err(self) -> ContextError | None:
        return None

    def _label(self) -> str:
        return "without_cancel"


@final
class _ValueContext(_Base):
    """``with_value`` over a parent of ours. ``value`` is a slot: the bound ``get`` of ``_vals``
    (which holds ``_CANCEL_KEY`` too), or ``_lookup`` over it when a miss must continue."""

    __slots__ = ("__weakref__", "_key", "_parent", "_up", "_vals", "value")
    _parent: Context
    _key: Hashable
    _up: _CancelContext | None

    def deadline(self) -> float | None:
        up = self._up
        return None if up is None else up.deadline()

    def done(self) -> Done:
        up = self._up
        return _NEVER if up is None else up.done()

    def err(self) -> ContextError | None:
        up = self._up
        return None if up is None else up.err()

    def _label(self) -> str:
        return f"with_value(key={describe_key(self._key)})"


def as_rich(ctx: Context) -> RichContext:
    """*ctx* itself if it is one of ours, else a view of it with ``check()`` and ``remaining()``
    (its cancellation, deadline and values are *ctx*'s; it registers nothing)."""
    t = type(ctx)
    if t in _OURS or t is _ForeignValueContext:
        return cast(RichContext, ctx)
    f = _ForeignValueContext()
    f._parent = f._base = ctx
    f._key = _MISSING
    f._vals = {}
    return f


@final
class _ForeignValueContext(_Base):
    """``with_value`` over a parent that is not ours: a plain wrapper that registers nothing.

    ``_base`` is the nearest ancestor that is not such a wrapper (a user-written context);
    cancellation, deadline and errors are its own. Not in ``_OURS``: a derivation treats it as
    a foreign parent (and so links to ``_base``'s done signal only when it must).
    """

    __slots__ = ("__weakref__", "_base", "_key", "_parent", "_vals")
    _parent: Context
    _base: Context
    _key: Hashable

    def deadline(self) -> float | None:
        return self._base.deadline()

    def done(self) -> Done:
        return self._base.done()

    def err(self) -> ContextError | None:
        return self._base.err()

    @overload
    def value(self, key: Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Key[Any], /) -> object: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: object, /) -> object:
        """The value stored under *key* by the nearest ``with_value`` ancestor, else None."""
        v = self._vals.get(key, _MISSING)
        if v is _MISSING:
            return _value_after({_NEXT: self._parent}, key)
        return v

    def _label(self) -> str:
        if self._key is _MISSING:  # a view made by as_rich(): no derivation of its own
            return ""
        return f"with_value(key={describe_key(self._key)})"


class _CancelContext(Node, _Base):
    """A cancelable context (Go's ``cancelCtx``): a ``Node`` (its ``err()``, ``done()`` and
    ``_cancel()`` are the node's) with a parent, values and a deadline."""

    __slots__ = ("_deadline", "_parent", "_vals")
    _parent: Any
    # The deadline, fixed at creation and copied down from ``_up`` (so no lookup walks the
    # chain): a float, None, or for a node under a parent that is not ours, that parent (its
    # deadline is asked when asked).
    _deadline: Any

    def deadline(self) -> float | None:
        d = self._deadline
        if d is None or type(d) is float or type(d) is FakeInstant:
            return d
        return d.deadline()  # type: ignore[no-any-return]  # a parent that is not ours answers Any

    def _label(self) -> str:
        return "with_cancel"


def _cancel_cause(self: _CancelContext, cause: BaseException | None = None) -> None:
    """The ``cancel(cause)`` of the nodes that take a cause."""
    if self._state is None:
        if cause is None:
            _node_cancel(self)
        elif isinstance(cause, BaseException):
            end(self, (Canceled, cause))
        else:
            raise TypeError(f"cancel() needs an exception or None as cause, got {cause!r}")


@final
class _CancelCauseContext(_CancelContext):
    __slots__ = ()
    _cancel = _cancel_cause  # takes a cause, as its pair says

    def _label(self) -> str:
        return "with_cancel_cause"


def _timed_cancel(self: _DeadlineContext) -> None:
    """The ``cancel()`` of a node with a timer entry: ``Node._cancel``, then the entry taken if
    that ended the node without the lock (``end()`` takes it under the lock). A function of
    its own, so that the nodes with no entry do not ask, at the price of a class attribute's
    lookup, whether they have one. (Its name ends in "cancel": Python names the function in
    the TypeError a bad call to the pair's ``cancel`` gets.)"""
    try:
        _node_cancel(self)
    finally:  # (even if a Ctrl-C lands in between: the entry must go)
        entry = self._entry
        if entry is not None and self._state is not None:
            self._entry = None
            _timer.timer.cancel(entry)


class _DeadlineContext(_CancelContext):
    """A node with a deadline; ``_entry`` is its timer entry until the node ends (under the
    tree lock, or by ``_timed_cancel``), then None."""

    __slots__ = ("_cause", "_entry")
    _has_entry = True
    _cancel = _timed_cancel
    _deadline: float
    _cause: BaseException | None
    _entry: _timer.TimerEntry | None

    def _expire(self) -> None:
        if self._state is None:
            end(self, (DeadlineExceeded, self._cause))

    def _label(self) -> str:
        return f"with_deadline({_timer.until(self._deadline):+.3f}s)"


def _cancel_owned(self: _DeadlineCauseContext, cause: BaseException | None = None) -> None:
    """The ``cancel(cause)`` of a ``_DeadlineCauseContext``: ``_cancel_cause``, then its owner
    told (see there)."""
    if self._state is None:
        try:
            if cause is None:  # (_cancel_cause's commonest case, one call fewer: every
                _timed_cancel(self)  # request's context is cancelled so as it ends)
            else:
                _cancel_cause(self, cause)
        finally:  # (even if a Ctrl-C lands in between: an ended node's owner is told)
            owner = self._owner
            if owner is not None and self._state is not None:
                owner()


@final
class _DeadlineCauseContext(_DeadlineContext):
    """A node with a deadline whose cancel takes a cause (what a server makes for a request:
    its deadline, or the client going away).

    ``_owner``: None, or a function that ``scope._owning()`` set, which the node's two enders,
    its timer and its cancel, call once they have ended it (each may call it, and more than
    once: it must be idempotent). It stands in for a done callback, with no registration
    under the tree lock, for a node that nothing but these two can end (no ancestor node, no
    link: ``scope._owning`` looks).
    """

    __slots__ = ("_owner",)
    _cancel = _cancel_owned  # takes a cause, as its pair says
    _owner: Callable[[], object] | None

    def _expire(self) -> None:
        if self._state is None:
            try:
                end(self, (DeadlineExceeded, self._cause))
            finally:  # (unset while timeout_cancel_cause has not returned yet: no owner)
                owner = getattr(self, "_owner", None)
                if owner is not None:
                    owner()


def become_owner(ctx: Context, owner: Callable[[], object]) -> bool | None:
    """Make *owner* what *ctx*'s enders call once they have ended it, in place of a done
    callback (no registration under the tree lock), if nothing but its timer and its cancel
    can end it: a ``_DeadlineCauseContext`` with no ancestor node and no link, which the
    caller made for itself alone. None if something else can (register as usual); else
    whether *ctx* had ended already: then the caller acts itself (an ender may call *owner*
    too, so it must be idempotent). Setting ``ctx._owner = None`` ends the ownership.

    Example:
        >>> import gocontext
        >>> ctx, cancel = timeout_cancel_cause(gocontext.background(), 60.0)
        >>> told = []
        >>> become_owner(ctx, lambda: told.append(ctx.err()))
        False
        >>> cancel(None)
        >>> told
        [Canceled('context canceled')]
    """
    if type(ctx) is not _DeadlineCauseContext or ctx._up is not None or ctx._done is not None:
        return None
    # Set, then looked at: an end either finds the owner set (and calls it) or comes before
    # the look (which sees it).
    ctx._owner = owner
    return ctx._state is not None


@final
class _MergeContext(_CancelContext):
    __slots__ = ()
    _parent: tuple[Context, ...]
    _deadline: float | None


@final
class _MergeValues:
    """Where a merge's value lookups continue: each parent in order."""

    __slots__ = ("_parents",)

    def __init__(self, parents: tuple[Context, ...]) -> None:
        self._parents = parents

    def value(self, key: object, /) -> object:
        return _value_after({_NEXT: self}, key)


_OURS: Final = frozenset(
    {_Root, _WithoutCancel, _ValueContext, _CancelContext, _CancelCauseContext,
     _DeadlineContext, _DeadlineCauseContext, _MergeContext}
)  # fmt: skip
_NODES: Final = frozenset(
    {_CancelContext, _CancelCauseContext, _DeadlineContext, _DeadlineCauseContext, _MergeContext}
)
_LINKED: Final = frozenset(_OURS - {_Root, _MergeContext} | {_ForeignValueContext})


def describe_key(key: object) -> str:
    """A key as ``repr`` shows it: its repr (or a placeholder if that raises), never long."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _chain_of(ctx: Context) -> str:
    """How *ctx* was derived, root first (``background.with_cancel.with_value(key=k)``).

    A loop with an explicit stack, not recursion: chains may be any depth.
    """
    out: list[str] = []
    stack: list[object] = [ctx]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is str:
            out.append(item)  # type: ignore[arg-type]  # the stack holds strings and contexts
        elif t in _LINKED:
            label = item._label()  # type: ignore[attr-defined]  # a type in _LINKED
            if label:
                stack.append("." + label)
            stack.append(item._parent)  # type: ignore[attr-defined]  # a type in _LINKED
        elif t is _Root:
            out.append(item._name)  # type: ignore[attr-defined]  # a _Root
        elif t is _MergeContext:
            stack.append(")")
            for i, p in enumerate(reversed(item._parent)):  # type: ignore[attr-defined]  # a merge's parents
                if i:
                    stack.append(", ")
                stack.append(p)
            stack.append("merge(")
        else:
            out.append(t.__name__)
    return "".join(out)


def _value_after(vals: dict[object, object], key: Hashable) -> object:
    """Continue a value lookup that missed in *vals*: through ``_NEXT`` links, in a loop.

    A merge's parents are asked in order, each to the end of its own chain before the next
    (what ``_MergeValues.value`` would do, one call deeper per merge): the ones still to ask
    wait in ``rest``, last first, so a chain of merges of any depth costs no recursion.
    """
    n = vals.get(_NEXT)
    rest: list[object] | None = None
    while True:
        v: object = None
        while n is not None:
            t = type(n)
            if t is _ForeignValueContext:
                v = n._vals.get(key, _MISSING)  # type: ignore[attr-defined]  # a _ForeignValueContext
                if v is not _MISSING:
                    break
                n = n._parent  # type: ignore[attr-defined]  # a _ForeignValueContext
            elif t in _OURS:
                if key is _CANCEL_KEY:  # answered by n itself, at once
                    return n.value(key)  # type: ignore[attr-defined]  # one of ours
                vals = n._vals  # type: ignore[attr-defined]  # one of ours
                v = vals.get(key, _MISSING)
                if v is not _MISSING:
                    break
                n = vals.get(_NEXT)
            elif t is _MergeValues:
                parents = n._parents  # type: ignore[attr-defined]  # a _MergeValues
                if len(parents) > 1:
                    if rest is None:
                        rest = []
                    rest.extend(reversed(parents[1:]))
                n = parents[0]
            else:  # a user-written context
                v = n.value(key)  # type: ignore[attr-defined]  # a context
                break
        else:
            v = None
        if v is not None:
            return v
        if not rest:  # (a value stored as None is None: only a merge asks on after it)
            return None
        n = rest.pop()


# --------------------------------------------------------------------------------------------
# Creating nodes


def _init_node(ctx: _CancelContext, parent: Context, fname: str) -> None:
    """Fill in a new node under *parent*; a parent that is not ours is linked to at once.

    The tag (see ``_tree``) is the parent node's: what is true of the parent's chain is true
    of a new child's, until the child ends itself."""
    ctx._parent = parent
    ctx._state = ctx._done = ctx._end = None
    t = type(parent)
    if t in _OURS:
        up: _CancelContext | None = parent if t in _NODES else parent._up  # type: ignore[attr-defined, assignment]  # (t is ours)
        ctx._up = up
        if up is None:
            ctx._deadline = ctx._tag = None
        else:
            ctx._deadline = up._deadline
            ctx._tag = up._tag
        ctx._vals = parent._vals  # type: ignore[attr-defined]  # parent is one of ours (t in _OURS)
    else:
        _check_foreign(parent, fname)
        ctx._up = ctx._tag = None
        ctx._deadline = parent  # asked when asked: deadline() of a node under a foreign parent
        ctx._vals = {_NEXT: parent}
        _link(ctx, (parent,), fname)


def _with_deadline(
    parent: Context,
    deadline: float,
    cause: BaseException | None,
    how: str,
    expired: bool | None = None,
    kind: type[_DeadlineContext] = _DeadlineContext,
) -> CancelPair:
    t = type(parent)
    ours = t in _NODES or t in _OURS
    if ours:
        # parent.deadline(), quicker: every node carries its deadline (O(1) at any depth).
        up: _CancelContext | None = parent if t in _NODES else parent._up  # type: ignore[attr-defined, assignment]  # t is one of ours
        cur = None if up is None else up._deadline
        if cur is not None and type(cur) is not float and type(cur) is not FakeInstant:
            cur = _deadline_of(cur, how)  # under a parent that is not ours
    else:
        _check_foreign(parent, how)
        cur = _deadline_of(parent, how)
    if (
        cur is not None
        and cur <= deadline
        # (on one clock: under a fake clock, a real deadline made before it is not compared)
        and (type(deadline) is float or type(cur) is not float)
    ):  # the parent ends first anyway (Go does the same)
        if kind is _DeadlineContext:
            return with_cancel(parent)
        return with_cancel_cause(parent)  # type: ignore[return-value]  # a cause-taking pair
    ctx = kind()
    ctx._cause = cause
    ctx._entry = None
    if ours:  # _init_node(), written out as in with_cancel (a tenth of create + cancel)
        ctx._parent = parent
        ctx._up = up
        ctx._tag = None if up is None else up._tag
        ctx._vals = parent._vals  # type: ignore[attr-defined]  # parent is one of ours
        ctx._state = ctx._done = ctx._end = None
    else:
        _init_node(ctx, parent, how)
    ctx._deadline = deadline
    # Born ended if the nearest node is, or is known to be (an ancestor further up that ended
    # unknown to it: looking would cost a walk per call, so the child then holds a timer entry
    # like any live child until it is cancelled or expires, adopting that end).
    near = ctx._up  # (ctx._state is set here only by a foreign parent's link)
    if (near is not None and (near._state is not None or near._end is not None)) or (
        not ours and ctx._state is not None
    ):
        return CancelPair((ctx, ctx._cancel))  # no timer needed
    if expired or (expired is None and deadline <= _timer.now()):
        end(ctx, (DeadlineExceeded, cause))
    elif deadline != _INF:  # an infinite deadline never fires: no timer
        ctx._entry = _timer.timer.schedule(deadline, ctx)
    return CancelPair((ctx, ctx._cancel))


def _link(ctx: _CancelContext, parents: tuple[Context, ...], fname: str) -> None:
    """Register *ctx* on each parent's done signal (strongly), ending it with the first.

    If a parent fails (its ``done()`` raises, or is not a ``Done``), what was registered on the
    others is released before the error goes out: a failed call leaves nothing behind.
    """
    handles: list[CallbackHandle] = []
    ends = _link_ends
    outer = ends.queue
    try:
        # A parent that has ended runs the callback at once: it must end ctx before this
        # returns, even here inside a link's end (a node's callback deriving from it).
        ends.queue = None
        for p in parents:
            handles.append(_add_callback(p, functools.partial(_parent_done, ctx, p), fname))
            if ctx._state is not None:
                break
        locking = _tree._locking  # (the tree lock, or Busy at once: see _tree.end)
        while True:
            try:
                with locking:
                    d = ext_locked(ctx)  # (before looking at _state: see _tree._watch_locked)
                    if ctx._state is None:
                        d._links = tuple(handles)
                        handles = []
                break
            except Busy:
                locking = _tree._wait_unless_reentrant(f"{fname}()")
        if _tree._deferred:
            _tree._run_deferred()
    finally:
        ends.queue = outer
        # It ended while being linked, or linking failed: release what it registered.
        _tree.raise_first(_tree.call_all([h.cancel for h in handles], "releasing a registration"))


def _add_callback(
    ctx: Context, fn: Callable[[], object], fname: str, name: str = "parent"
) -> CallbackHandle:
    """``ctx.done().add_callback(fn)``, checking what a context that is not ours gives back."""
    if type(ctx) in _OURS:
        return ctx.done().add_callback(fn)
    done = ctx.done()
    add = getattr(done, "add_callback", None)
    if not callable(add):
        raise TypeError(
            f"{fname}() needs a Context as {name}: {type(ctx).__name__}.done() returned "
            f"{describe(done)}, not a Done"
        )
    handle = add(fn)
    if not callable(getattr(handle, "cancel", None)):
        raise TypeError(
            f"{fname}() needs a Context as {name}: {type(ctx).__name__}.done().add_callback() "
            f"returned {describe(handle)}, not a handle with cancel()"
        )
    return handle  # type: ignore[no-any-return]  # a user-written Done's handle, checked above


class _LinkEnds(threading.local):
    """Per thread: the ends handed down through links that wait for the outermost one."""

    # None, or the calls that end linked nodes, appended while the outermost _parent_done of
    # this thread runs the ones before them (it sets and clears the field).
    queue: list[Callable[[], object]] | None = None


_link_ends: Final = _LinkEnds()


def _parent_done(ctx: _CancelContext, parent: Context) -> None:
    """*parent*, which *ctx* is linked to, has ended: end *ctx* too (the link's callback).

    Called inside another link's end (its node's callbacks run in it), it only queues the
    end: the outermost call in this thread runs the queue, so a chain of links is ended in a
    loop, not in one nested end per link. The queue runs as a node's callbacks do
    (``_tree.call_all``): an exception is logged, an interrupt does not stop the rest and
    goes out once the queue is empty.
    """
    ends = _link_ends
    queue = ends.queue
    if queue is not None:
        queue.append(functools.partial(_end_linked, ctx, parent))
        return
    queue = [functools.partial(_end_linked, ctx, parent)]
    interrupt: BaseException | None = None
    try:
        while True:
            # One batch at a time, each in a list of its own: what the batch's ends queue
            # (or a signal handler or finalizer running meanwhile) goes to the next one.
            ends.queue = []
            later = _tree.call_all(queue, "a done callback")
            if interrupt is None:
                interrupt = later
            elif later is not None:
                _log.error("gocontext: a done callback raised", exc_info=later)
            queue = ends.queue
            if not queue:  # (falls through to the store: nothing can queue in between)
                ends.queue = None
                break
    finally:
        ends.queue = None
    _tree.raise_first(interrupt)


def _end_linked(ctx: _CancelContext, parent: Context) -> None:
    if type(parent) in _OURS:
        s = state_of(parent if type(parent)._node else parent._up)  # type: ignore[attr-defined, arg-type]  # parent is one of ours
    else:
        e = parent.err()
        s = None if e is None else (type(e), e.__cause__)
    end(ctx, s or CANCELED)


def watcher_count(ctx: Context) -> int:
    """How many callbacks and watched children are registered on *ctx* (for leak tests)."""
    node = ctx if isinstance(ctx, Node) else getattr(ctx, "_up", None)
    return 0 if node is None else _tree.watcher_count(node)
