"""The cancellation channel: a Ray actor per process that passes contexts on.

Each process that sends a context to Ray (a driver, or a worker passing one further) owns one
``Channel`` actor, created on first use and not detached, so it dies with its owner. A context
sent through it gets a token; when the context ends, the owner tells the channel, which wakes
every worker watching that token. Each worker process runs one watcher thread for all the
contexts it received from one channel, long-polling ``Channel.wait`` with the set of tokens it
watches; a channel that has died (its owner is gone) ends every context it carried.

State is per token and is dropped once the token has ended and no worker watches it, or once
its sender has let it go, so the channel's memory returns to its baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
import weakref
from typing import Any

import ray

from .._context import Context, cancel_with_cause

__all__ = ["Channel", "ChannelGone", "sender_channel", "watch"]

_log = logging.getLogger("gocontext")

POLL = 1.0  # seconds a wait lasts at most; a new token or an end cuts it short


class ChannelGone(ConnectionError):
    """The cause recorded on a remote context whose sender's process went away."""

    __module__ = "gocontext.ray"


@ray.remote(num_cpus=0, max_concurrency=10_000)  # type: ignore[call-overload]  # ray's stubs
class Channel:
    """The actor: which tokens ended (with their error kind and cause), who waits on them."""

    def __init__(self) -> None:
        self.ended: dict[str, tuple[str, str | None]] = {}
        self.live: set[str] = set()
        self.released: set[str] = set()  # the sender let these go: forget them once unwatched
        self.watchers: dict[str, set[str]] = {}  # watcher id -> tokens it watches
        self.wakeups: dict[str, asyncio.Event] = {}

    async def register(self, token: str) -> None:
        self.live.add(token)

    async def end(self, token: str, kind: str, cause: str | None) -> None:
        self.live.discard(token)
        self.ended[token] = (kind, cause)
        for watcher, tokens in self.watchers.items():
            if token in tokens:
                self.wakeups.setdefault(watcher, asyncio.Event()).set()
        self._forget_unwatched(token)

    async def release(self, token: str) -> None:
        """The sender let its context go: nothing more will come for this token."""
        self.live.discard(token)
        self.released.add(token)
        self._forget_unwatched(token)

    async def watch(self, watcher: str, token: str) -> None:
        self.watchers.setdefault(watcher, set()).add(token)
        if token in self.ended:
            self.wakeups.setdefault(watcher, asyncio.Event()).set()

    async def unwatch(self, watcher: str, token: str) -> None:
        tokens = self.watchers.get(watcher)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self.watchers[watcher]
                self.wakeups.pop(watcher, None)
        self._forget_unwatched(token)

    async def wait(self, watcher: str, timeout: float) -> dict[str, tuple[str, str | None]]:
        """The watched tokens that ended (they stop being watched), waiting up to *timeout*."""
        event = self.wakeups.setdefault(watcher, asyncio.Event())
        if not self._ended_for(watcher):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        event.clear()
        out = self._ended_for(watcher)
        tokens = self.watchers.get(watcher, set())
        for token in out:
            tokens.discard(token)
        if not tokens:
            self.watchers.pop(watcher, None)
        for token in out:
            self._forget_unwatched(token)
        return out

    async def size(self) -> int:
        """How many tokens and watchers the channel holds (for tests of clean-up)."""
        return len(self.ended) + len(self.live) + len(self.released) + len(self.watchers)

    def _ended_for(self, watcher: str) -> dict[str, tuple[str, str | None]]:
        return {t: self.ended[t] for t in self.watchers.get(watcher, ()) if t in self.ended}

    def _forget_unwatched(self, token: str) -> None:
        # An ended token is kept until its sender lets it go: a worker may still be about to
        # watch it (the task was queued), and must then learn at once that it ended.
        if token not in self.released:
            return
        if any(token in tokens for tokens in self.watchers.values()):
            return
        self.ended.pop(token, None)
        self.released.discard(token)


# --------------------------------------------------------------------------------------------
# The sending side: one channel per process, a token per context sent.

_lock = threading.Lock()
_channel: Any = None
_tokens: weakref.WeakKeyDictionary[Context, str] = weakref.WeakKeyDictionary()


def sender_channel() -> Any:
    """This process's channel actor, created on first use (it dies with this process)."""
    global _channel
    with _lock:
        if _channel is None:
            _channel = Channel.remote()  # type: ignore[attr-defined]
        return _channel


def token_for(ctx: Context) -> tuple[Any, str]:
    """The channel and token that carry *ctx*'s end; registered once per context."""
    channel = sender_channel()
    with _lock:
        token = _tokens.get(ctx)
        if token is not None:
            return channel, token
        token = uuid.uuid4().hex
        _tokens[ctx] = token
    channel.register.remote(token)

    def ended() -> None:
        e = ctx.err()
        kind = type(e).__name__ if e is not None else "Canceled"
        from .._context import cause

        c = cause(ctx)
        channel.end.remote(token, kind, None if c is None or c is e else repr(c))

    ctx.done().add_callback(ended)
    # Once the sender's context is gone (it is held while live by its watched ancestors), the
    # channel may forget the token when no worker watches it any more.
    weakref.finalize(ctx, _release, channel, token)
    return channel, token


def _release(channel: Any, token: str) -> None:
    if ray.is_initialized():  # never start Ray again at exit
        with contextlib.suppress(Exception):  # the process may be shutting down
            channel.release.remote(token)


# --------------------------------------------------------------------------------------------
# The receiving side: one watcher thread per (process, channel).


class _Watcher:
    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.id = uuid.uuid4().hex
        self.lock = threading.Lock()
        self.contexts: dict[str, weakref.WeakSet[Any]] = {}
        self.thread = threading.Thread(target=self._run, name="gocontext-ray-watcher", daemon=True)
        self.thread.start()

    # watch() and unwatch() are submitted under the lock: Ray runs one caller's actor calls in
    # submission order, so a token dropped and received again is never left unwatched.

    def add(self, token: str, node: Context) -> None:
        with self.lock:
            nodes = self.contexts.get(token)
            if nodes is None:
                nodes = self.contexts[token] = weakref.WeakSet()
            if not nodes:  # one watch per token and process, however many tasks received it
                self.channel.watch.remote(self.id, token)
            nodes.add(node)
        weakref.finalize(node, self._drop, token)

    def _drop(self, token: str) -> None:
        with self.lock:
            nodes = self.contexts.get(token)
            if nodes is None or len(nodes) > 0:
                return
            del self.contexts[token]
            if ray.is_initialized():  # never start Ray again at exit
                with contextlib.suppress(Exception):  # the process may be shutting down
                    self.channel.unwatch.remote(self.id, token)

    def _run(self) -> None:
        from .._errors import Canceled, DeadlineExceeded

        while True:
            try:
                ended = ray.get(self.channel.wait.remote(self.id, POLL))
            except ray.exceptions.RayActorError:
                self._end_all(ChannelGone("the process that sent this context went away"))
                return
            except BaseException:  # Ray shutting down in this process (it raises SystemExit)
                return
            for token, (kind, cause_text) in ended.items():
                with self.lock:
                    nodes = list(self.contexts.pop(token, ()))
                cause = None if cause_text is None else RemoteCause(cause_text)
                err = DeadlineExceeded if kind == "DeadlineExceeded" else Canceled
                for node in nodes:
                    cancel_with_cause(node, cause, err)

    def _end_all(self, cause: BaseException) -> None:
        with self.lock:
            nodes = [n for ns in self.contexts.values() for n in ns]
            self.contexts.clear()
        for node in nodes:
            cancel_with_cause(node, cause)


class RemoteCause(Exception):
    """A remote context's cause, as its sender described it (causes travel as text)."""

    __module__ = "gocontext.ray"


_watchers: dict[Any, _Watcher] = {}


def watch(channel: Any, token: str, node: Context) -> None:
    """End *node* when the context behind *token* ends (or its channel dies)."""
    key = channel._actor_id.hex()
    with _lock:
        watcher = _watchers.get(key)
        if watcher is None or not watcher.thread.is_alive():
            watcher = _watchers[key] = _Watcher(channel)
    watcher.add(token, node)
