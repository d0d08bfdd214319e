"""to_thread(): blocking code under a child context, never an abandoned thread."""

from __future__ import annotations

import threading

import anyio
import pytest

import gocontext
from gocontext._async import FrameworkCancelled

from .conftest import NEVER


async def test_returns_the_result_and_passes_a_live_child() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def work(child: gocontext.Context, a: int, b: int) -> tuple[int, bool]:
        return a + b, child.err() is None and child.value("k") == "v"

    ctx2 = gocontext.with_value(ctx, "k", "v")
    assert await gocontext.to_thread(ctx2, work, 1, 2) == (3, True)
    cancel()


async def test_the_functions_exception_is_raised_unchanged() -> None:
    def boom(child: gocontext.Context) -> None:
        raise LookupError("from the thread")

    with pytest.raises(LookupError, match="from the thread"):
        await gocontext.to_thread(gocontext.background(), boom)


async def test_the_ambient_context_is_copied_into_the_thread() -> None:
    ctx, _ = gocontext.with_cancel(gocontext.background())
    with gocontext.use(ctx):
        seen = await gocontext.to_thread(gocontext.background(), lambda _c: gocontext.current())
    assert seen is ctx


async def test_a_cancelled_task_cancels_the_child_and_waits_for_the_thread() -> None:
    started = threading.Event()
    finished = threading.Event()
    saw: list[BaseException | None] = []

    def work(child: gocontext.Context) -> None:
        started.set()
        child.done().wait(NEVER)
        saw.append(gocontext.cause(child))
        finished.set()

    with anyio.fail_after(NEVER):
        with anyio.CancelScope() as cs:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await gocontext.to_thread(gocontext.background(), work)

                tg.start_soon(run)
                await anyio.to_thread.run_sync(started.wait, NEVER)
                cs.cancel()
        assert cs.cancelled_caught
    assert finished.is_set()  # the await returned only after the thread did
    assert isinstance(saw[0], FrameworkCancelled)


async def test_the_parent_context_ending_reaches_the_thread() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())

    def work(child: gocontext.Context) -> str:
        threading.Thread(target=cancel).start()
        child.done().wait(NEVER)
        child.check()  # type: ignore[attr-defined]
        return "not reached"

    with anyio.fail_after(NEVER), pytest.raises(gocontext.Canceled):
        await gocontext.to_thread(ctx, work)


async def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="Context"):
        await gocontext.to_thread(None, print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        await gocontext.to_thread(gocontext.background(), 42)  # type: ignore[arg-type]
