"""One adapter per library the benchmark compares: the operations each one has, or ``None``.

An adapter's setup methods (``root``, ``child``, ``node``, ``cancel``) are used outside the
timed part; the timed operations are built by the adapter as zero-argument callables, written
as a user of that library would write them, so no peer pays for a layer of ours. A library
that lacks an operation returns ``None`` for it, and its row is left out. A library that is
not installed becomes a :class:`Missing` adapter, reported, never hidden.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Op = Callable[[], object]


def _noop() -> None:
    pass


class Adapter:
    """A library under test. Every operation returns ``None`` where the library lacks it."""

    name = "?"
    tree = True  # children see their ancestors' cancel; False: a bare flag, no parent
    most_timers: int | None = None  # timers a timed run may start and cancel, if limited
    most_live_timers: int | None = None  # timers that may be live at once, if limited

    def call(self, fn: Callable[[], T]) -> T:
        """Run *fn* where this library's objects work (trio and anyio: inside their loop)."""
        return fn()

    # Setup (untimed): a "kept" object is what a user holds for one context (a Go-style
    # (ctx, cancel) pair, or a token); node() is the part that is polled or parented.
    def root(self) -> Any | None:
        """A live cancelable root, kept; None for a library with no standalone context."""
        return None

    def child(self, parent: Any) -> Any | None:
        """A live cancelable child of the node *parent*, kept; None without a tree."""
        return None

    def node(self, kept: Any) -> Any:
        return kept

    def bare_child(self) -> Callable[[], Any] | None:
        """Plain Python's floor for a kept child (made and kept as ``child()``'s); None for a
        library, whose kept child is ``child()``'s."""
        return None

    def cancel(self, kept: Any) -> None:
        raise NotImplementedError

    # Timed operations.
    def poll(self, node: Any) -> Op | None:
        """Ask *node* whether it is cancelled (truthy when it is)."""
        return None

    def create_cancel(self, parent: Any) -> Op | None:
        """Create a cancelable child of the node *parent* and cancel it."""
        return None

    def create_timeout_cancel(self, parent: Any, seconds: float) -> Op | None:
        """Create a child of *parent* with a *seconds* timeout and cancel it."""
        return None

    def watched_cancels(self, parent: Any, n: int) -> list[Op] | None:
        """*n* cancel functions of children of *parent*, each with one done callback."""
        return None

    def value_lookup(self, depth: int) -> Op | None:
        """Look up a key set *depth* levels above the node asked."""
        return None

    def blocking_waiter(self) -> tuple[Op, Op] | None:
        """A fresh (wait, fire): wait() blocks the calling thread until fire() is called."""
        return None

    def async_waiter(self) -> tuple[Callable[[], Awaitable[object]], Op] | None:
        """A fresh (wait, fire) on the running asyncio loop; fire() is called from another
        thread."""
        return None

    def new_timer(self, seconds: float) -> Op | None:
        """Start a live timer of *seconds*; returns its cancel."""
        return None

    def make_pair(self) -> Op | None:
        """Build the (ctx, cancel) pair that a derivation returns, from its two parts."""
        return None

    def deadline_waiter(self, seconds: float) -> tuple[Op, float] | None:
        """A context ending *seconds* from now: (wait for it, its deadline on
        ``time.monotonic()``'s clock)."""
        return None


class Missing(Adapter):
    """A peer that could not be loaded; *why* is printed."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why


class _GoStyle(Adapter):
    """gocontext and pygolang's ``golang.context`` share Go's API: one adapter for both."""

    def __init__(self, name: str, mod: Any) -> None:
        self.name = name
        self.mod = mod

    def root(self) -> Any:
        return self.mod.with_cancel(self.mod.background())

    def child(self, parent: Any) -> Any:
        return self.mod.with_cancel(parent)

    def node(self, kept: Any) -> Any:
        return kept[0]

    def cancel(self, kept: Any) -> None:
        kept[1]()

    def poll(self, node: Any) -> Op:
        return node.err  # type: ignore[no-any-return]  # a bound method of the library's

    def create_cancel(self, parent: Any) -> Op:
        with_cancel = self.mod.with_cancel

        def op() -> None:
            _, cancel = with_cancel(parent)
            cancel()

        return op

    def create_timeout_cancel(self, parent: Any, seconds: float) -> Op:
        with_timeout = self.mod.with_timeout

        def op() -> None:
            _, cancel = with_timeout(parent, seconds)
            cancel()

        return op

    def value_lookup(self, depth: int) -> Op:
        key = self._key()
        ctx = self.mod.with_value(self.mod.background(), key, 1)
        for i in range(depth - 1):
            ctx = self.mod.with_value(ctx, i, i)
        value = ctx.value
        return lambda: value(key)

    def _key(self) -> Any:
        return object()

    def new_timer(self, seconds: float) -> Op:
        return self.mod.with_timeout(self.mod.background(), seconds)[1]  # type: ignore[no-any-return]


class GoContext(_GoStyle):
    def __init__(self) -> None:
        import gocontext

        super().__init__("gocontext", gocontext)

    def _key(self) -> Any:
        return self.mod.Key("top")

    def watched_cancels(self, parent: Any, n: int) -> list[Op]:
        cancels: list[Op] = []
        for _ in range(n):
            ctx, cancel = self.mod.with_cancel(parent)
            ctx.done().add_callback(_noop)
            cancels.append(cancel)
        return cancels

    def blocking_waiter(self) -> tuple[Op, Op]:
        ctx, cancel = self.mod.with_cancel(self.mod.background())
        return ctx.done().wait, cancel

    def deadline_waiter(self, seconds: float) -> tuple[Op, float]:
        ctx, _ = self.mod.with_timeout(self.mod.background(), seconds)
        return ctx.done().wait, ctx.deadline()

    def make_pair(self) -> Op:
        pair = self.mod.with_cancel(self.mod.background())
        ctx, cancel = pair
        if type(pair) is tuple:
            return lambda: (ctx, cancel)
        kind = type(pair)
        if hasattr(kind, "_fields"):  # a NamedTuple: built as the library builds it
            new = tuple.__new__
            return lambda: new(kind, (ctx, cancel))
        return lambda: kind((ctx, cancel))

    def async_waiter(self) -> tuple[Callable[[], Awaitable[object]], Op]:
        ctx, cancel = self.mod.with_cancel(self.mod.background())
        return ctx.done, cancel


class PyGolang(_GoStyle):
    # A thread per timer: with more, its runtime aborts.
    most_timers = 2000
    most_live_timers = 200

    def __init__(self) -> None:
        super().__init__("pygolang", importlib.import_module("golang.context"))
        self._select = importlib.import_module("golang").select

    def blocking_waiter(self) -> tuple[Op, Op]:
        ctx, cancel = self.mod.with_cancel(self.mod.background())
        recv, select = ctx.done().recv, self._select
        return (lambda: select(recv)), cancel


class _Token(Adapter):
    """A library of token objects: ``token.cancel()``, the property ``token.cancelled``."""

    def __init__(self, module: str, token: str) -> None:
        self.mod = importlib.import_module(module)
        self.token = getattr(self.mod, token)

    def root(self) -> Any:
        return self.token()

    def cancel(self, kept: Any) -> None:
        kept.cancel()

    def poll(self, node: Any) -> Op:
        return lambda: node.cancelled

    def create_cancel(self, parent: Any) -> Op:
        token = self.token
        if not self.tree:
            return lambda: token().cancel()
        return lambda: token(parent).cancel()


class Cantok(_Token):
    name = "cantok"

    def __init__(self) -> None:
        super().__init__("cantok", "SimpleToken")

    def child(self, parent: Any) -> Any:
        return self.token(parent)

    def create_timeout_cancel(self, parent: Any, seconds: float) -> Op:
        token = self.mod.TimeoutToken
        return lambda: token(seconds, parent).cancel()


class CancelContexts(_Token):
    """cancel-contexts: a context has no parent."""

    name = "cancel-contexts"
    tree = False

    def __init__(self) -> None:
        super().__init__("cancel_contexts", "CancelContext")


class Event(Adapter):
    """``threading.Event``: the floor for a flag, with no tree."""

    name = "threading.Event"
    tree = False

    def root(self) -> Any:
        return threading.Event()

    def cancel(self, kept: Any) -> None:
        kept.set()

    def poll(self, node: Any) -> Op:
        return node.is_set  # type: ignore[no-any-return]

    def create_cancel(self, parent: Any) -> Op:
        event = threading.Event
        return lambda: event().set()

    def blocking_waiter(self) -> tuple[Op, Op]:
        ev = threading.Event()
        return ev.wait, ev.set


class Asyncio(Adapter):
    """asyncio's own primitives: an ``asyncio.Event`` set from another thread."""

    name = "asyncio.Event"
    tree = False

    def async_waiter(self) -> tuple[Callable[[], Awaitable[object]], Op]:
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        return ev.wait, lambda: loop.call_soon_threadsafe(ev.set)


class CancelScopes(_Token):
    """anyio's or trio's cancel scopes: a flag per scope; a scope's parents are the scopes it
    is entered in, so there is no tree to build outside a task. Used inside the library's
    own loop (anyio's on asyncio)."""

    tree = False

    def __init__(self, library: str) -> None:
        super().__init__(library, "CancelScope")
        self.name = f"{library}.CancelScope"

    def call(self, fn: Callable[[], T]) -> T:
        async def inside() -> T:
            return fn()

        return self.mod.run(inside)  # type: ignore[no-any-return]

    def poll(self, node: Any) -> Op:
        return lambda: node.cancel_called


class Plain(Adapter):
    """Not a peer: the floor plain Python sets. Its poll is a method that returns an
    attribute; its pair is a tuple; its kept child is the smallest a (ctx, cancel) pair can be
    in Python: an object with no fields, its bound method, and the tuple of the two."""

    name = "plain Python"
    tree = False

    class _Node:
        __slots__ = ("_err",)

        def __init__(self) -> None:
            self._err: BaseException | None = None

        def err(self) -> BaseException | None:
            return self._err

    class _Empty:
        __slots__ = ()

        def cancel(self) -> None:
            pass

    def bare_child(self) -> Callable[[], Any]:
        empty = self._Empty

        def make() -> Any:
            ctx = empty()
            return (ctx, ctx.cancel)

        return make

    def root(self) -> Any:
        return self._Node()

    def poll(self, node: Any) -> Op:
        return node.err  # type: ignore[no-any-return]

    def make_pair(self) -> Op:
        ctx, cancel = object(), _noop
        return lambda: (ctx, cancel)


def _aiofence() -> Adapter:
    importlib.import_module("aiofence")  # it needs Python >= 3.12

    return Missing("aiofence", "installed, but no adapter is written yet for its API")


LOADERS: dict[str, Callable[[], Adapter]] = {
    "gocontext": GoContext,
    "pygolang": PyGolang,
    "cantok": Cantok,
    "cancel-contexts": CancelContexts,
    "aiofence": _aiofence,
    "anyio": lambda: CancelScopes("anyio"),
    "trio": lambda: CancelScopes("trio"),
    "asyncio": Asyncio,
    "threading.Event": Event,
    "plain": Plain,
}


def load(names: list[str] | None = None) -> list[Adapter]:
    """The adapters named (default: all), each loaded or :class:`Missing` with the reason."""
    out: list[Adapter] = []
    for name in names or list(LOADERS):
        try:
            out.append(LOADERS[name]())
        except Exception as e:  # any failure to import or build a peer is reported
            out.append(Missing(name, f"not installed ({type(e).__name__}: {e})"))
    return out
