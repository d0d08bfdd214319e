"""Deadlines, values and cancellation across HTTP hops: httpx transports and ASGI middleware.

The transports need httpx (``pip install 'gocontext[http-client]'``); the middleware is plain
ASGI and needs nothing more (``gocontext[http]`` installs both sides).

Example:
    >>> import httpx, gocontext.http
    >>> client = httpx.Client(transport=gocontext.http.Transport())
    >>> client.close()
"""

from typing import TYPE_CHECKING

from ._middleware import ClientDisconnected as ClientDisconnected
from ._middleware import ContextMiddleware as ContextMiddleware

if TYPE_CHECKING:
    from ._transport import AsyncTransport as AsyncTransport
    from ._transport import Transport as Transport

__all__ = ["AsyncTransport", "ClientDisconnected", "ContextMiddleware", "Transport"]


def __getattr__(name: str) -> object:
    # The transports load httpx on first use, so a server that only mounts the middleware
    # needs no HTTP client installed.
    if name not in ("AsyncTransport", "Transport"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _transport
    except ImportError as e:
        if e.name not in ("httpx", "httpcore"):
            raise
        raise ImportError(
            f"gocontext.http.{name} needs the http-client extra ({e.name} is missing): "
            "pip install 'gocontext[http-client]'"
        ) from e
    globals().update(AsyncTransport=_transport.AsyncTransport, Transport=_transport.Transport)
    return getattr(_transport, name)
