"""Deadlines, values and cancellation across gRPC calls: client channels, and interceptors.

Needs the ``grpc`` extra: ``pip install 'gocontext[grpc]'``. The deadline travels as gRPC's
own; ``PropagatedKey`` values in ``baggage`` metadata; a cancel as gRPC's own cancellation.

Example:
    >>> import grpc, gocontext.grpc
    >>> server = grpc.server(
    ...     __import__("concurrent.futures").futures.ThreadPoolExecutor(2),
    ...     interceptors=[gocontext.grpc.server_interceptor()],
    ... )
"""

try:
    import grpc as _grpc  # type: ignore[import-untyped]  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"gocontext.grpc needs the grpc extra ({e.name} is missing): pip install 'gocontext[grpc]'"
    ) from e

from ._client import aio_channel as aio_channel
from ._client import aio_client_interceptors as aio_client_interceptors
from ._client import channel as channel
from ._client import client_interceptors as client_interceptors
from ._server import aio_server_interceptor as aio_server_interceptor
from ._server import context_of as context_of
from ._server import server_interceptor as server_interceptor

__all__ = [
    "aio_channel",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "channel",
    "client_interceptors",
    "context_of",
    "server_interceptor",
]
