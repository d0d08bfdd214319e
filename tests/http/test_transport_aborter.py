"""The blocking transport's aborter when the context ends at awkward moments."""

from __future__ import annotations

import socket
import threading

import pytest

from gocontext.http._transport import _Aborted, _Aborter

from ..conftest import NEVER


def test_an_abort_run_by_a_finalizer_while_attach_holds_the_lock_does_not_deadlock() -> None:
    """The garbage collector may run a finalizer that ends the context (and so calls abort())
    in the middle of attach(), in the same thread, while the aborter's lock is held."""
    aborter = _Aborter()

    class EndsTheContextOnAdd(set[socket.socket]):
        def add(self, sock: socket.socket) -> None:
            aborter.abort()  # what a finalizer run during the allocation would do
            super().add(sock)

    aborter.sockets = EndsTheContextOnAdd()
    a, b = socket.socketpair()
    outcome: list[BaseException | None] = []

    def attach() -> None:
        try:
            aborter.attach(a)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    try:
        t = threading.Thread(target=attach, daemon=True)
        t.start()
        t.join(NEVER)
        assert not t.is_alive(), "attach() deadlocked on its own lock"
        assert len(outcome) == 1
        assert isinstance(outcome[0], _Aborted)  # the request learns of the end
    finally:
        a.close()
        b.close()


def test_attach_after_an_abort_raises_and_a_finished_request_is_never_aborted() -> None:
    a, b = socket.socketpair()
    try:
        aborter = _Aborter()
        aborter.attach(a)
        aborter.finish()
        aborter.abort()  # after finish: the connection may serve another request
        assert not aborter.aborted
        a.sendall(b"x")  # still usable
        assert b.recv(1) == b"x"
        other = _Aborter()
        other.abort()
        with pytest.raises(_Aborted):
            other.attach(a)
    finally:
        a.close()
        b.close()
