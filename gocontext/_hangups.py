"""Servers' watch on their clients' sockets for the peer's end alone.

A server stops reading a connection while a request's body waits unread (a large upload the
handler does not read): the loop no longer looks at the socket, and a client that leaves
then goes unseen until the handler ends. On Linux, such a socket also waits in one epoll per
event loop for its peer's end alone (``EPOLLRDHUP``: a FIN or a reset, whatever unread data
is ahead of it; never data), and the loop watches that epoll. Elsewhere nothing is watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

__all__ = ["Hangups", "Watch", "each"]


class Watch(Protocol):
    """What is told its socket's peer has gone (``peer_gone``, on the loop's thread); it
    holds its place in the epoll, set by ``Hangups.add`` and cleared by ``Hangups.forget``:
    the ``Hangups`` and the socket's descriptor (``None`` and ``-1`` before and after)."""

    hangups: Hangups | None
    fd: int

    def peer_gone(self) -> None: ...


# What the epoll waits for: the peer's end alone (its FIN, or a reset: EPOLLHUP and EPOLLERR are
# always reported), once per socket; never data to read.
_HANGUP_EVENTS = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLONESHOT", 0)


class Hangups:
    """Per loop, on its thread: one epoll (Linux) in which each watched socket waits for its
    peer's end, and which the loop watches (``add_reader``) while it holds any. A socket may
    have several watches (requests one after another on one connection), each told; it
    leaves the epoll when the last is forgotten, or when it is closed (a watch forgotten
    after that is forgotten alone). The epoll closes when it holds none. It holds its loop
    and watches weakly: a loop abandoned with connections open (closed, never cleaned up)
    goes with them to the garbage collector, which closes the epoll."""

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hangups]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        # Per watched descriptor, what to tell: more than one when requests one after another
        # on one connection each watch it (a handler may run on after its answer).
        self._watches: dict[int, weakref.WeakSet[Watch]] = {}
        try:
            loop.add_reader(self._epoll.fileno(), self._ready)
        except BaseException:
            self._epoll.close()
            raise

    @classmethod
    def add(cls, loop: asyncio.AbstractEventLoop, transport: Any, watch: Watch) -> None:
        """Watch the socket of *transport* (an asyncio transport of *loop*, open) for its
        peer's end, to tell *watch*; nothing if the platform or the transport has no way (no
        epoll, no socket) or no descriptor is left."""
        if not _HANGUP_EVENTS or transport.is_closing():  # (a closing one's socket may be shut)
            return
        sock = transport.get_extra_info("socket")
        fd = -1 if sock is None else sock.fileno()
        if fd < 0:
            return
        self = cls._of_loop.get(loop)
        if self is None:
            try:
                self = cls(loop)
            except (OSError, NotImplementedError):  # (out of descriptors, say: unwatched)
                return
            cls._of_loop[loop] = self
        try:
            self._epoll.register(fd, _HANGUP_EVENTS)
        except FileExistsError:  # watched already, for an earlier request on the connection
            try:  # (armed again: a peer that has gone already is told again, to all)
                self._epoll.modify(fd, _HANGUP_EVENTS)
            except OSError:  # pragma: no cover - registered a moment ago
                return
            watches = self._watches.setdefault(fd, weakref.WeakSet())
        except OSError:  # (a socket already closed: left to the loop)
            if not self._watches:
                self._close()
            return
        else:  # (a closed socket's watches, under the same descriptor, were its own)
            watches = self._watches[fd] = weakref.WeakSet()
        watches.add(watch)
        watch.hangups, watch.fd = self, fd

    def forget(self, watch: Watch) -> None:
        """Stop watching *watch*'s socket (before it is closed: a socket closed first has left
        the epoll, and its descriptor may be another's now)."""
        fd = watch.fd
        watch.hangups, watch.fd = None, -1
        watches = self._watches.get(fd)
        if watches is None or watch not in watches:
            return  # (its socket was closed, and the descriptor is another's now)
        watches.discard(watch)
        if watches:
            return  # (another request on the connection still watches it)
        del self._watches[fd]
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        if not self._watches:
            self._close()

    def _close(self) -> None:
        loop = self._loop()
        try:
            if loop is not None:
                self._of_loop.pop(loop, None)
                loop.remove_reader(self._epoll.fileno())
        finally:
            self._epoll.close()

    def _ready(self) -> None:
        if self._epoll.closed:  # pragma: no cover - remove_reader cancelled this call
            return
        ready = [self._watches.get(fd) for fd, _ in self._epoll.poll(0)]
        each(_peer_gone, [w for ws in ready if ws is not None for w in list(ws)])


def _peer_gone(watch: Watch) -> None:
    watch.peer_gone()


def each(fn: Callable[[Any], object], items: Iterable[Any]) -> None:
    """Call *fn* on each of *items*, whatever one raises; then raise the first error, if any."""
    error: BaseException | None = None
    for item in items:
        try:
            fn(item)
        except BaseException as e:  # (every item first; then it goes out)
            if error is None:
                error = e
    if error is not None:
        raise error
