"""Deadlines, values and cancellation across HTTP hops: httpx transports and ASGI middleware.

Needs the ``http`` extra: ``pip install 'gocontext[http]'``.

Example:
    >>> import httpx, gocontext.http
    >>> client = httpx.Client(transport=gocontext.http.Transport())
    >>> client.close()
"""

from typing import TYPE_CHECKING

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

__all__ = [
    "AsyncTransport",
    "ClientDisconnected",
    "ContextMiddleware",
    "RequestsAdapter",
    "Transport",
    "request",
]

if TYPE_CHECKING:
    from ._requests import RequestsAdapter as RequestsAdapter
    from ._requests import request as request


def __getattr__(name: str) -> object:
    # requests is its own extra: imported on first use, so [http] alone still works.
    if name in ("RequestsAdapter", "request"):
        try:
            from . import _requests
        except ImportError as e:
            raise ImportError(
                f"gocontext.http.{name} needs the requests extra ({e.name} is missing): "
                "pip install 'gocontext[requests]'"
            ) from e
        return getattr(_requests, name)
    raise AttributeError(f"module 'gocontext.http' has no attribute {name!r}")
