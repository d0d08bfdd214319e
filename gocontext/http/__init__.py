"""Deadlines, values and cancellation across HTTP hops: httpx transports and ASGI middleware.

Needs the ``http`` extra: ``pip install 'gocontext[http]'``.

Example:
    >>> import httpx, gocontext.http
    >>> client = httpx.Client(transport=gocontext.http.Transport())
    >>> client.close()
"""

try:
    import httpx as _httpx  # noqa: F401
    import starlette as _starlette  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"gocontext.http needs the http extra ({e.name} is missing): pip install 'gocontext[http]'"
    ) from e

from ._middleware import ClientDisconnected as ClientDisconnected
from ._middleware import ContextMiddleware as ContextMiddleware
from ._transport import AsyncTransport as AsyncTransport
from ._transport import Transport as Transport

__all__ = ["AsyncTransport", "ClientDisconnected", "ContextMiddleware", "Transport"]
