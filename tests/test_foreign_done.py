"""User-written Done signals that misbehave: a clear error at our boundary, never a broken run.

trio runs the abort callback of a parked task inside its scheduler, where an exception is a
``TrioInternalError`` that ends the whole run; so no code of the user's runs there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import anyio
import pytest

import gocontext
from gocontext._done import CallbackHandle

from .conftest import NEVER


class RaisingHandle:
    def cancel(self) -> bool:
        raise RuntimeError("handle broke")


class WorkingHandle:
    def __init__(self, callbacks: list[Callable[[], object]], fn: Callable[[], object]) -> None:
        self.callbacks, self.fn = callbacks, fn

    def cancel(self) -> bool:
        if self.fn in self.callbacks:
            self.callbacks.remove(self.fn)
            return True
        return False


class BrokenDone(gocontext.Done):
    """Never set by itself; its add_callback() returns what *make_handle* makes, after
    *spare* working handles (what deriving a child from it registers is not under test)."""

    def __init__(self, make_handle: Callable[[], object], spare: int = 0) -> None:
        self.make_handle = make_handle
        self.spare = spare
        self.callbacks: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        return False

    def add_callback(self, fn: Callable[[], object], /) -> CallbackHandle:
        self.callbacks.append(fn)
        if self.spare:
            self.spare -= 1
            return WorkingHandle(self.callbacks, fn)
        return self.make_handle()  # type: ignore[return-value]  # broken on purpose


class BrokenContext:
    """A user-written Context whose done() is a BrokenDone."""

    def __init__(self, done: BrokenDone) -> None:
        self._done = done

    def deadline(self) -> float | None:
        return None

    def done(self) -> gocontext.Done:
        return self._done

    def err(self) -> gocontext.ContextError | None:
        return None

    def value(self, key: Hashable, /) -> object:
        return None


HANDLES = {"cancel raises": RaisingHandle, "returns None": lambda: None}
ERRORS = {
    "cancel raises": (RuntimeError, r"cancel\(\) of the handle BrokenDone.add_callback\(\)"),
    "returns None": (TypeError, r"BrokenDone.add_callback\(\) must return a handle"),
}


@pytest.fixture(params=list(HANDLES))
def broken(request: pytest.FixtureRequest) -> tuple[BrokenDone, type[Exception], str]:
    kind = str(request.param)
    error, match = ERRORS[kind]
    return BrokenDone(HANDLES[kind]), error, match


async def test_await_cancelled_by_its_framework_is_a_clear_error_and_the_run_goes_on(
    broken: tuple[BrokenDone, type[Exception], str],
) -> None:
    done, error, match = broken
    raised: list[BaseException] = []

    async def waiter(cs: anyio.CancelScope) -> None:
        with cs:
            try:
                await done
            except BaseException as e:
                raised.append(e)

    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:
            cs = anyio.CancelScope()
            tg.start_soon(waiter, cs)
            await anyio.wait_all_tasks_blocked()
            cs.cancel()  # trio aborts the parked wait
        await anyio.sleep(0)  # the run is alive
    with pytest.raises(error, match=match):
        raise raised[0]
    assert isinstance(raised[0].__cause__, (RuntimeError, AttributeError))  # the user's own
    assert isinstance(raised[0].__cause__.__context__, anyio.get_cancelled_exc_class())


async def test_await_woken_by_the_done_is_a_clear_error(
    broken: tuple[BrokenDone, type[Exception], str],
) -> None:
    done, error, match = broken

    async def fire_soon() -> None:
        await anyio.wait_all_tasks_blocked()
        for fn in done.callbacks:
            fn()

    raised: list[BaseException] = []
    with anyio.fail_after(NEVER):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fire_soon)
            try:
                await done
            except Exception as e:
                raised.append(e)
    await anyio.sleep(0)
    with pytest.raises(error, match=match):
        raise raised[0]


async def test_sleep_that_times_out_is_a_clear_error_and_the_run_goes_on(
    broken: tuple[BrokenDone, type[Exception], str],
) -> None:
    done, error, match = broken
    with anyio.fail_after(NEVER), pytest.raises(error, match=match):
        await gocontext.sleep(BrokenContext(done), 0)  # trio aborts the wait at its deadline
    await anyio.sleep(0)


async def test_a_scope_over_it_is_a_clear_error_and_leaves_the_cancel_scopes_intact(
    broken: tuple[BrokenDone, type[Exception], str],
) -> None:
    done, error, match = broken
    done.spare = 1  # the child's own registration, made by the core
    with anyio.fail_after(NEVER):
        with anyio.CancelScope() as outer:
            with pytest.raises(error, match=match):
                async with gocontext.scope(BrokenContext(done)):
                    await anyio.sleep(0)
            outer.cancel()
            await anyio.sleep(NEVER)  # the cancel scope stack still works
        assert outer.cancelled_caught
