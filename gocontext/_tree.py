"""The cancel tree's plumbing: node state, the tree lock, ending a node, and registrations.

The context types (``_context``) are built on ``Node`` here; this module knows
nodes, not contexts: no values, no deadlines beyond the timer entry, no parents that are not
nodes (``_context`` links those with ``add_callback``).

How cancellation travels. A node knows its nearest ancestor node (``_up``) but its parent does
not know it: a child nobody watches costs its parent nothing and is freed as soon as the caller
drops it (Go keeps every child in its parent until one of them is canceled). Such a child learns
of an ancestor's end when it is asked, by walking ``_up``. Once something watches a node (a
callback, a waiter, a watched descendant), the node registers itself with ``_up``, and ``_up``
with its own ``_up``, so a cancel pushes to every watched descendant at once and runs their
callbacks. Registrations are strong: whatever waits on a child keeps it alive as long as it
waits. A watcher that goes away unregisters, and so does the chain above it once nothing else
watches it.

Asking is O(1) at any depth. Every end bumps ``_epoch``, a process-wide counter; a node's
``_tag`` is the epoch at which a walk last found it and every ancestor live, and its ``_end`` the
state of the ancestor a walk found ended (ends are forever). ``err()`` answers "live" when
``_tag is _epoch``
(nothing has ended anywhere since that walk); otherwise it walks, stopping at the first ancestor
whose tag answers, and writes its finding on every node it passed, so a whole chain costs one
walk. The end's state is stored before the bump, with no call in between, so a tag equal to
the epoch never hides an end.

What the GIL gives. CPython hands the interpreter to another thread (and runs signal handlers)
only at calls, function entries and backward jumps (3.10: at every jump it takes), never
between two plain loads and stores, nor at a test that falls through. Three places rely on
that, each written as a look whose passing case falls through straight to the store: the store
of an end and the bump that follows it; the unlocked ``Node._cancel`` (its look at ``_done``
and its store of ``_state``); and ``end()``'s last look at ``_state`` before its own store.

Locking. One process-wide lock, ``_lock``, guards every node's ``_state`` and the watchers
and links in its ``NodeDone``; ``_state``, ``_tag`` and ``_end`` are also read without it (reference
reads; ``_state`` changes once, from None to a fixed tuple). Callbacks never run under
``_lock``, and no other lock is taken while holding it (the timer's lock is taken outside it),
so there is no lock order.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, final

from . import _afterfunc, _timer
from ._done import CallbackHandle, Done, handoffs
from ._errors import Canceled, ContextError, DeadlineExceeded, describe
from ._mutex import Busy, attempt, mutex

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ._context import Context

__all__ = [
    "CANCELED",
    "Node",
    "NodeDone",
    "State",
    "call_all",
    "end",
    "end_with",
    "error",
    "ext_locked",
    "raise_first",
    "run_callbacks",
    "state_of",
    "watcher_count",
]

_log = logging.getLogger("gocontext")

# A done state: (error class, custom cause or None). Set once, shared by every node it reaches.
State = tuple[type[ContextError], "BaseException | None"]
CANCELED: Final[State] = (Canceled, None)

_lock = mutex()  # `with _lock:` at half the cost of a threading.Lock's (see _mutex)
_locking = attempt(_lock)  # `with _locking:` takes it, or raises Busy at once
_epoch = 0  # bumped under _lock by every end, right after the state is stored (see above)
_CHILD: Final = object()  # in a watchers dict: the key is a watched child node, not a handle


class Node:
    """The tree part of a cancelable context (Go's ``cancelCtx`` without its values).

    - ``_up``: the nearest ancestor node, or None (a root, ``without_cancel``, or a parent
      that is not ours: then ``_done._links`` holds our callback on that parent).
    - ``_state``: None while live, then the ``State`` that ended it; set once under ``_lock``,
      read without it.
    - ``_tag``: the epoch at which a walk last found the node's chain live, or None.
    - ``_end``: None, or the ``State`` of the ancestor a walk found ended (the node's own end
      is ``_state``; ``_end`` tells only what reached it unasked).
    - ``_done``: None until something asks for ``done()`` or registers on the node; then the
      ``NodeDone`` that also holds the watchers and links. Fixed once set.
    """

    __slots__ = ("__weakref__", "_done", "_end", "_state", "_tag", "_up")
    _node = True
    _has_entry = False  # True for a node with a timer entry in ``_entry`` (None once it ended)
    _up: Node | None
    _state: State | None
    _tag: int | None
    _end: State | None
    _done: NodeDone | None

    if TYPE_CHECKING:
        _entry: _timer.TimerEntry | None  # a slot of the nodes with _has_entry

        def _chain(self) -> str: ...  # how it was derived, for reprs (the context type's)

    def err(self) -> ContextError | None:
        # What loops poll, and what every node of a cancelled tree is asked once: state_of()
        # and error() written out, with _look_up()'s first step (not written down: asking the
        # parent again is as quick as the write). The frame has one local on purpose: CPython
        # sets up and clears every local of a frame on each call, and a second one costs a
        # live poll 4 %; so what is found is held in `self`.
        if self._tag is not _epoch:
            # a State, or None (see above)
            self = (
                self._state  # type: ignore[assignment]
                or self._end
                or (self._up is not None and (self._up._state or self._up._end))
                or _look_up(self)
            )
            if self:
                return self[0]() if self[1] is None else error(self)  # type: ignore[index, arg-type]
        return None

    def done(self) -> Done:
        d = self._done
        if d is None:
            locking = _locking  # (as in end(): the lock, or Busy at once; then waiting for it)
            while True:
                try:
                    with locking:
                        d = ext_locked(self)
                    break
                except Busy:
                    locking = _wait_unless_reentrant("done()")
            if _deferred:
                _run_deferred()
        return d

    def _cancel(self) -> None:
        global _epoch
        if self._state is not None:
            return
        if self._done is None:
            # end(self, CANCELED) for a node nothing is registered on, without the lock: the
            # common case of `with_cancel` + `cancel()`, where taking the lock would cost a
            # quarter of the path. Whoever registers on a node makes its `_done` first, then
            # looks at `_state` (see _watch_locked); here `_done` is looked at and `_state`
            # stored with no call or backward jump in between, so no other thread runs in
            # between (see the module): either this store comes first and the registration
            # sees the end, or the registration comes first and this takes end()'s path.
            s = CANCELED
            n = self._up  # the nearest ended ancestor's end, if any (no tag is written)
            while n is not None and n._tag is not _epoch:
                t = n._state or n._end
                if t is not None:
                    s = t
                    break
                n = n._up
            if self._done is None and self._state is None:
                self._state = s  # (the store comes straight after the looks: see the module)
                _epoch += 1
                return  # (a node with a timer entry takes it in its own _cancel, after this)
        end(self, CANCELED)


def error(s: State) -> ContextError:
    """The error a node ended by *s* reports."""
    e = s[0]()
    if s[1] is not None:
        e.__cause__ = s[1]
    return e


def state_of(node: Node | None) -> State | None:
    """The state that ended *node* or one of its ancestors, or None while all are live."""
    if node is None or node._tag is _epoch:
        return None
    s = node._state or node._end
    return s if s is not None else _look_up(node)


def _look_up(node: Node) -> State | None:
    """For a *node* that knows of no end: the end of its nearest ended ancestor, or None; what
    was found is written on the nodes passed (see the module)."""
    e = _epoch  # (read before walking: an end after this makes what is written below stale)
    s: State | None = node._state  # again, after that read: the node's own end, come since
    if s is not None:  # its caller looked, must not be tagged over as live
        return s
    n = node._up
    while n is not None:
        if n._tag is e:
            break
        s = n._state or n._end
        if s is not None:
            break
        n = n._up
    p: Node | None = node
    if s is None:
        while p is not n:  # a second pass rather than a list of the nodes passed
            p._tag = e  # type: ignore[union-attr]  # the walk stopped at n, an ancestor, or None
            p = p._up  # type: ignore[union-attr]  # the walk stopped at n, an ancestor, or None
    else:
        while p is not n:
            p._end = s  # type: ignore[union-attr]  # the walk stopped at n, an ancestor
            p = p._up  # type: ignore[union-attr]  # the walk stopped at n, an ancestor
    return s


# --------------------------------------------------------------------------------------------
# Code that interrupts the tree lock's holder in its own thread
#
# A finalizer run by the garbage collector (at any allocation) and a signal handler (between
# two bytecodes) run inside whatever the thread was doing, a block under `_lock` included. If
# such code cancels a context, it must not wait for a lock that its own thread holds further
# down the stack: it would wait for good. So an end and a handle's removal enter the lock
# first as `_locking` (see _mutex.attempt: the same lock, taken without waiting, at the cost
# of `with _lock:`), and only when that finds it held (Busy) ask `_reentrant()`, which looks
# down the stack for a frame of ours inside a locked block (by line: the blocks' lines are
# read from the source once, when first needed; with no source to read, nothing is found, as
# before). Only then is the work left in `_deferred`, to run as the block is left (each block
# is followed by a look at `_deferred`: one global load on the paths that take the lock);
# else they enter `_lock` itself, waiting for the other thread. These two are what such code does
# (stop something; stop watching). The other entry points (a first `done()`, a
# registration, a link) must answer now and cannot be deferred: they enter the same way,
# and raise a RuntimeError where they would wait for good (`_wait_unless_reentrant`;
# docs/semantics.md).

_deferred: list[Callable[[], object]] = []
_INTERRUPTS: Final = (KeyboardInterrupt, SystemExit)  # what a callback raises that goes on
_locked_lines: dict[str, frozenset[int]] | None = None


def _reentrant() -> bool:
    """Whether a frame below the caller's, in this thread, is inside a ``with _lock:`` block:
    the caller interrupted the lock's holder (see above). Called when the lock was found held."""
    lines = _locked_lines if _locked_lines is not None else _find_locked_lines()
    f: Any = sys._getframe(2)
    while f is not None:
        inside = lines.get(f.f_code.co_filename)
        if inside is not None and f.f_lineno in inside:
            return True
        f = f.f_back
    return False


def _wait_unless_reentrant(call: str) -> AbstractContextManager[None]:
    """For an entry point that registers, having found the lock held (Busy): the lock to
    enter next, waiting for the other thread to let go of it; or, if the holder is this
    thread further down the stack, raise: a registration answers now and cannot be left for
    later, and waiting would be for good."""
    if _reentrant():
        raise RuntimeError(
            f"gocontext: {call} was called from a signal handler or a finalizer that "
            "interrupted gocontext in this thread while it held its lock; from there only "
            "cancel() and a callback handle's cancel() may be called"
        )
    return _lock


def _find_locked_lines() -> dict[str, frozenset[int]]:
    """The lines of the bodies of the ``with _lock:`` blocks of this module and ``_context``,
    read from their source: a ``with`` line, then every line indented deeper."""
    global _locked_lines
    found: dict[str, frozenset[int]] = {}
    for name in (__name__, __package__ + "._context"):
        path = getattr(sys.modules.get(name), "__file__", None)
        try:
            with open(path or "", encoding="utf-8") as f:
                source = f.read().splitlines()
        except (OSError, ValueError):  # no source: nothing found, as before
            continue
        lines: set[int] = set()
        block = -1  # the indent of the `with` line whose body is being read, or -1
        for number, text in enumerate(source, 1):
            stripped = text.lstrip()
            indent = len(text) - len(stripped)
            if block >= 0:
                if not stripped or stripped.startswith("#") or indent > block:
                    lines.add(number)
                    continue
                block = -1
            if stripped.startswith(("with _lock:", "with locking:", "with _tree._lock")):
                block = indent
        found[path or ""] = frozenset(lines)
    _locked_lines = found
    return found


def _run_deferred() -> None:
    """Run what interrupting code left in ``_deferred`` (outside the lock). What one raises is
    logged: the code that asked for it has returned long since."""
    while _deferred:
        try:
            fn = _deferred.pop(0)
        except IndexError:  # another thread took the last one
            return
        try:
            fn()
        except BaseException as e:
            _log.error(
                "gocontext: a cancel asked for by a signal handler or finalizer raised", exc_info=e
            )


# --------------------------------------------------------------------------------------------
# Ending a node


def end(node: Node, state: State) -> None:
    """End *node* with *state* unless it (or an ancestor) already ended: the first wins.

    In order: the end is committed and handed down to the watched descendants under
    ``_lock``, and the threads blocked in ``wait()`` are woken there too (in a C loop: no
    signal handler runs between two of them); then the timer entries and links are released
    and the callbacks run, every one of them whatever any raises.

    A KeyboardInterrupt (a Ctrl-C landing anywhere in here) or a SystemExit from a callback
    does not cut the end short: once the end is committed, the work resumes where it was (its
    work list lives in ``_Ending``, and each step may be done twice), every waiter is woken and
    every callback runs; the first interrupt goes out of here after that.
    """
    global _epoch
    ending = interrupt = entry = call = None
    fn: Any = None
    unwatch: Node | None = None
    committed = bare = False
    locking = _locking  # the lock, or Busy at once (see _reentrant); then waiting for it
    try:
        while True:  # (no jump back but after Busy)
            try:
                with locking:
                    if node._state is not None:
                        return
                    a: State | None = None  # the nearest ended ancestor's end, as in Node._cancel
                    n = node._up
                    while n is not None and n._tag is not _epoch:
                        a = n._state or n._end
                        if a is not None:
                            break
                        n = n._up
                    d = node._done
                    if d is None:
                        bare = True
                    elif d._links is None:
                        w = d._watchers
                        if not w:
                            bare = True
                        elif len(w) == 1 and not node._has_entry:
                            (fn,) = w.values()
                            if fn is _CHILD or type(fn) is _LockType:
                                fn = None
                    if bare:
                        # Nothing registered (any more), nothing linked: the end is the store, and
                        # the timer entry taken with it. No _Ending.
                        if node._has_entry:
                            entry = node._entry
                            node._entry = None  # type: ignore[misc]  # a slot of the subclass that has _has_entry
                        if (
                            node._state is None
                        ):  # (else a lock-free Node._cancel came first: see there)
                            node._state = a or state
                            _epoch += (
                                1  # (nothing between the look, the store and this: see the module)
                            )
                            committed = True
                            if d is not None:
                                d._node = _ENDED  # (see _Ended)
                        else:
                            return
                    elif fn is not None:
                        # The commonest watched node (a scope's, an HTTP call's, a to_thread's): one
                        # callback, nothing to hand down, nothing to release. No _Ending: once the
                        # end is committed, all that is left is the call below.
                        node._state = a or state
                        _epoch += (
                            1  # (no call between the check, the store and this: see the module)
                        )
                        committed = True
                        d._watchers = None  # type: ignore[union-attr]  # (d is not None: fn was found in it)
                        d._node = _ENDED  # type: ignore[union-attr]  # (see _Ended)
                        if a is None and (up := node._up) is not None:
                            # _unwatch_locked(up, node), its common case written out: up keeps
                            # other watchers, so nothing further up changes. (Cut short by an
                            # interrupt, it is done again below: `unwatch` is cleared only once
                            # it is done.)
                            unwatch = up
                            uw = up._done._watchers  # type: ignore[union-attr]  # node is registered on up
                            if uw is not None and len(uw) > 1:
                                uw.pop(node, None)
                            else:
                                _unwatch_locked(up, node)
                            unwatch = None
                    else:
                        ending = _Ending(node, a or state, a is None and node._up is not None)
                        if (
                            node._state is None
                        ):  # (else a lock-free Node._cancel came first: see there)
                            node._state = ending.state  # committed: from here on, the end completes
                            _epoch += (
                                1  # (nothing between the look, the store and this: see the module)
                            )
                            committed = True
                            _settle_locked(ending, False)
                        else:
                            return
                break
            except Busy:
                if committed:  # (raised by a signal handler inside the block: an interrupt)
                    raise
                if _reentrant():  # this thread holds the lock, further down the stack
                    _deferred.append(functools.partial(end, node, state))
                    return
                # Another thread holds it: wait for it, and keep it (let go and tried again,
                # it may be handed straight to the next waiter, on and on).
                locking = _lock
    except BaseException as e:
        if not committed:
            raise  # interrupted before the end was committed: nothing happened
        interrupt = e
    # What is left once the end is committed runs in this loop, all of it inside the try: an
    # interrupt landing anywhere leaves the rest to the next turn, never skips it. (Python 3.10
    # checks for signals at every jump it takes, so no branch stands between here and the try.)
    while True:
        try:
            if unwatch is not None:  # the one-callback path, interrupted before it unwatched
                with _lock:
                    _unwatch_locked(unwatch, node)
                unwatch = None
                if _deferred:
                    _run_deferred()
                continue
            if fn is not None:  # the one callback: call_all((fn,)) written out
                call, fn = fn, None
                call()
                break  # (nothing else is left on this path)
            if bare:
                if entry is not None:
                    _timer.timer.cancel(entry)  # (twice is harmless)
                bare = False
            elif ending is not None:
                later = _finish(ending)  # resumes where an interrupted call stopped
                ending = None
                if interrupt is None:
                    interrupt = later
            break
        except Exception:
            if call is None:  # pragma: no cover - a bug of ours, not a callback's: no retry
                raise
            call = None
            _log.exception("gocontext: a done callback raised")
        except BaseException as e:
            if interrupt is None and isinstance(e, _INTERRUPTS):
                interrupt = e
            else:  # (asyncio's CancelledError, GeneratorExit: a callback's, logged)
                _log.error("gocontext: a done callback raised", exc_info=e)
    # Left by code that interrupted the locked block above (see _reentrant): run once the
    # end is complete, not between its commit and the loop (no branch may stand there).
    if _deferred:
        _run_deferred()
    if interrupt is not None:
        raise_first(interrupt)


def end_with(ctx: Context, kind: type[ContextError], cause: BaseException | None) -> None:
    """End *ctx*, if it is a live node, with *kind* (``Canceled`` or ``DeadlineExceeded``) and
    *cause*: for an integration that learns a context's end from elsewhere (a Ray task learns
    of its caller's deadline this way). Contexts that are not nodes are left alone.

    Example:
        >>> import gocontext
        >>> ctx, _ = gocontext.with_cancel(gocontext.background())
        >>> end_with(ctx, gocontext.DeadlineExceeded, None)
        >>> ctx.err()
        DeadlineExceeded('context deadline exceeded')
    """
    if kind is not Canceled and kind is not DeadlineExceeded:
        raise TypeError(f"end_with() needs Canceled or DeadlineExceeded, got {describe(kind)}")
    if isinstance(ctx, Node) and ctx._state is None:
        end(ctx, CANCELED if cause is None and kind is Canceled else (kind, cause))


@final
class _Ending:
    """The work of ending a node, kept outside the frames doing it, so it can be resumed.

    ``stack``: nodes whose registrations are still to be handed down (a node leaves it, for
    its watched children, in one slice assignment). ``callbacks`` and ``waiters``: what was
    taken from them, by handle, so that taking twice runs nothing twice. ``calls``: what is
    left to call once the hand-down is settled. The lists are made when first needed.
    """

    __slots__ = (
        "callbacks",
        "calls",
        "entries",
        "handoff",
        "links",
        "node",
        "settled",
        "stack",
        "state",
        "unwatch",
        "waiters",
    )

    def __init__(self, node: Node, state: State, unwatch: bool) -> None:
        self.node = node
        self.state = state
        self.unwatch = unwatch  # the node is still registered with a live _up: undo that
        self.stack: list[Node] = [node]
        self.callbacks: dict[object, Callable[[], object]] | None = None
        self.waiters: dict[object, Any] | None = None
        self.entries: list[_timer.TimerEntry] | None = None
        self.links: list[list[CallbackHandle]] | None = None
        self.handoff: object = None  # a woken waiter's lock, in handoffs until it runs
        self.settled = False  # stack emptied and waiters woken
        self.calls: Iterator[Callable[[], object]] | None = None


def _settle_locked(ending: _Ending, again: bool) -> None:
    """Hand the end down (resuming where a previous call stopped), then wake the waiters.

    *again*: a previous call was cut short, so a waiter may have been woken already.
    """
    if ending.unwatch:
        up = ending.node._up
        if up is not None:
            _unwatch_locked(up, ending.node)
        ending.unwatch = False
    state = ending.state
    stack = ending.stack
    while stack:
        n = stack[-1]
        if n._has_entry:
            entry = n._entry
            if entry is not None:
                if ending.entries is None:
                    ending.entries = []
                ending.entries.append(entry)  # (cancelling an entry twice is harmless)
                n._entry = None  # type: ignore[misc]  # a slot of the subclass that has _has_entry
        d = n._done
        if d is None:
            stack.pop()
            continue
        d._node = _ENDED  # (see _Ended)
        if d._links is not None:
            if ending.links is None:
                ending.links = []
            ending.links.append(list(d._links))  # (a handle cancelled twice returns False)
            d._links = None
        w = d._watchers
        if not w:
            stack.pop()
            continue
        children: list[Node] = []
        for k, v in w.items():
            if v is _CHILD:
                if k._state is None:  # type: ignore[attr-defined]  # keys with _CHILD are nodes
                    k._state = state  # type: ignore[attr-defined]  # keys with _CHILD are nodes
                children.append(k)  # type: ignore[arg-type]  # keys with _CHILD are nodes
            elif type(v) is _LockType:
                if ending.waiters is None:
                    ending.waiters = {}
                ending.waiters[k] = v
            else:
                if ending.callbacks is None:
                    ending.callbacks = {}
                ending.callbacks[k] = v  # type: ignore[assignment]  # a callback function
        stack[-1:] = children  # one step: n out, its children in
        d._watchers = None
    waiters = ending.waiters
    if not waiters:
        pass
    elif again:
        for lock in waiters.values():
            with contextlib.suppress(RuntimeError):  # woken already: its lock, used once
                lock.release()
    else:
        lead = next(iter(waiters.values()))
        handoffs[lead] = None  # (before the wake: the woken thread takes it out at once)
        ending.handoff = lead
        _wake_all(map(_release_lock, waiters.values()))
    ending.settled = True


def _finish(ending: _Ending) -> BaseException | None:
    """Settle the end if that was cut short; release what the ended nodes held and run the
    callbacks, resuming where a previous call stopped; return the first interrupt raised."""
    if not ending.settled:
        with _lock:
            _settle_locked(ending, True)
        if _deferred:
            _run_deferred()
    # Our own releases, one at a time and each dropped only once done (doing one twice is
    # harmless), so an interrupt in the middle of one leaves it to the next call.
    entries = ending.entries
    if entries:
        cancel_entry = _timer.timer.cancel
        while entries:
            cancel_entry(entries[-1])
            entries.pop()
    links = ending.links
    while links:
        handles = links[-1]
        while handles:
            try:
                handles[-1].cancel()
            except Exception:  # a parent that is not ours, failing to unregister
                _log.exception("gocontext: releasing a registration raised")
            handles.pop()
        links.pop()
    calls = ending.calls
    if calls is None:
        if ending.waiters:
            # The woken threads are runnable; let one run now rather than after whatever the
            # canceller does next (a busy canceller would hold the GIL for its whole slice,
            # and a mere release of the GIL comes too soon: the woken thread is not yet
            # asking for it). Sleep, the GIL released, until it has run (it takes its entry
            # out of handoffs in wait()), for at most _HANDOFF seconds. Polled, so that the
            # woken thread pays no system call to say so.
            ending.waiters = None
            lead = ending.handoff
            if lead is not None:
                ending.handoff = None
                give_up = _monotonic() + _HANDOFF
                while lead in handoffs and _monotonic() < give_up:
                    _sleep(_HANDOFF_POLL)
                handoffs.pop(lead, None)
        if not ending.callbacks:
            return None
        calls = ending.calls = iter(list(ending.callbacks.values()))
    return call_all(calls, "a done callback")


_LockType: Final = type(threading.Lock())
_release_lock: Final = _LockType.release
_WAKE_SINK: Final[collections.deque[object]] = collections.deque(maxlen=0)
_wake_all: Final = _WAKE_SINK.extend  # consumes an iterator in C: no signal check between items


_HANDOFF = 0.001  # seconds a waker waits at most for the thread it woke to run
_HANDOFF_POLL: Final = 20e-6  # seconds it sleeps between two looks (the OS adds its slack)
_sleep: Final = time.sleep
_monotonic: Final = time.monotonic


# --------------------------------------------------------------------------------------------
# Registrations


def ext_locked(node: Node) -> NodeDone:
    """*node*'s ``NodeDone``, made on first use (under ``_lock``)."""
    d = node._done
    if d is None:
        d = node._done = _new_done(node)
    return d


def _new_done(node: Node) -> NodeDone:
    d = NodeDone()  # (no __init__: the type's C constructor, then the fields)
    d._node = node if node._state is None else _ENDED
    d._watchers = d._links = None
    return d


def _watch_locked(node: Node, key: object, value: object) -> State | None:
    """Register *key* on *node*; return the end state instead if *node* is already done.

    Registers *node* with its ancestors as far up as needed for a cancel to reach it.
    """
    d = node._done  # made first: a lock-free Node._cancel that sees no `_done` has stored
    if d is None:  # its end already, and one that sees it takes the lock (see there)
        d = node._done = _new_done(node)
    s = node._state
    if s is not None:
        return s
    w = d._watchers
    if w:
        w[key] = value
        return None
    n = node._up
    if n is None:
        d._watchers = {key: value}
        return None
    nd = n._done
    if nd is not None and nd._watchers:  # the commonest first watcher: its parent is watched
        d._watchers = {key: value}
        nd._watchers[node] = _CHILD
        return None
    # The first watcher of this node: find how far up the chain is unwatched (and live).
    path = [node]
    while n is not None:
        s = n._state
        if s is not None:
            # The chain ended above. The nodes on the path are not marked: each learns that
            # end when asked, and a timed node still gives up its timer entry when cancelled.
            return s
        nd = n._done
        if nd is not None and nd._watchers:
            break
        path.append(n)
        n = n._up
    d._watchers = {key: value}
    for child, parent in itertools.pairwise(path):
        ext_locked(parent)._watchers = {child: _CHILD}
    if n is not None:
        n._done._watchers[path[-1]] = _CHILD  # type: ignore[union-attr, index]  # checked above
    return None


def _unwatch_locked(node: Node, key: object) -> bool:
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


def call_all(fns: Iterable[Callable[[], object]], what: str) -> BaseException | None:
    """Call every fn whatever any of them raises; return the first BaseException to re-raise.

    An Exception is logged, and so is any other BaseException that is not an interrupt
    (asyncio's ``CancelledError`` read from a cancelled future, ``GeneratorExit``): it is the
    fn's own, not its caller's. A KeyboardInterrupt or SystemExit (from a fn, or from a signal
    handler running between two of them) does not stop the rest: the first is returned, for
    the caller to raise once its work is complete; any later one is logged.
    """
    interrupt: BaseException | None = None
    it = iter(fns)
    while True:
        try:
            for fn in it:
                try:
                    fn()
                except Exception:
                    _log.exception("gocontext: %s raised", what)
        except BaseException as e:
            if interrupt is None and isinstance(e, _INTERRUPTS):
                interrupt = e
            else:  # (asyncio's CancelledError, GeneratorExit: a fn's, logged)
                _log.error("gocontext: %s raised", what, exc_info=e)
            continue  # with the next fn: the iterator remembers where it was
        return interrupt


def raise_first(interrupt: BaseException | None) -> None:
    """Raise *interrupt* if there is one, leaving no reference cycle through this frame."""
    if interrupt is not None:
        try:
            raise interrupt
        finally:
            interrupt = None


def run_callbacks(fns: Iterable[Callable[[], object]]) -> None:
    """Call every fn (see ``call_all``), then raise the first interrupt."""
    raise_first(call_all(fns, "a done callback"))


# --------------------------------------------------------------------------------------------
# Done for nodes


@final
class _Handle:
    __slots__ = ("_node",)
    _node: Node

    def cancel(self) -> bool:
        locking = _locking  # (as in end())
        while True:
            try:
                with locking:
                    removed = _unwatch_locked(self._node, self)
            except Busy:
                if _reentrant():  # (not in a finally below: the lock is held down the stack)
                    _deferred.append(self.cancel)  # removed once the interrupted code lets go
                    return False
                locking = _lock
                continue
            except BaseException:
                if _deferred:
                    _run_deferred()
                raise
            if _deferred:
                _run_deferred()
            return removed


class _SpentHandle:
    __slots__ = ()

    def cancel(self) -> bool:
        return False


_SPENT = _SpentHandle()


@final
class NodeDone(Done):
    """The done signal of a node, and the node's registrations.

    Fields (guarded by ``_lock``):
    - ``_node``: the node while it is live; ``_ENDED`` once it has ended (see ``_Ended``).
    - ``_watchers``: None or a dict of what is registered on the node: callback handles (to
      their functions), waiting threads' locks and watched child nodes (to ``_CHILD``).
      Non-empty only while the node is live, and then the node is itself registered with its
      ``_up`` (if it has one). Emptied for good when the node ends.
    - ``_links``: None or a tuple of handles the node holds on parents that are not in its
      ``_up`` chain (a merge's parents, a parent that is not ours); released when it ends.
    """

    __slots__ = ("_links", "_node", "_watchers")
    _node: Node
    _watchers: dict[object, object] | None
    _links: tuple[CallbackHandle, ...] | None

    def is_set(self) -> bool:
        return state_of(self._node) is not None

    def add_callback(self, fn: Callable[[], object], /) -> CallbackHandle:
        if not callable(fn):
            raise TypeError(f"add_callback() needs a callable, got {describe(fn)}")
        handle = self._register(fn)
        if handle is not None:
            return handle
        run_callbacks((fn,))
        return _SPENT

    def _add_waiter(self, lock: Any, held: list[CallbackHandle]) -> None:
        # Registered as the lock itself: end() releases it under _lock, before any callback.
        if self._register(lock, held) is None:  # ended already: nothing was registered
            lock.release()

    def _register(self, value: object, held: list[CallbackHandle] | None = None) -> _Handle | None:
        """Register *value* on the node; its handle, or None if the node has ended. The
        handle goes into *held* (a waiter's) before the registration: an interrupt after it
        finds it there."""
        handle = _Handle()  # (no __init__: the type's C constructor, then the field)
        handle._node = self._node
        if held is not None:
            held.append(handle)
        locking = _locking
        while True:
            try:
                with locking:
                    s = _watch_locked(self._node, handle, value)
                break
            except Busy:
                locking = _wait_unless_reentrant(
                    "a registration on done() (add_callback(), await, wait())"
                )
        if _deferred:
            _run_deferred()
        return handle if s is None else None

    def __repr__(self) -> str:
        return f"<gocontext.Done of {self._node._chain()} is_set={self.is_set()}>"


@final
class _Ended(Node):
    """What the ``NodeDone`` of an ended node refers to in the node's place: a node that has
    always ended. A node and its ``NodeDone`` refer to each other, a cycle that only the
    garbage collector would free; once the node has ended, all its ``Done`` needs to know
    is that (``is_set()``, and a callback or waiter registered later runs or wakes at once),
    so the end breaks the cycle, and an ended context whose ``done()`` was asked for, with
    whatever values it holds, is freed as soon as nothing refers to it.
    """

    __slots__ = ()

    def _chain(self) -> str:
        return "an ended context"


_ENDED: Final = _Ended()
_ENDED._up = _ENDED._tag = _ENDED._end = _ENDED._done = None
_ENDED._state = CANCELED
_ENDED._done = _new_done(_ENDED)


def watcher_count(node: Node) -> int:
    """How many callbacks, waiters and watched children are registered on *node*."""
    d = node._done
    if d is None:
        return 0
    with _lock:
        n = len(d._watchers or ())
    if _deferred:
        _run_deferred()
    return n


def _after_fork_in_child() -> None:
    # The one at-fork hook of the core, so the order is fixed: first the tree lock (a parent
    # thread may have held it at fork time), then the timer, whose new thread may end nodes
    # (and so take the tree lock) at once, then the after_func pool, whose queued functions
    # may do the same.
    global _lock, _locking
    _lock = mutex()
    _locking = attempt(_lock)
    _deferred.clear()  # (the parent's: its own thread runs them there)
    handoffs.clear()  # (no waker waits in the child: its thread is not there)
    _timer.after_fork_in_child()
    _afterfunc.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
