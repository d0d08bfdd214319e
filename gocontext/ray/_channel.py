"""The cancellation channel: a Ray actor per process that passes contexts on.

Each process that sends a context to Ray (a driver, or a worker passing one further) owns one
``Channel`` actor per Ray connection, created on first use and not detached, so it dies with its
owner; if it dies first, the next context sent gets a new one. A context sent through it gets a
token; when the context ends, the owner tells the channel, which wakes every worker watching
that token. Each worker process runs one watcher thread per channel it received contexts from,
long-polling ``Channel.wait`` with the full list of tokens it watches; a channel that has died
(its owner is gone) ends every context it carried, with a ``ChannelGone`` cause.

Every Ray call costs the same few milliseconds however little it carries, and many more on a
loaded host, so none is made per context: the owner's done callbacks queue the ends, and a
sending thread (running while contexts sent through the channel live) passes on in one
``Channel.end`` call whatever was queued meanwhile; the tokens a worker receives during a poll
go to the channel in one ``Channel.watch`` hint per slice of it, which cuts the poll short if
one of them already ended. A thousand contexts cancelled at once thus take a handful of calls,
not thousands of them queued one behind the other.

Three rules keep this safe under faults:

- No Ray call is ever made under one of our locks, and no finalizer takes one: a finalizer only
  puts a token on a ``SimpleQueue`` (safe from any point a garbage collection can run), and the
  watcher thread does the rest; likewise a done callback (which a finalizer's cancel may run)
  puts an end on its sender's queue, and the sending thread calls the channel.
- A watch is a lease: every poll carries the full list, and a watcher not heard from for
  ``_LEASE`` seconds (its worker was killed) is forgotten, so the channel returns to its
  baseline. A watcher that comes back re-sends its list; nothing is lost.
- An ended token stays known as ended for ``_RETAIN`` seconds after it ended (the most recent
  ``_RETAIN_MAX`` of them), whatever the sender does with its context meanwhile: a task queued
  behind a context that was cancelled and dropped still sees it end when it starts. (A task can
  receive a token for as long as a pickled copy of the context exists, which no process can
  know; the bound is the promise, and the remote copy's deadline still applies past it.)

Nothing of ours touches Ray once Ray is shut down in this process: every Ray call first checks
that the Ray connection it belongs to is still the current one, and ``ray.shutdown()`` (and the
interpreter's exit) first stops our threads, which wait on Ray in short slices, and drops our
Ray objects. Ray has no shutdown hook of its own, so ``install`` wraps ``ray.shutdown``.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import ray
import ray.runtime_context

from .._context import Context, cause
from .._errors import Canceled, DeadlineExceeded
from .._tree import end_with

__all__ = [
    "Channel",
    "ChannelGone",
    "Ending",
    "Link",
    "RemoteCause",
    "end_copies",
    "install",
    "keep",
    "link_for",
    "sender_channel",
    "session",
    "spawn",
    "watch",
]

_log = logging.getLogger("gocontext")

_POLL = 1.0  # seconds a wait lasts at most; an end cuts it short
_LEASE = 5.0  # seconds after its last poll a silent watcher (a killed worker) is forgotten
_RETAIN = 600.0  # seconds an ended token stays known as ended
_RETAIN_MAX = 100_000  # ended tokens kept at most (the oldest go first)
_IDLE_POLLS = 3  # empty polls a watcher thread makes before it exits
_CAUSE_MAX = 1000  # characters of a cause's text that travel
_SLICE = 0.1  # seconds a thread of ours waits on Ray before it checks Ray is still up
_JOIN = 5.0  # seconds ray.shutdown() waits for each thread of ours to leave Ray


class ChannelGone(ConnectionError):
    """The cause recorded on a remote context whose sender's process went away.

    Example:
        >>> import gocontext.ray
        >>> isinstance(gocontext.ray.ChannelGone("sender gone"), ConnectionError)
        True
    """

    __module__ = "gocontext.ray"


class RemoteCause(Exception):
    """A remote context's cause, as its sender described it (causes travel as text).

    Example:
        >>> import gocontext.ray
        >>> gocontext.ray.RemoteCause("ConnectionResetError('client left')")
        RemoteCause("ConnectionResetError('client left')")
    """

    __module__ = "gocontext.ray"


class Ending(NamedTuple):
    """How a sent context ended: as ``DeadlineExceeded`` or ``Canceled``, and its cause."""

    deadline_exceeded: bool
    cause: str | None


class Link(NamedTuple):
    """What ties a sent context to its sender: the channel, the channel's id, the token."""

    channel: Any
    channel_id: str
    token: str


def session() -> str | None:
    """This process's current Ray connection (a new ``ray.init`` gets a new one), or ``None``.

    Never starts Ray: ``ray.get_runtime_context`` at the top level would.
    """
    if not _stopping and ray.is_initialized():
        try:
            return str(ray.runtime_context.get_runtime_context().get_worker_id())
        except Exception:  # Ray shutting down under us
            pass
    if _kept:
        _let_go()
    return None


# Ray objects of ours that may outlive their Ray connection (a channel handle is held by every
# context it carries). Ray aborts the process when a handle from an earlier connection is
# released under a later one, so these are let go only while Ray is down (releasing is then a
# no-op for Ray), never dropped when a new connection replaces them.
_kept: list[object] = []

_lock = threading.Lock()  # guards _kept, _sender, _watchers, _threads; never held across Ray
_sender: _Sender | None = None  # this process's channel (see _current_sender)
_watchers: dict[str, _Watcher] = {}  # by channel id
_threads: set[threading.Thread] = set()  # ours, that call Ray
_stopping = False  # ray.shutdown() is under way: nothing of ours calls Ray


def spawn(target: Callable[[], None], name: str) -> None:
    """Start a daemon thread of ours that calls Ray; ``ray.shutdown()`` waits for it."""

    def run() -> None:
        try:
            target()
        finally:
            with _lock:
                _threads.discard(thread)

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _lock:
        _threads.add(thread)
    thread.start()


def _stop() -> None:
    """Before Ray shuts down: stop our threads and drop our Ray objects, Ray still up."""
    global _stopping
    _stopping = True
    with _lock:
        threads = [t for t in _threads if t is not threading.current_thread()]
    for t in threads:
        t.join(_JOIN)
    _let_go()


def install() -> None:
    """Have ``ray.shutdown()`` and the interpreter's exit stop us first (once per process)."""
    original = ray.shutdown
    if getattr(original, "_gocontext", False):
        return

    @functools.wraps(original)
    def shutdown(*args: Any, **kwargs: Any) -> None:
        global _stopping
        _stop()
        try:
            original(*args, **kwargs)
        finally:
            _stopping = False

    shutdown._gocontext = True  # type: ignore[attr-defined]  # our mark on the wrapper
    ray.shutdown = shutdown
    atexit.register(_stop)  # runs before Ray's own exit handler, registered earlier


def keep(obj: object) -> None:
    """Hold *obj* (Ray handles or refs) until Ray is next seen down in this process."""
    with _lock:
        _kept.append(obj)


def _let_go() -> None:
    """Ray is down: drop every Ray object of ours (a later ``ray.init`` starts afresh)."""
    global _sender
    with _lock:
        gone = [*_kept, _sender, *_watchers.values()]
        _kept.clear()
        _sender = None
        _watchers.clear()
    del gone  # outside the lock: releasing runs Ray's finalizers


# --------------------------------------------------------------------------------------------
# The actor.


class _Watching:
    """The channel's view of one watcher: its tokens (by the version that added them), what
    ended among them and is not yet reported, and when it was last heard from."""

    __slots__ = ("event", "pending", "polls", "seen", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens: dict[str, int] = {}
        self.pending: dict[str, Ending] = {}
        self.event = asyncio.Event()
        self.seen = now
        self.polls = 0  # waits in progress: a watcher in a wait is alive


@ray.remote(num_cpus=0, max_concurrency=10_000)  # type: ignore[call-overload]  # ray's stubs
class Channel:
    """The actor: which tokens ended and how, and who watches them."""

    def __init__(
        self, lease: float = _LEASE, retain: float = _RETAIN, retain_max: int = _RETAIN_MAX
    ) -> None:
        self.lease, self.retain, self.retain_max = lease, retain, retain_max
        self.ended: collections.OrderedDict[str, tuple[float, Ending]] = collections.OrderedDict()
        self.watchers: dict[str, _Watching] = {}

    async def end(self, ended: dict[str, Ending]) -> None:
        """The tokens in *ended* ended, each as its value says."""
        now = time.monotonic()
        for token, ending in ended.items():
            self.ended[token] = (now, ending)
            self.ended.move_to_end(token)
            for w in self.watchers.values():
                if token in w.tokens:
                    w.pending[token] = ending
                    w.event.set()
        self._trim(now)

    async def watch(self, watcher: str, tokens: list[str], version: int) -> None:
        """A hint that *watcher* now watches *tokens*, as of its *version* (its next wait
        carries them anyway)."""
        w = self._watching(watcher)
        for token in tokens:
            w.tokens[token] = max(version, w.tokens.get(token, 0))
            self._note_if_ended(w, token)

    async def wait(
        self, watcher: str, tokens: list[str], version: int, timeout: float
    ) -> dict[str, Ending]:
        """The tokens among *tokens* that ended (they stop being watched), waiting up to
        *timeout*. *tokens* is the watcher's whole list as of its *version*; a hint newer than
        that list is kept."""
        w = self._watching(watcher)
        newer = {t: v for t, v in w.tokens.items() if v > version}
        w.tokens = dict.fromkeys(tokens, version) | newer
        w.pending = {t: e for t, e in w.pending.items() if t in w.tokens}
        for token in tokens:
            self._note_if_ended(w, token)
        if not w.pending:
            w.polls += 1
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(w.event.wait(), timeout)
            finally:
                w.polls -= 1
        w.event.clear()
        out, w.pending = w.pending, {}
        for token in out:
            w.tokens.pop(token, None)
        w.seen = time.monotonic()
        if not w.tokens and not w.polls and self.watchers.get(watcher) is w:
            del self.watchers[watcher]
        self._expire(w.seen)
        return out

    async def closed(self) -> None:
        """Never returns: its sender learns through it that the channel died."""
        await asyncio.Event().wait()

    async def size(self) -> int:
        """How many watchers and watched tokens the channel holds (for tests of clean-up)."""
        self._expire(time.monotonic())
        return sum(
            1 + len(w.tokens) + len(w.pending)
            for w in self.watchers.values()
            if w.tokens or w.pending
        )

    async def retained(self) -> int:
        """How many ended tokens the channel remembers for late watchers (bounded)."""
        self._trim(time.monotonic())
        return len(self.ended)

    def _watching(self, watcher: str) -> _Watching:
        w = self.watchers.get(watcher)
        if w is None:
            w = self.watchers[watcher] = _Watching(time.monotonic())
        return w

    def _note_if_ended(self, w: _Watching, token: str) -> None:
        ended = self.ended.get(token)
        if ended is not None:
            w.pending[token] = ended[1]
            w.event.set()

    def _expire(self, now: float) -> None:
        for watcher, w in list(self.watchers.items()):
            if not w.polls and now - w.seen > self.lease:
                del self.watchers[watcher]

    def _trim(self, now: float) -> None:
        while self.ended:
            at, _ = next(iter(self.ended.values()))
            if len(self.ended) <= self.retain_max and now - at <= self.retain:
                return
            self.ended.popitem(last=False)


# --------------------------------------------------------------------------------------------
# The sending side: one channel per process and Ray connection, a token per context sent.


class _Sender:
    def __init__(self, ray_session: str) -> None:
        self.session = ray_session
        self.channel_id = uuid.uuid4().hex
        self.channel: Any = Channel.remote()  # type: ignore[attr-defined]  # added by @ray.remote
        self.dead = False
        self.lock = threading.Lock()  # guards tokens and sending; never held across a Ray call
        self.tokens: weakref.WeakKeyDictionary[Context, str] = weakref.WeakKeyDictionary()
        # Ends to tell the channel, put by done callbacks (they take no lock of ours), sent in
        # batches by a thread that runs while contexts sent through this channel live.
        self.ends: queue.SimpleQueue[tuple[str, Ending]] = queue.SimpleQueue()
        self.sending = False
        # Pending until the actor dies; Ray then completes it, on a thread of its own.
        self.probe = self.channel.closed.remote()
        self.probe.future().add_done_callback(self._died)

    def _died(self, _: object) -> None:
        self.dead = True  # the next context sent gets a new channel

    def live(self, ray_session: str | None) -> bool:
        return not self.dead and ray_session == self.session

    def send_ends(self) -> None:
        """The sending thread: one ``Channel.end`` call for every end queued meanwhile."""
        while True:
            try:
                ends = dict([self.ends.get(timeout=_SLICE)])
            except queue.Empty:
                ends = {}
            while True:
                try:
                    token, ending = self.ends.get_nowait()
                except queue.Empty:
                    break
                ends.setdefault(token, ending)  # the first end of a token wins, as anywhere
            live = self.live(session())
            if ends and live:
                with contextlib.suppress(Exception):  # Ray shutting down under us
                    self.channel.end.remote(ends)
                continue
            with self.lock:  # an end comes from a sent context, alive: it is in tokens
                if self.ends.empty() and (not live or not self.tokens):
                    self.sending = False  # (dead or shut down: what was queued is dropped)
                    return


def _current_sender() -> _Sender:
    global _sender
    now = session()
    if now is None:
        raise RuntimeError("gocontext.ray: Ray is not running in this process")
    with _lock:
        s = _sender
    if s is not None and s.live(now):
        return s
    new = _Sender(now)  # a Ray call: outside the lock
    keep(new)
    with _lock:
        s = _sender
        if s is None or not s.live(now):
            _sender = s = new
    if s is not new:  # another thread made one first
        with contextlib.suppress(Exception):
            ray.kill(new.channel)
    return s


def sender_channel() -> Any:
    """This process's channel actor, created on first use (it dies with this process)."""
    return _current_sender().channel


def link_for(ctx: Context) -> Link:
    """The channel and token that carry *ctx*'s end; one token per context."""
    s = _current_sender()
    with s.lock:
        token = s.tokens.get(ctx)
        if token is not None:
            return Link(s.channel, s.channel_id, token)
        token = s.tokens[ctx] = uuid.uuid4().hex
        start = not s.sending
        s.sending = True
    if start:
        spawn(s.send_ends, "gocontext-ray-sender")
    ctx.done().add_callback(_Ended(weakref.ref(ctx), weakref.ref(s), token))
    return Link(s.channel, s.channel_id, token)


def end_copies(ctx: Context, failure: BaseException) -> None:
    """End the copies of *ctx* that Ray tasks received, as if *ctx* had been cancelled with
    *failure* as cause; *ctx* itself is left alone. Nothing to do if *ctx* was never sent."""
    with _lock:
        s = _sender
    if s is None or not s.live(session()):
        return
    with s.lock:
        token = s.tokens.get(ctx)
    if token is None:
        return
    original = getattr(failure, "cause", None)  # a RayTaskError's own exception
    shown = original if isinstance(original, BaseException) else failure
    s.ends.put((token, Ending(False, repr(shown)[:_CAUSE_MAX])))  # ctx is alive: s is sending


class _Ended:
    """The done callback of a sent context: tell its channel how it ended.

    It holds its sender weakly: a context that outlives its Ray connection must not be what
    releases that connection's channel handle under the next one.
    """

    __slots__ = ("ctx", "sender", "token")

    def __init__(self, ctx: weakref.ref[Context], sender: weakref.ref[_Sender], token: str) -> None:
        self.ctx, self.sender, self.token = ctx, sender, token

    def __call__(self) -> None:
        ctx, sender = self.ctx(), self.sender()
        if ctx is None or sender is None or not sender.live(session()):
            return  # Ray shut down, or the channel died: nothing to tell, no one to start
        err = ctx.err()
        c = cause(ctx)
        plain = c is None or (type(c) is type(err) and str(c) == str(err))  # no cause given
        text = None if plain else repr(c)[:_CAUSE_MAX]
        sender.ends.put((self.token, Ending(isinstance(err, DeadlineExceeded), text)))


# --------------------------------------------------------------------------------------------
# The receiving side: one watcher thread per (process, channel), running while it has work.


class _Watcher:
    def __init__(self, link: Link, ray_session: str) -> None:
        self.channel = link.channel
        self.channel_id = link.channel_id
        self.session = ray_session
        self.id = uuid.uuid4().hex
        # Guards contexts, version, fresh, running and gone; never held across a Ray call,
        # never taken by a finalizer (finalizers only put on `dropped`).
        self.lock = threading.Lock()
        self.contexts: dict[str, weakref.WeakSet[Context]] = {}
        self.version = 0  # counts the tokens added: orders the hints against the polls
        self.fresh: list[str] = []  # tokens added since the last poll or hint began
        self.running = False
        self.gone: BaseException | None = None  # set once the channel is unreachable
        self.dropped: queue.SimpleQueue[str] = queue.SimpleQueue()

    def receive(self, token: str, node: Context) -> None:
        with self.lock:
            gone = self.gone
            start = None
            if gone is None:
                nodes = self.contexts.get(token)
                if nodes is None:
                    self.version += 1
                    self.fresh.append(token)
                    nodes = self.contexts[token] = weakref.WeakSet()
                nodes.add(node)
                start = not self.running
                self.running = True
        if gone is not None:
            end_with(node, Canceled, gone)
            return
        weakref.finalize(node, self.dropped.put, token)
        if start:
            spawn(self._run, "gocontext-ray-watcher")

    def _run(self) -> None:
        idle = 0
        while True:
            self._forget_dropped()
            with self.lock:
                tokens, version = list(self.contexts), self.version
                self.fresh = []
                idle = 0 if tokens else idle + 1
                stop = idle > _IDLE_POLLS
                if stop:
                    self.running = False  # a context received from now on starts a thread
            if stop:
                self._retire()
                return
            if session() != self.session:
                self._end_all(ChannelGone("Ray was shut down in this process"))
                return
            try:
                ended = self._wait(tokens, version)
            except ray.exceptions.RayActorError:
                self._end_all(ChannelGone("the process that sent this context went away"))
                return
            except BaseException:  # Ray shutting down in this process (it raises SystemExit)
                if session() == self.session:
                    _log.exception("gocontext.ray: waiting on a channel failed; retrying")
                    time.sleep(_POLL)
                    continue
                self._end_all(ChannelGone("Ray was shut down in this process"))
                return
            if ended is None:  # Ray is shutting down in this process
                self._end_all(ChannelGone("Ray was shut down in this process"))
                return
            for token, ending in ended.items():
                with self.lock:
                    nodes = list(self.contexts.pop(token, ()))
                c = None if ending.cause is None else RemoteCause(ending.cause)
                kind = DeadlineExceeded if ending.deadline_exceeded else Canceled
                for node in nodes:
                    end_with(node, kind, c)

    def _wait(self, tokens: list[str], version: int) -> dict[str, Ending] | None:
        """One long poll, waited on in slices; ``None`` once Ray is shutting down. After each
        slice, one hint carries the tokens received meanwhile (it cuts the poll short if one
        of them ended)."""
        ref = self.channel.wait.remote(self.id, tokens, version, _POLL)
        while not ray.wait([ref], timeout=_SLICE)[0]:
            if session() != self.session:
                return None
            with self.lock:
                fresh, self.fresh, version = self.fresh, [], self.version
            if fresh:
                self.channel.watch.remote(self.id, fresh, version)
        ended: dict[str, Ending] = ray.get(ref)
        return ended

    def _forget_dropped(self) -> None:
        while True:
            try:
                token = self.dropped.get_nowait()
            except queue.Empty:
                return
            with self.lock:
                nodes = self.contexts.get(token)
                if nodes is not None and not nodes:
                    del self.contexts[token]

    def _end_all(self, gone: BaseException) -> None:
        with self.lock:
            self.gone = gone
            nodes = [n for ns in self.contexts.values() for n in ns]
            self.contexts.clear()
            self.running = False
        self._retire()
        for node in nodes:
            end_with(node, Canceled, gone)

    def _retire(self) -> None:
        """Unlist this watcher; a context received later from its channel gets a new one."""
        with _lock:
            if _watchers.get(self.channel_id) is self:
                del _watchers[self.channel_id]
        if session() != self.session:  # a new Ray connection: never release the old handle
            keep(self.channel)


def watch(link: Link, node: Context) -> None:
    """End *node* when the context behind *link* ends (or its channel dies)."""
    now = session()
    if now is None:  # unpickled with Ray down: its sender is out of reach, and Ray stays down
        end_with(node, Canceled, ChannelGone("Ray is not running in this process"))
        return
    with _lock:
        watcher = _watchers.get(link.channel_id)
        stale = watcher
        if watcher is None or watcher.session != now:
            watcher = _watchers[link.channel_id] = _Watcher(link, now)
    if stale is not None and stale is not watcher:
        keep(stale.channel)  # from an earlier Ray connection: never released under this one
    watcher.receive(link.token, node)
