"""Deadlines, values and cancellation across aiohttp hops: a client session and a web middleware.

Needs the ``aiohttp`` extra: ``pip install 'gocontext[aiohttp]'``. aiohttp runs on asyncio
only, so these do too (a trio program can use ``gocontext.http`` with httpx instead).

Example:
    >>> import aiohttp.web, gocontext.aiohttp
    >>> app = aiohttp.web.Application(middlewares=[gocontext.aiohttp.middleware(max_timeout=30)])
"""

try:
    import aiohttp as _aiohttp  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"gocontext.aiohttp needs the aiohttp extra ({e.name} is missing): "
        "pip install 'gocontext[aiohttp]'"
    ) from e

from ._client import client_session as client_session
from ._client import trace_config as trace_config
from ._server import middleware as middleware

__all__ = ["client_session", "middleware", "trace_config"]
