"""A blocking TCP connect that a cancel from another thread can interrupt: one handshake per
address, however long it takes.

Shared by the blocking transports (httpx's ``Transport``, ``RequestsAdapter``). A thread blocked
in ``connect()`` cannot be woken from another thread, and a connect retried in short slices
starts the handshake again on each: a peer 150 ms away would never be reached. So each socket
is handed to the request's aborter (``attach``) before ``connect()``, which runs non-blocking
and is waited on in ``poll()`` slices: an abort shuts the socket down, which wakes ``poll()``
at once on Linux, and elsewhere within a slice (``aborted()`` is asked after each). The
handshake goes on across slices: the socket is the same one.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["HAS_POLL", "ConnectAborted", "connect"]

HAS_POLL = hasattr(select, "poll")  # not on Windows: connects there go the library's own way
_SLICE = 0.1  # seconds between looks at aborted(), where a shutdown does not wake poll()
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN})


class ConnectAborted(Exception):
    """The request's context ended while it was connecting."""


def connect(
    host: str,
    port: int,
    timeout: float | None,
    *,
    attach: Callable[[socket.socket], None],
    aborted: Callable[[], bool],
    family: int = 0,
    source_address: tuple[str, int] | None = None,
    socket_options: Iterable[Any] | None = None,
) -> socket.socket:
    """A connected socket to *host*:*port*, in blocking mode, each address tried in turn.

    ``attach(sock)`` registers each new socket with the aborter before it connects (and may
    raise, if the request has ended already); *socket_options* are set before it connects.
    Raises ``ConnectAborted`` once ``aborted()``, ``TimeoutError`` when *timeout* (for all the
    addresses together) runs out, ``socket.gaierror`` from name resolution (which is neither
    abortable nor bounded by *timeout*, as in the libraries), else the last address's
    ``OSError``.
    """
    end = None if timeout is None else time.monotonic() + timeout
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    error: OSError = OSError(f"getaddrinfo returned nothing for {host!r}")
    for af, kind, proto, _, address in infos:
        sock = socket.socket(af, kind, proto)
        try:
            attach(sock)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if source_address is not None:
                sock.bind(source_address)
            _wait_connected(sock, address, end, aborted)
            sock.setblocking(True)
        except TimeoutError:  # (an OSError too, but the time is up for every address)
            sock.close()
            raise
        except OSError as e:
            sock.close()
            if aborted():
                raise ConnectAborted("the request's context ended") from e
            error = e
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


def _wait_connected(
    sock: socket.socket, address: Any, end: float | None, aborted: Callable[[], bool]
) -> None:
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code in _IN_PROGRESS:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while True:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out")
            wait = _SLICE if left is None else min(left, _SLICE)
            ready = poller.poll(math.ceil(wait * 1000))
            if aborted():
                raise ConnectAborted("the request's context ended")
            if ready:
                break
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))
