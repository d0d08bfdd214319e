"""Hostile arguments to the async bridge (sleep, scope, to_thread), driven by hypothesis: each
call answers with a TypeError or ValueError that names it, or works; it never hangs, crashes
the event loop, or raises anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gocontext

from .conftest import NEVER


class Hostile:
    """Every comparison, hash and truth test raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__")


class HalfContext:
    """Has done() and err() but no deadline() or value()."""

    def done(self) -> gocontext.Done:
        return gocontext.background().done()

    def err(self) -> None:
        return None


def cancelled() -> gocontext.Context:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    cancel()
    return ctx


CONTEXTS: list[Callable[[], object]] = [
    lambda: gocontext.with_timeout(gocontext.background(), 0.01)[0],  # bounds a valid sleep
    cancelled,
    lambda: None,
    lambda: "ctx",
    lambda: 42,
    HalfContext,
    lambda: gocontext.background().done(),
]
SECONDS: list[Callable[[], object]] = [
    lambda: math.nan,
    lambda: math.inf,
    lambda: -math.inf,
    lambda: 10**400,
    lambda: -(10**400),
    lambda: True,
    lambda: None,
    lambda: "1",
    lambda: 0,
    lambda: -1e300,
    lambda: 0.001,
    Hostile,
]
FUNCTIONS: list[Callable[[], object]] = [
    lambda: lambda c: "ran",
    lambda: None,
    lambda: 42,
    lambda: "fn",
    Hostile,
]


def outcome(call: str, e: BaseException | None) -> None:
    """Fine: no exception, the context's own error, or a Type/ValueError naming *call*."""
    if e is None or isinstance(e, gocontext.ContextError):
        return
    assert type(e) in (TypeError, ValueError), repr(e)
    assert f"{call}()" in str(e), str(e)


def run(backend: str, body: Callable[[], Any]) -> None:
    async def main() -> None:
        with anyio.fail_after(NEVER):
            await body()
        await anyio.sleep(0)  # the loop is still fine

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["sleep", "scope", "to_thread"]),
    c=st.integers(0, len(CONTEXTS) - 1),
    s=st.integers(0, len(SECONDS) - 1),
    f=st.integers(0, len(FUNCTIONS) - 1),
)
def test_hostile_arguments_are_clear_errors(
    backend: str, which: str, c: int, s: int, f: int
) -> None:
    # drawn as indexes, built here: hypothesis never hashes or compares a hostile object
    ctx: Any = CONTEXTS[c]()
    seconds, fn = SECONDS[s](), FUNCTIONS[f]()

    async def body() -> None:
        try:
            if which == "sleep":
                await gocontext.sleep(ctx, seconds)  # type: ignore[arg-type]
            elif which == "scope":
                async with gocontext.scope(ctx):
                    await anyio.sleep(0)
            else:
                await gocontext.to_thread(ctx, fn)  # type: ignore[arg-type]
        except Exception as e:
            outcome(which, e)
        else:
            outcome(which, None)

    run(backend, body)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("which", ["sleep", "scope", "to_thread"])
def test_a_context_whose_every_dunder_raises_is_a_type_error(backend: str, which: str) -> None:
    ctx: Any = Hostile()

    async def body() -> None:
        try:
            if which == "sleep":
                await gocontext.sleep(ctx, 0)
            elif which == "scope":
                async with gocontext.scope(ctx):
                    pass
            else:
                await gocontext.to_thread(ctx, lambda c: None)
        except Exception as e:
            outcome(which, e)
        else:
            raise AssertionError("accepted")

    run(backend, body)


def test_hostile_keys_reach_values_through_the_ambient_context() -> None:
    """A scope's child looks values up like any context: a hostile key is the caller's own."""
    ctx = gocontext.with_value(gocontext.background(), "k", "v")

    async def main() -> None:
        async with gocontext.scope(ctx) as child:
            assert child.value("k") == "v"
            key: Hashable = Hostile()
            with pytest.raises(RuntimeError):
                child.value(key)

    anyio.run(main)
