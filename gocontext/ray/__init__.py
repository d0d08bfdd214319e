"""Contexts as Ray task arguments: one cancel stops a tree of tasks across a Ray cluster.

Needs the ``ray`` extra: ``pip install 'gocontext[ray]'``. Importing this module is what lets
contexts be passed to Ray tasks and actor methods; a worker that receives one imports it by
itself.

Example:
    >>> import gocontext, gocontext.ray
    >>> callable(gocontext.ray.get)
    True
"""

try:
    import ray as _ray  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "gocontext.ray needs the ray extra (ray is missing): pip install 'gocontext[ray]'"
    ) from e

from ._channel import ChannelGone as ChannelGone
from ._channel import RemoteCause as RemoteCause
from ._get import get as get
from ._get import get_async as get_async
from ._get import wait as wait
from ._serialize import install as _install

_install()

__all__ = ["ChannelGone", "RemoteCause", "get", "get_async", "wait"]
