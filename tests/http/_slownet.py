"""A network namespace whose one peer answers after a real delay: a TCP handshake that takes
as long as a cross-region one, on this machine.

The namespace has a TUN device ``10.77.0.1/24``. Packets sent to ``10.77.0.2`` come out of the
device into a reflector thread, which writes each one back after ``delay`` seconds with its
source and destination addresses swapped (swapping them leaves both checksums valid). So a
connect to ``10.77.0.2:port`` reaches a listener on ``10.77.0.1:port`` in the same namespace,
and every packet, the SYN and the SYN-ACK included, spends ``delay`` seconds on the way. With
``drop_syn`` set, the reflector drops connection requests instead: a peer that never answers.

Only the threads that enter the namespace (``SlowNet.enter()``) see it; sockets keep the
namespace they were made in. Needs root, ``ip`` and ``/dev/net/tun``; ``SlowNet.skip_reason()``
says why not.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_SYN, _ACK = 0x02, 0x10

LOCAL = "10.77.0.1"
PEER = "10.77.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class SlowNet:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.drop_syn = False
        self.syns = 0  # connection requests seen (SYN without ACK)
        self.syn_seen = threading.Event()
        self.name = f"gocx-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None

    @staticmethod
    def skip_reason() -> str | None:
        if os.geteuid() != 0:
            return "needs root for a network namespace"
        if shutil.which("ip") is None:
            return "needs the ip command"
        if not os.path.exists("/dev/net/tun"):
            return "needs /dev/net/tun"
        return None

    def enter(self) -> None:
        """Move the calling thread into the namespace (for good: use a thread of its own)."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(fd)

    def __enter__(self) -> SlowNet:
        _ip("netns", "add", self.name)
        try:
            self._make_device()
            _ip("-n", self.name, "addr", "add", f"{LOCAL}/24", "dev", "gtun0")
            _ip("-n", self.name, "link", "set", "gtun0", "up")
            self._thread = threading.Thread(target=self._reflect, daemon=True)
            self._thread.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _make_device(self) -> None:
        """Open the TUN device from a thread in the namespace: the device is made there."""
        error: list[BaseException] = []

        def make() -> None:
            try:
                self.enter()
                self._fd = os.open("/dev/net/tun", os.O_RDWR)
                ifr = struct.pack("16sH22x", b"gtun0", _IFF_TUN | _IFF_NO_PI)
                fcntl.ioctl(self._fd, _TUNSETIFF, ifr)
            except BaseException as e:
                error.append(e)

        t = threading.Thread(target=make)
        t.start()
        t.join(30)
        if error:
            raise error[0]

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._fd >= 0:
            os.close(self._fd)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def _reflect(self) -> None:
        due: list[tuple[float, int, bytes]] = []
        n = 0
        while not self._stop.is_set():
            wait = 0.05 if not due else max(0.0, min(0.05, due[0][0] - time.monotonic()))
            readable, _, _ = select.select([self._fd], [], [], wait)
            if readable:
                packet = os.read(self._fd, 65536)
                if len(packet) >= 20 and packet[0] >> 4 == 4 and packet[9] == socket.IPPROTO_TCP:
                    ihl = (packet[0] & 0x0F) * 4
                    flags = packet[ihl + 13] if len(packet) > ihl + 13 else 0
                    if flags & _SYN and not flags & _ACK:
                        self.syns += 1
                        self.syn_seen.set()
                        if self.drop_syn:
                            continue
                    swapped = packet[:12] + packet[16:20] + packet[12:16] + packet[20:]
                    n += 1
                    heapq.heappush(due, (time.monotonic() + self.delay, n, swapped))
            now = time.monotonic()
            while due and due[0][0] <= now:
                os.write(self._fd, heapq.heappop(due)[2])


def serve(
    listener: socket.socket, stop: threading.Event, answer: Callable[[socket.socket], None]
) -> threading.Thread:
    """Accept every connection on *listener* and ``answer(conn)`` it, until *stop* is set."""

    def run() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                answer(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _answer_ok(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def serve_http(listener: socket.socket, stop: threading.Event) -> threading.Thread:
    """Answer every connection on *listener* with ``200 ok`` until *stop* is set."""
    return serve(listener, stop, _answer_ok)


def cancel_at_the_first_syn(
    net: SlowNet, cancel: Callable[[], object], bound: float
) -> threading.Thread:
    """A thread that calls ``cancel()`` once *net* has seen a connection request."""

    def run() -> None:
        assert net.syn_seen.wait(bound)
        cancel()

    t = threading.Thread(target=run)
    t.start()
    return t
