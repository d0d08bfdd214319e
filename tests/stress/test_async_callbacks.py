"""Callbacks that raise, Exception or BaseException, on a context that tasks are waiting on:
every waiter still wakes (``await done``, ``sleep``, ``scope``, ``to_thread``), whichever thread
cancels and in whatever order the callbacks were added.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import anyio
import pytest

import gocontext
from gocontext import _context

from ..conftest import NEVER

pytestmark = pytest.mark.stress

ROUNDS = 200 if os.environ.get("GOCONTEXT_STRESS") == "1" else 20


class Interrupt(BaseException):
    """A BaseException of the user's own, like KeyboardInterrupt but harmless to the run."""


RAISES = [
    pytest.param(ValueError, id="ValueError"),
    pytest.param(Interrupt, id="Interrupt"),
    pytest.param(KeyboardInterrupt, id="KeyboardInterrupt"),
    pytest.param(SystemExit, id="SystemExit"),
]


def raiser(kind: type[BaseException]) -> Callable[[], None]:
    def callback() -> None:
        raise kind("from a callback")

    return callback


@pytest.mark.parametrize(
    "kind", RAISES, ids=["ValueError", "Interrupt", "KeyboardInterrupt", "SystemExit"]
)
async def test_raising_callbacks_never_strand_a_waiter(kind: type[BaseException]) -> None:
    rng = random.Random(kind.__name__)
    for _ in range(ROUNDS):
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        done = ctx.done()
        woke: list[str] = []

        async def await_done() -> None:
            await done
            woke.append("await")

        async def sleeper() -> None:
            with pytest.raises(gocontext.Canceled):
                await gocontext.sleep(ctx, NEVER * 10)
            woke.append("sleep")

        async def scoped() -> None:
            with pytest.raises(gocontext.Canceled):
                async with gocontext.scope(ctx):
                    await anyio.sleep(NEVER * 10)
            woke.append("scope")

        async def threaded() -> None:
            def work(child: gocontext.Context) -> None:
                assert child.done().wait(NEVER)

            await gocontext.to_thread(ctx, work)
            woke.append("to_thread")

        waiters = [await_done, sleeper, scoped, threaded]
        caught: list[BaseException] = []

        def canceller() -> None:
            try:
                cancel()
            except BaseException as e:  # an interrupt may come out once the cancel is done
                caught.append(e)

        with anyio.fail_after(NEVER):
            async with anyio.create_task_group() as tg:
                # raising callbacks before, between and after the waiters' own
                done.add_callback(raiser(kind))
                for w in rng.sample(waiters, len(waiters)):
                    tg.start_soon(w)
                    await anyio.wait_all_tasks_blocked()
                    done.add_callback(raiser(kind))
                threading.Thread(target=canceller).start()
        assert sorted(woke) == ["await", "scope", "sleep", "to_thread"]
        assert caught == [] or all(type(e) is kind for e in caught)
        assert _context.watcher_count(ctx) == 0
