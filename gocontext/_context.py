"""The cancel tree: the Context protocol, the roots, the derivations, and the nodes behind them.

Read in this order: the protocol and keys, the roots, the public derivations, then the private
node classes and the tree operations under ``_lock``.

How cancellation travels. A cancelable context (a *node*) knows its nearest cancelable ancestor
(``_up``) but its parent does not know it: a child nobody watches costs its parent nothing and
is freed as soon as the caller drops it (Go keeps every child in its parent until one of them is
canceled). Such a child learns of an ancestor's end when it is asked: ``err()`` walks ``_up``.
Once something watches a node (a callback, a waiter, a watched descendant), the node registers
itself with ``_up``, and ``_up`` with its own ``_up``, so a cancel pushes to every watched
descendant at once and runs their callbacks. Registrations are strong: whatever waits on a
child keeps it alive as long as it waits. A watcher that goes away unregisters, and so does the
chain above it once nothing else watches it.

Locking. One process-wide lock, ``_lock``, guards every node's ``_state`` and the watchers
and links in its ``_NodeDone``; ``_state`` is also read without it (a reference read, and it changes
once, from None to a fixed tuple). Callbacks never run under ``_lock``, and no other lock is
taken while holding it (the timer's lock is taken outside it), so there is no lock order.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
from collections.abc import Callable, Hashable, Iterable
from datetime import timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    NamedTuple,
    Protocol,
    TypeVar,
    final,
    overload,
    runtime_checkable,
)

from . import _timer, _worker
from ._done import CallbackHandle, Done
from ._errors import Canceled, ContextError, DeadlineExceeded

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
    ``str | None``. Keys compare by identity; the name is for ``repr`` only.

    Example:
        >>> import gocontext
        >>> USER = gocontext.Key[str]("user")
        >>> ctx = gocontext.with_value(gocontext.background(), USER, "ada")
        >>> ctx.value(USER)
        'ada'
    """

    __slots__ = ("__orig_class__", "name")
    __module__ = "gocontext"

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
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: Hashable, /) -> object:
        """The value stored under *key* by the nearest ``with_value`` ancestor, else None."""
        ...


class CancelFunc(Protocol):
    """Cancels its context: idempotent, thread-safe, never blocks, returns None."""

    def __call__(self) -> None: ...


class CancelCauseFunc(Protocol):
    """Cancels its context and records *cause* (if it is the first to end it)."""

    def __call__(self, cause: BaseException | None = None) -> None: ...


class CancelPair(NamedTuple):
    """``(ctx, cancel)``: unpack it, or use it as ``with ... as (ctx, cancel):``.

    Leaving the ``with`` block calls ``cancel()``, like Go's ``defer cancel()``.

    Example:
        >>> import gocontext
        >>> with gocontext.with_cancel(gocontext.background()) as (ctx, cancel):
        ...     ctx.err() is None
        True
        >>> ctx.err()
        Canceled('context canceled')
    """

    ctx: Context
    cancel: CancelFunc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self[1]()


class CancelCausePair(NamedTuple):
    """``(ctx, cancel)`` where ``cancel(cause)`` records why; also a context manager.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel_cause(gocontext.background())
        >>> cancel(ValueError("bad input"))
        >>> gocontext.cause(ctx)
        ValueError('bad input')
    """

    ctx: Context
    cancel: CancelCauseFunc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self[1]()


CancelPair.__module__ = CancelCausePair.__module__ = "gocontext"
_new_tuple = tuple.__new__

# A done state: (error class, custom cause or None). Set once, shared by every node it reaches.
_State = tuple[type[ContextError], "BaseException | None"]
_CANCELED: Final[_State] = (Canceled, None)

# --------------------------------------------------------------------------------------------
# Roots


def background() -> Context:
    """Return the root context: never canceled, no deadline, no values. A singleton.

    Example:
        >>> import gocontext
        >>> ctx = gocontext.background()
        >>> ctx.err() is None and ctx.deadline() is None and ctx is gocontext.background()
        True
    """
    return _BACKGROUND


def todo() -> Context:
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

    ``cancel()`` is idempotent, thread-safe, never blocks on waiters and returns None. A child
    that is dropped without ``cancel()`` is simply freed: nothing in *parent* holds it.

    Example:
        >>> import gocontext
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> cancel()
        >>> ctx.err()
        Canceled('context canceled')
    """
    ctx = _object_new(_CancelContext)
    t = type(parent)
    if t in _OURS:  # the hot path, inlined
        ctx._parent = parent
        ctx._up = parent if t._node else parent._up  # type: ignore[attr-defined, assignment]
        ctx._vals = parent._vals  # type: ignore[attr-defined]
        ctx._state = None
        ctx._done = None
    else:
        _init_node(ctx, parent, "with_cancel")
    return _new_tuple(CancelPair, (ctx, ctx._cancel))


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
    ctx = _object_new(_CancelCauseContext)
    _init_node(ctx, parent, "with_cancel_cause")
    return _new_tuple(CancelCausePair, (ctx, ctx._cancel))


def with_deadline(parent: Context, deadline: float) -> CancelPair:
    """Return ``(ctx, cancel)``: a child of *parent* that ends at *deadline* at the latest.

    *deadline* is on the ``time.monotonic()`` clock. The child's deadline is the earlier of
    *parent*'s and *deadline*; a deadline already past gives a child that is done with
    ``DeadlineExceeded``. All deadlines share one timer thread.

    Example:
        >>> import gocontext, time
        >>> ctx, cancel = gocontext.with_deadline(gocontext.background(), time.monotonic() - 1)
        >>> ctx.err()
        DeadlineExceeded('context deadline exceeded')
    """
    return _with_deadline(parent, _check_deadline(deadline, "with_deadline"), None, "with_deadline")


def with_deadline_cause(
    parent: Context, deadline: float, cause: BaseException | None
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
    return _with_deadline(parent, _timer.now() + timeout, None, "with_timeout", timeout <= 0)


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
    return _with_deadline(
        parent,
        _timer.now() + _check_timeout(timeout, "with_timeout_cause"),
        cause,
        "with_timeout_cause",
    )


def with_value(parent: Context, key: Hashable, value: object) -> Context:
    """Return a child of *parent* whose ``value(key)`` is *value*; other keys go to *parent*.

    *key* must be hashable and not None (else TypeError); a ``Key`` object is the best key. The
    child shares *parent*'s cancellation and deadline. Values never appear in ``repr``.

    Example:
        >>> import gocontext
        >>> REQUEST = gocontext.Key[int]("request")
        >>> ctx = gocontext.with_value(gocontext.background(), REQUEST, 42)
        >>> ctx.value(REQUEST), ctx.value("other")
        (42, None)
    """
    ours = type(parent) in _OURS
    if not ours:
        _check_foreign(parent, "with_value")
    if key is None:
        raise TypeError("with_value() needs a key that is not None, got None")
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"with_value() needs a hashable key, got unhashable {type(key).__name__}: {key!r}"
        ) from None
    check = getattr(key, "_check_value", None)
    if check is not None:
        check(value)
    ctx = _object_new(_ValueContext)
    ctx._parent = parent
    ctx._key = key
    if ours:
        ctx._up = parent if type(parent)._node else parent._up  # type: ignore[attr-defined, assignment]
        pv: dict[object, object] = parent._vals  # type: ignore[attr-defined]
        if len(pv) < _MAX_COPY:
            ctx._vals = {**pv, key: value}
        else:  # stop copying: lookups that miss here continue in the parent
            ctx._vals = {_NEXT: parent, key: value}
    else:  # a node of ours mirrors the foreign parent's cancellation
        ctx._up = up = _object_new(_CancelContext)
        _init_node(up, parent, "with_value")
        ctx._vals = {_NEXT: parent, key: value}
    return ctx


def without_cancel(parent: Context) -> Context:
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
    ctx = _object_new(_WithoutCancel)
    ctx._parent = parent
    ctx._vals = parent._vals if ours else {_NEXT: parent}  # type: ignore[attr-defined]
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
        if type(p) not in _OURS:
            _check_foreign(p, "merge")
    ctx = _object_new(_MergeContext)
    ctx._parent = parents
    ctx._up = None
    ctx._state = None
    ctx._done = None
    ctx._vals = {_NEXT: _MergeValues(parents)}
    deadlines = [d for d in (p.deadline() for p in parents) if d is not None]
    ctx._deadline = min(deadlines) if deadlines else None
    _link(ctx, parents)
    return _new_tuple(CancelPair, (ctx, ctx._cancel))


def after_func(ctx: Context, fn: Callable[[], object]) -> Callable[[], bool]:
    """Arrange for ``fn()`` to run once, in a worker thread, after *ctx* is done; return stop.

    No thread waits while *ctx* is live; ``fn`` never runs in ``cancel()``'s caller. ``stop()``
    returns True if it prevented ``fn`` from running (False if ``fn`` has started or was already
    stopped), and is safe to race with the cancel.

    Example:
        >>> import gocontext, threading
        >>> ran = threading.Event()
        >>> ctx, cancel = gocontext.with_cancel(gocontext.background())
        >>> stop = gocontext.after_func(ctx, ran.set)
        >>> cancel()
        >>> ran.wait(5), stop()
        (True, False)
    """
    if type(ctx) not in _OURS:
        _check_foreign(ctx, "after_func", "ctx")
    if not callable(fn):
        raise TypeError(f"after_func() needs a callable, got {fn!r}")
    handle = ctx.done().add_callback(functools.partial(_worker.submit, fn))
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
        s = _state_of(ctx._up if not t._node else ctx)  # type: ignore[attr-defined, arg-type]
    else:
        _check_foreign(ctx, "cause", "ctx")
        node = ctx.value(_CANCEL_KEY)
        s = _state_of(node) if isinstance(node, _CancelContext) else None
        if s is None:
            return ctx.err()
    if s is None:
        return None
    return s[1] if s[1] is not None else s[0]()


# --------------------------------------------------------------------------------------------
# Argument checks (at the public boundary, saying what came in)


def _check_foreign(parent: object, fname: str, name: str = "parent") -> None:
    if parent is None:
        raise TypeError(f"{fname}() needs a Context as {name}, got None")
    if not isinstance(parent, Context):
        raise TypeError(
            f"{fname}() needs a Context as {name}, got {type(parent).__name__}: {parent!r}"
        )


def _check_deadline(deadline: float, fname: str) -> float:
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError(f"{fname}() needs a time.monotonic() float as deadline, got {deadline!r}")
    if math.isnan(deadline):
        raise ValueError(f"{fname}() got a NaN deadline")
    return float(deadline)


def _check_timeout(timeout: float | timedelta, fname: str) -> float:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{fname}() needs seconds or a timedelta as timeout, got {timeout!r}")
    if math.isnan(timeout):
        raise ValueError(f"{fname}() got a NaN timeout")
    return float(timeout)


def _check_cause(cause: object, fname: str) -> None:
    if cause is not None and not isinstance(cause, BaseException):
        raise TypeError(f"{fname}() needs an exception or None as cause, got {cause!r}")


# --------------------------------------------------------------------------------------------
# Private context classes

_EMPTY: Final[dict[object, object]] = {}
_MISSING: Final = object()
_NEXT: Final = object()  # in _vals: where a lookup that misses continues
_CANCEL_KEY: Final = object()  # value(_CANCEL_KEY) finds the nearest node of ours (Go's trick)
_CHILD: Final = object()  # in a watchers dict: the key is a watched child node, not a handle
_MAX_COPY = 32  # with_value copies at most this many inherited values
_INF: Final = math.inf

_lock = threading.Lock()
_object_new = object.__new__


class _Base:
    """What every context of ours shares: values through ``_vals``, and the extras."""

    __slots__ = ()
    _node: bool = False  # True for cancel tree nodes
    _up: _CancelContext | None = None
    _vals: dict[object, object]

    if TYPE_CHECKING:

        def err(self) -> ContextError | None: ...
        def deadline(self) -> float | None: ...
        def done(self) -> Done: ...
        def _label(self) -> str: ...
        def _parent_repr(self) -> str: ...

    @overload
    def value(self, key: Key[T], /) -> T | None: ...
    @overload
    def value(self, key: Hashable, /) -> object: ...
    def value(self, key: Hashable, /) -> object:
        """The value stored under *key* by the nearest ``with_value`` ancestor, else None."""
        v = self._vals.get(key, _MISSING)
        if v is _MISSING:
            if key is _CANCEL_KEY:
                return self if self._node else self._up
            n = self._vals.get(_NEXT)
            return None if n is None else n.value(key)  # type: ignore[attr-defined]
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
        return None if d is None else d - _timer.now()

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
        return f"<gocontext {self._chain()} done={self.err() is not None}>"

    def _chain(self) -> str:
        return f"{self._parent_repr()}.{self._label()}"

    def __reduce__(self) -> Any:
        from ._propagation import reduce_context

        return reduce_context(self)

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

    def _chain(self) -> str:
        return self._name


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

    def _parent_repr(self) -> str:
        return _chain_of(self._parent)


@final
class _ValueContext(_Base):
    __slots__ = ("__weakref__", "_key", "_parent", "_up", "_vals")
    _parent: Context
    _key: Hashable

    def deadline(self) -> float | None:
        return self._parent.deadline()

    def done(self) -> Done:
        up = self._up
        return _NEVER if up is None else up.done()

    def err(self) -> ContextError | None:
        n = self._up
        while n is not None:
            s = n._state
            if s is not None:
                return _error(s)
            n = n._up
        return None

    def _label(self) -> str:
        return f"with_value(key={self._key!r})"

    def _parent_repr(self) -> str:
        return _chain_of(self._parent)


class _CancelContext(_Base):
    """A node of the cancel tree (Go's ``cancelCtx``).

    - ``_up``: the nearest ancestor node of ours, or None (a root, ``without_cancel``, or a
      parent that is not ours: then ``_done._links`` holds our callback on that parent).
    - ``_state``: None while live, then the ``_State`` that ended it; set once under ``_lock``,
      read without it.
    - ``_done``: None until something asks for ``done()`` or registers on the node; then the
      ``_NodeDone`` that also holds the watchers and links (see there). Fixed once set.
    """

    __slots__ = ("__weakref__", "_done", "_parent", "_state", "_up", "_vals")
    _node = True
    _has_entry = False  # True for nodes with a timer entry in ``_entry``
    _has_deadline = False  # True for nodes whose deadline() is their own
    _parent: Any
    _state: _State | None
    _done: _NodeDone | None

    def deadline(self) -> float | None:
        return self._parent.deadline()  # type: ignore[no-any-return]

    def done(self) -> Done:
        d = self._done
        if d is None:
            with _lock:
                d = _ext_locked(self)
        return d

    def err(self) -> ContextError | None:
        # The hot path: written out for speed, as few loads as possible while live.
        s = self._state
        if s is None:
            n = self._up
            if n is None:
                return None
            while True:
                s = n._state
                if s is not None:
                    break
                n = n._up
                if n is None:
                    return None
        e = s[0]()
        if s[1] is not None:
            e.__cause__ = s[1]
        return e

    def _cancel(self) -> None:
        if self._state is not None:
            return
        # The hot path of _end(), written out: nothing registered on the node, no timer.
        _lock.acquire()
        try:
            if self._done is None and not self._has_entry:
                if self._state is None:
                    up = self._up
                    while up is not None:
                        if up._state is not None:  # an ancestor ended first: its end is ours
                            self._state = up._state
                            return
                        up = up._up
                    self._state = _CANCELED
                return
        finally:
            _lock.release()
        _end(self, _CANCELED)

    def _label(self) -> str:
        return "with_cancel"

    def _parent_repr(self) -> str:
        return _chain_of(self._parent)


@final
class _CancelCauseContext(_CancelContext):
    __slots__ = ()

    def _cancel(self, cause: BaseException | None = None) -> None:
        if self._state is None:
            if cause is not None and not isinstance(cause, BaseException):
                raise TypeError(f"cancel() needs an exception or None as cause, got {cause!r}")
            _end(self, _CANCELED if cause is None else (Canceled, cause))

    def _label(self) -> str:
        return "with_cancel_cause"


@final
class _DeadlineContext(_CancelContext):
    """A node with a deadline; ``_entry`` is its timer entry until the node ends (under
    ``_lock``), then None."""

    __slots__ = ("_cause", "_deadline", "_entry")
    _has_entry = True
    _has_deadline = True
    _deadline: float
    _cause: BaseException | None
    _entry: _timer.TimerEntry | None

    def deadline(self) -> float | None:
        return self._deadline

    def _cancel(self) -> None:
        if self._state is not None:
            return
        # The hot path of _end(), written out: nothing registered on the node.
        entry = None
        _lock.acquire()
        try:
            if self._done is None and self._state is None:
                entry = self._entry
                self._entry = None
                up = self._up
                while up is not None:
                    if up._state is not None:  # an ancestor ended first: its end is ours
                        self._state = up._state
                        break
                    up = up._up
                else:
                    self._state = _CANCELED
        finally:
            _lock.release()
        if entry is not None:
            _timer.cancel_entry(entry)
        elif self._state is None:
            _end(self, _CANCELED)

    def _expire(self) -> None:
        if self._state is None:
            _end(self, (DeadlineExceeded, self._cause))

    def _label(self) -> str:
        return f"with_deadline({self._deadline - _timer.now():+.3f}s)"


@final
class _MergeContext(_CancelContext):
    __slots__ = ("_deadline",)
    _has_deadline = True
    _parent: tuple[Context, ...]
    _deadline: float | None

    def deadline(self) -> float | None:
        return self._deadline

    def _chain(self) -> str:
        return "merge(" + ", ".join(_chain_of(p) for p in self._parent) + ")"


@final
class _MergeValues:
    """Where a merge's value lookups continue: each parent in order."""

    __slots__ = ("_parents",)

    def __init__(self, parents: tuple[Context, ...]) -> None:
        self._parents = parents

    def value(self, key: Hashable, /) -> object:
        for p in self._parents:
            v = p.value(key)
            if v is not None:
                return v
        return None


_OURS: Final = frozenset(
    {_Root, _WithoutCancel, _ValueContext, _CancelContext, _CancelCauseContext,
     _DeadlineContext, _MergeContext}
)  # fmt: skip


def _chain_of(ctx: Context) -> str:
    if type(ctx) in _OURS:
        return ctx._chain()  # type: ignore[attr-defined, no-any-return]
    return f"{type(ctx).__name__}"


def _error(s: _State) -> ContextError:
    e = s[0]()
    if s[1] is not None:
        e.__cause__ = s[1]
    return e


def _state_of(node: _CancelContext | None) -> _State | None:
    """The state that ended *node* or one of its ancestors, or None while all are live."""
    while node is not None:
        s = node._state
        if s is not None:
            return s
        node = node._up
    return None


# --------------------------------------------------------------------------------------------
# Creating nodes


def _init_node(ctx: _CancelContext, parent: Context, fname: str) -> None:
    """Fill in a new node under *parent*; a parent that is not ours is linked to at once."""
    ctx._parent = parent
    ctx._state = None
    ctx._done = None
    t = type(parent)
    if t in _OURS:
        ctx._up = parent if t._node else parent._up  # type: ignore[attr-defined, assignment]
        ctx._vals = parent._vals  # type: ignore[attr-defined]
    else:
        _check_foreign(parent, fname)
        ctx._up = None
        ctx._vals = {_NEXT: parent}
        _link(ctx, (parent,))


def _with_deadline(
    parent: Context,
    deadline: float,
    cause: BaseException | None,
    how: str,
    expired: bool | None = None,
) -> CancelPair:
    t = type(parent)
    ours = t in _OURS
    if ours:
        up: _CancelContext | None = parent if t._node else parent._up  # type: ignore[attr-defined, assignment]
        # parent.deadline(), quicker: the nearest deadline up the chain (a chain of plain
        # cancel nodes of ours ends at a root, at without_cancel, or at a foreign parent).
        n = up
        while n is not None and not n._has_deadline and type(n._parent) in _OURS:
            n = n._up
        cur = None if n is None else n.deadline()
    else:
        _check_foreign(parent, how)
        cur = parent.deadline()
    if cur is not None and cur <= deadline:  # the parent ends first anyway (Go does the same)
        return with_cancel(parent)
    ctx = _object_new(_DeadlineContext)
    ctx._deadline = deadline
    ctx._cause = cause
    ctx._entry = None
    if ours:  # the hot path, inlined
        ctx._parent = parent
        ctx._up = up
        ctx._vals = parent._vals  # type: ignore[attr-defined]
        ctx._state = None
        ctx._done = None
        if up is not None and (
            up._state is not None or (up._up is not None and _state_of(up._up) is not None)
        ):
            return _new_tuple(CancelPair, (ctx, ctx._cancel))  # born ended: no timer needed
    else:
        _init_node(ctx, parent, how)
        if ctx._state is not None:
            return _new_tuple(CancelPair, (ctx, ctx._cancel))
    if expired or (expired is None and deadline <= _timer.now()):
        _end(ctx, (DeadlineExceeded, cause))
    elif deadline != _INF:  # an infinite deadline never fires: no timer
        entry = ctx._entry = [deadline, 0, ctx]
        _timer.schedule(entry)
    return _new_tuple(CancelPair, (ctx, ctx._cancel))


def _link(ctx: _CancelContext, parents: tuple[Context, ...]) -> None:
    """Register *ctx* on each parent's done signal (strongly), ending it with the first."""
    handles = []
    for p in parents:
        handles.append(p.done().add_callback(functools.partial(_parent_done, ctx, p)))
        if ctx._state is not None:
            break
    with _lock:
        if ctx._state is None:
            _ext_locked(ctx)._links = tuple(handles)
            return
    for h in handles:  # it ended while being linked: release what it registered
        h.cancel()


def _parent_done(ctx: _CancelContext, parent: Context) -> None:
    if type(parent) in _OURS:
        s = _state_of(parent if type(parent)._node else parent._up)  # type: ignore[attr-defined, arg-type]
    else:
        e = parent.err()
        s = None if e is None else (type(e), e.__cause__)
    _end(ctx, s or _CANCELED)


# --------------------------------------------------------------------------------------------
# Tree operations


def _end(node: _CancelContext, state: _State) -> None:
    """End *node* with *state* unless it (or an ancestor) already ended: the first wins."""
    entry = fire = release = None
    _lock.acquire()
    try:
        if node._state is None:
            up = node._up
            while up is not None:
                s = up._state
                if s is not None:  # an ancestor ended first: that is the node's end too
                    state = s
                    break
                up = up._up
            node._state = state
            if node._has_entry:
                entry = node._entry  # type: ignore[attr-defined]
                node._entry = None  # type: ignore[attr-defined]
            if node._done is not None:  # registrations to hand over and release
                if up is None and node._up is not None:
                    _unwatch_locked(node._up, node)
                fire, release = _propagate_locked(node, state)
    finally:
        _lock.release()
    if entry is not None:
        _timer.cancel_entry(entry)
    if release:
        _release(release)
    if fire:
        _run_callbacks(fire)


def _propagate_locked(
    node: _CancelContext, state: _State
) -> tuple[list[Callable[[], object]], list[Any]]:
    """Hand the end of *node* (already set) to every watched descendant; return the callbacks
    to run and the timer entries and links to release."""
    fire: list[Callable[[], object]] = []
    release: list[Any] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n._has_entry:
            entry = n._entry  # type: ignore[attr-defined]
            if entry is not None:
                release.append(entry)
                n._entry = None  # type: ignore[attr-defined]
        d = n._done
        if d is None:
            continue
        if d._links is not None:
            release.append(d._links)
            d._links = None
        w = d._watchers
        if not w:
            continue
        d._watchers = None
        for k, v in w.items():
            if v is _CHILD:
                if k._state is None:  # type: ignore[attr-defined]
                    k._state = state  # type: ignore[attr-defined]
                    stack.append(k)  # type: ignore[arg-type]
            else:
                fire.append(v)  # type: ignore[arg-type]
    return fire, release


def _ext_locked(node: _CancelContext) -> _NodeDone:
    d = node._done
    if d is None:
        d = node._done = _NodeDone(node)
    return d


def _watch_locked(node: _CancelContext, key: object, value: object) -> _State | None:
    """Register *key* on *node*; return the end state instead if *node* is already done.

    Registers *node* with its ancestors as far up as needed for a cancel to reach it.
    """
    s = node._state
    if s is not None:
        return s
    d = _ext_locked(node)
    if d._watchers:
        d._watchers[key] = value
        return None
    # The first watcher of this node: find how far up the chain is unwatched (and live).
    path = [node]
    n = node._up
    while n is not None:
        s = n._state
        if s is not None:
            for p in path:  # the chain ended above: every node on it is done with that end
                p._state = s
            return s
        nd = n._done
        if nd is not None and nd._watchers:
            break
        path.append(n)
        n = n._up
    d._watchers = {key: value}
    for child, parent in itertools.pairwise(path):
        _ext_locked(parent)._watchers = {child: _CHILD}
    if n is not None:
        n._done._watchers[path[-1]] = _CHILD  # type: ignore[union-attr, index]
    return None


def _unwatch_locked(node: _CancelContext, key: object) -> bool:
    """Remove *key* from *node*; unregister the chain above as it runs out of watchers."""
    d = node._done
    w = None if d is None else d._watchers
    if not w or key not in w:
        return False
    del w[key]
    while not w:
        up = node._up
        if up is None:
            break
        d = up._done
        w = None if d is None else d._watchers
        if not w or node not in w:
            break
        del w[node]
        node = up
    return True


def _release(items: Iterable[Any]) -> None:
    """Release what ended nodes held: timer entries (lists) and handle tuples."""
    for item in items:
        if type(item) is list:
            _timer.cancel_entry(item)
        else:
            for h in item:
                h.cancel()


def _run_callbacks(fns: Iterable[Callable[[], object]]) -> None:
    for fn in fns:
        try:
            fn()
        except Exception:
            _log.exception("gocontext: a done callback raised")


# --------------------------------------------------------------------------------------------
# Done for nodes


@final
class _Handle:
    __slots__ = ("_node",)

    def __init__(self, node: _CancelContext) -> None:
        self._node = node

    def cancel(self) -> bool:
        with _lock:
            return _unwatch_locked(self._node, self)


class _SpentHandle:
    __slots__ = ()

    def cancel(self) -> bool:
        return False


_SPENT = _SpentHandle()


@final
class _NodeDone(Done):
    """The done signal of a node, and the node's registrations.

    Fields (guarded by ``_lock``):
    - ``_watchers``: None or a dict of what is registered on the node: callback handles (to
      their functions) and watched child nodes (to ``_CHILD``). Non-empty only while the node
      is live, and then the node is itself registered with its ``_up`` (if it has one).
      Emptied for good when the node ends.
    - ``_links``: None or a tuple of handles the node holds on parents that are not in its
      ``_up`` chain (a merge's parents, a parent that is not ours); released when it ends.
    """

    __slots__ = ("_links", "_node", "_watchers")

    def __init__(self, node: _CancelContext) -> None:
        self._node = node
        self._watchers: dict[object, object] | None = None
        self._links: tuple[CallbackHandle, ...] | None = None

    def is_set(self) -> bool:
        return _state_of(self._node) is not None

    def add_callback(self, fn: Callable[[], object], /) -> CallbackHandle:
        if not callable(fn):
            raise TypeError(f"add_callback() needs a callable, got {fn!r}")
        node = self._node
        handle = _Handle(node)
        with _lock:
            s = _watch_locked(node, handle, fn)
        if s is None:
            return handle
        _run_callbacks((fn,))
        return _SPENT

    def __repr__(self) -> str:
        return f"<gocontext.Done of {self._node._chain()} is_set={self.is_set()}>"


def watcher_count(ctx: Context) -> int:
    """How many callbacks and watched children are registered on *ctx* (for leak tests)."""
    node = ctx if isinstance(ctx, _CancelContext) else getattr(ctx, "_up", None)
    if node is None or node._done is None:
        return 0
    with _lock:
        return len(node._done._watchers or ())


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cancel_with_cause(
    ctx: Context, cause: BaseException | None, kind: type[ContextError] = Canceled
) -> None:
    """End *ctx*, a node of ours, with *kind* and *cause* (for the integrations here)."""
    if isinstance(ctx, _CancelContext) and ctx._state is None:
        _end(ctx, _CANCELED if cause is None and kind is Canceled else (kind, cause))
