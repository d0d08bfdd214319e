"""Deadlines, values and cancellation across HTTP hops: httpx transports and ASGI middleware.

The transports need httpx (``pip install 'gocontext[http-client]'``); the middleware is plain
ASGI and needs nothing more (``gocontext[http]`` installs both sides).

Example:
    >>> import httpx, gocontext.http
    >>> client = httpx.Client(transport=gocontext.http.Transport())
    >>> client.close()
"""

import importlib
from typing import TYPE_CHECKING

from ._middleware import ClientDisconnected as ClientDisconnected
from ._middleware import ContextMiddleware as ContextMiddleware

if TYPE_CHECKING:
    from ._requests import RequestsAdapter as RequestsAdapter
    from ._requests import request as request
    from ._transport import AsyncTransport as AsyncTransport
    from ._transport import Transport as Transport

__all__ = [
    "AsyncTransport",
    "ClientDisconnected",
    "ContextMiddleware",
    "RequestsAdapter",
    "Transport",
    "request",
]

# Each client loads its library on first use, so a server that only mounts the middleware needs
# no HTTP client installed, and the httpx transports need no requests: (module, extra, needs).
_LAZY = {
    "AsyncTransport": ("_transport", "http-client", ("httpx", "httpcore")),
    "Transport": ("_transport", "http-client", ("httpx", "httpcore")),
    "RequestsAdapter": ("_requests", "requests", ("requests", "urllib3")),
    "request": ("_requests", "requests", ("requests", "urllib3")),
}


def __getattr__(name: str) -> object:
    try:
        module, extra, needs = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        loaded = importlib.import_module(f"{__name__}.{module}")
    except ImportError as e:
        if e.name not in needs:
            raise
        raise ImportError(
            f"gocontext.http.{name} needs the {extra} extra ({e.name} is missing): "
            f"pip install 'gocontext[{extra}]'"
        ) from e
    value = getattr(loaded, name)
    globals()[name] = value
    return value
