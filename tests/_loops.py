"""Which event loop runs the current task, and how to reach it from another thread, told
without the library's private helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def on_trio() -> bool:
    """Whether the running loop is trio's (the tests run on asyncio or trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def post_from_thread() -> Callable[[Callable[[], object]], object]:
    """The running loop's thread-safe entry: a function that runs fn() in this loop."""
    if on_trio():
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe
