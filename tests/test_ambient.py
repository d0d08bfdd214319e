"""The ambient context follows threads, asyncio tasks and trio tasks."""

from __future__ import annotations

import contextvars
import threading

import anyio
import pytest

import gocontext


def test_current_is_background_when_unset() -> None:
    assert gocontext.current() is gocontext.background()


def test_use_sets_and_restores_and_nests() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    b = gocontext.with_value(a, "k", 1)
    with gocontext.use(a):
        assert gocontext.current() is a
        with gocontext.use(b) as got:
            assert got is b
            assert gocontext.current() is b
        assert gocontext.current() is a
    assert gocontext.current() is gocontext.background()


def test_use_restores_when_the_block_raises() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    with pytest.raises(KeyError), gocontext.use(a):
        raise KeyError("x")
    assert gocontext.current() is gocontext.background()


def test_use_is_not_reentrant() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    scope = gocontext.use(a)
    with scope, pytest.raises(RuntimeError, match="reentrant"), scope:
        pass


def test_a_new_thread_starts_with_the_background_and_copy_context_carries_it() -> None:
    a, _ = gocontext.with_cancel(gocontext.background())
    seen: list[gocontext.Context] = []
    with gocontext.use(a):
        t = threading.Thread(target=lambda: seen.append(gocontext.current()))
        copied = contextvars.copy_context()
        t2 = threading.Thread(target=copied.run, args=(lambda: seen.append(gocontext.current()),))
    t.start()
    t.join()
    t2.start()
    t2.join()
    assert seen == [gocontext.background(), a]


async def test_tasks_inherit_the_ambient_context_and_keep_their_own() -> None:
    parent, _ = gocontext.with_cancel(gocontext.background())
    seen: dict[str, gocontext.Context] = {}
    entered = anyio.Event()
    release = anyio.Event()

    async def child(name: str) -> None:
        seen[name + "-start"] = gocontext.current()
        own = gocontext.with_value(gocontext.current(), "name", name)
        with gocontext.use(own):
            if name == "a":
                entered.set()
                await release.wait()
            seen[name + "-inside"] = gocontext.current()

    with gocontext.use(parent):
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "a")
            await entered.wait()
            tg.start_soon(child, "b")
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert gocontext.current() is parent
    assert seen["a-start"] is parent
    assert seen["b-start"] is parent
    assert seen["a-inside"].value("name") == "a"
    assert seen["b-inside"].value("name") == "b"


async def test_worker_threads_started_by_anyio_see_the_ambient_context() -> None:
    parent, _ = gocontext.with_cancel(gocontext.background())
    with gocontext.use(parent):
        seen = await anyio.to_thread.run_sync(gocontext.current)
    assert seen is parent


def test_use_needs_a_context() -> None:
    with pytest.raises(TypeError, match="Context"):
        gocontext.use(None)  # type: ignore[arg-type]
