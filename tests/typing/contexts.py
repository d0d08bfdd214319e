"""A user-written context, as the contract writes one: four methods, ``value`` untyped. It
wraps another context (Go's ``otherContext`` in its tests). The runtime tests use it as the
foreign parent; mypy and pyright check it and the API against it."""

from __future__ import annotations

from typing import Any

import gocontext


class OtherContext:
    """A user-written Context that wraps another: no extras, nothing of ours inside."""

    def __init__(self, inner: gocontext.Context) -> None:
        self.inner = inner

    def deadline(self) -> float | None:
        return self.inner.deadline()

    def done(self) -> gocontext.Done:
        return self.inner.done()

    def err(self) -> gocontext.ContextError | None:
        return self.inner.err()

    def value(self, key: Any, /) -> Any:
        return self.inner.value(key)
