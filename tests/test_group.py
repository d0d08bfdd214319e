"""Group: functions in worker threads under one context; the first failure stops the rest."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import gocontext

from ._interrupt import finish, read_lines, reap, spawn
from .conftest import NEVER

REQUEST = contextvars.ContextVar[str]("REQUEST")
STRESS = os.environ.get("GOCONTEXT_STRESS") == "1"  # heavier storms, for soak runs


def wait_for_cancel(ctx: gocontext.Context) -> None:
    assert ctx.done().wait(NEVER), "the group's context never ended"
    ctx.check()


def test_the_first_failure_cancels_the_siblings_and_is_raised_itself(
    make_parent: Callable[[], tuple[gocontext.Context, object]],
) -> None:
    parent, _ = make_parent()
    started = threading.Barrier(4)
    seen: list[BaseException | None] = []
    boom = LookupError("shard 3 is missing")

    def sibling(ctx: gocontext.Context) -> None:
        started.wait(NEVER)
        try:
            wait_for_cancel(ctx)
        finally:
            seen.append(gocontext.cause(ctx))

    def failing(ctx: gocontext.Context) -> None:
        started.wait(NEVER)
        raise boom

    with pytest.raises(LookupError) as raised:
        with gocontext.Group(parent) as g:
            for _ in range(3):
                g.go(sibling)
            g.go(failing)
    assert raised.value is boom
    assert gocontext.cause(g.ctx) is boom
    assert seen == [boom, boom, boom]
    assert g.errors[0] is boom
    assert [type(e) for e in g.errors[1:]] == [gocontext.Canceled] * 3
    assert all(e.__cause__ is boom for e in g.errors[1:])
    assert parent.err() is None


def test_functions_that_all_return_raise_nothing_even_if_the_parent_ended() -> None:
    parent, cancel = gocontext.with_cancel(gocontext.background())
    in_fn = threading.Event()

    def fn(ctx: gocontext.Context) -> str:
        in_fn.set()
        ctx.done().wait(NEVER)
        return "stopped quietly"

    with gocontext.Group(parent) as g:
        g.go(fn)
        assert in_fn.wait(NEVER)
        cancel()
    assert g.errors == []
    assert isinstance(g.ctx.err(), gocontext.Canceled)


def test_leaving_waits_for_every_function_including_ones_they_start() -> None:
    finished: list[int] = []
    together = threading.Barrier(3)

    def leaf(ctx: gocontext.Context, n: int) -> None:
        together.wait(NEVER)
        finished.append(n)

    def spawner(ctx: gocontext.Context, g: gocontext.Group) -> None:
        g.go(leaf, 1)
        g.go(leaf, 2)
        together.wait(NEVER)
        finished.append(0)

    with gocontext.Group(gocontext.background()) as g:
        g.go(spawner, g)
    assert sorted(finished) == [0, 1, 2]
    assert isinstance(g.ctx.err(), gocontext.Canceled)  # cancelled on exit
    assert type(gocontext.cause(g.ctx)) is gocontext.Canceled  # no cause recorded


def test_the_bodys_exception_cancels_the_group_waits_and_propagates() -> None:
    in_fn = threading.Event()
    seen: list[BaseException | None] = []
    boom = RuntimeError("the body failed")

    def fn(ctx: gocontext.Context) -> None:
        in_fn.set()
        try:
            wait_for_cancel(ctx)
        finally:
            seen.append(gocontext.cause(ctx))

    with pytest.raises(RuntimeError) as raised:
        with gocontext.Group(gocontext.background()) as g:
            g.go(fn)
            assert in_fn.wait(NEVER)
            raise boom
    assert raised.value is boom
    assert seen == [boom]  # the function had finished before the exception left the block
    assert [type(e) for e in g.errors] == [gocontext.Canceled]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_from_a_function_is_a_failure_raised_on_exit(
    exc: type[BaseException],
) -> None:
    in_sibling = threading.Event()

    def sibling(ctx: gocontext.Context) -> None:
        in_sibling.set()
        wait_for_cancel(ctx)

    def fn(ctx: gocontext.Context) -> None:
        assert in_sibling.wait(NEVER)
        raise exc("from a worker")

    with pytest.raises(exc, match="from a worker"):
        with gocontext.Group(gocontext.background()) as g:
            g.go(sibling)
            g.go(fn)
    assert isinstance(gocontext.cause(g.ctx), exc)


def test_functions_see_the_callers_context_variables_and_ambient_context() -> None:
    ctx, cancel = gocontext.with_cancel(gocontext.background())
    token = REQUEST.set("req-1")
    seen: list[object] = []
    try:
        with gocontext.use(ctx), gocontext.Group(gocontext.background()) as g:
            g.go(lambda _c: seen.append((gocontext.current(), REQUEST.get())))
    finally:
        REQUEST.reset(token)
        cancel()
    assert seen == [(ctx, "req-1")]


def test_the_limit_holds_under_a_storm() -> None:
    limit, n = 3, 5000 if STRESS else 200
    lock = threading.Lock()
    running = peak = done = 0

    def fn(ctx: gocontext.Context, g: gocontext.Group, depth: int) -> None:
        nonlocal running, peak, done
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            if depth == 0 and done % 10 == 0:
                g.try_go(fn, g, 1)  # functions feed the group too, never past the limit
        finally:
            with lock:
                running -= 1
                done += 1

    with gocontext.Group(gocontext.background(), limit=limit) as g:
        for _ in range(n):
            g.go(fn, g, 0)
    assert g.errors == []
    assert 1 <= peak <= limit
    assert done >= n


def test_try_go_returns_false_while_every_slot_is_taken() -> None:
    release = threading.Event()
    with gocontext.Group(gocontext.background(), limit=2) as g:
        assert g.try_go(lambda _c: release.wait(NEVER))
        assert g.try_go(lambda _c: release.wait(NEVER))
        assert not g.try_go(lambda _c: None)
        release.set()
    assert g.errors == []


def wait_until_waiting(g: gocontext.Group) -> None:
    """Return once a go() call is parked on the group's condition (a handshake, not a hope)."""
    cond = g._cond  # type: ignore[attr-defined]
    deadline = time.monotonic() + NEVER
    while not cond._waiters:
        assert time.monotonic() < deadline, "go() never waited for a slot"
        time.sleep(0.001)


def test_go_waiting_for_a_slot_starts_nothing_once_a_function_fails() -> None:
    trigger = threading.Event()
    ran: list[str] = []
    boom = ValueError("the only slot's holder failed")

    def holder(ctx: gocontext.Context) -> None:
        assert trigger.wait(NEVER)
        raise boom

    def helper(g: gocontext.Group) -> None:
        wait_until_waiting(g)
        trigger.set()

    with pytest.raises(ValueError) as raised:
        with gocontext.Group(gocontext.background(), limit=1) as g:
            g.go(holder)
            t = threading.Thread(target=helper, args=(g,))
            t.start()
            g.go(lambda _c: ran.append("late"))  # raises Canceled: the exit says why instead
    t.join(NEVER)
    assert raised.value is boom
    assert isinstance(raised.value.__context__, gocontext.Canceled)
    assert ran == []


def test_go_waiting_for_a_slot_raises_the_parents_error_when_the_parent_ends() -> None:
    parent, cancel = gocontext.with_timeout(gocontext.background(), NEVER * 10)
    release = threading.Event()

    def holder(ctx: gocontext.Context) -> None:
        ctx.done().wait(NEVER)
        release.wait(NEVER)

    def helper(g: gocontext.Group) -> None:
        wait_until_waiting(g)
        cancel()
        release.set()

    with pytest.raises(gocontext.Canceled):
        with gocontext.Group(parent, limit=1) as g:
            g.go(holder)
            t = threading.Thread(target=helper, args=(g,))
            t.start()
            g.go(lambda _c: None)
    t.join(NEVER)
    assert g.errors == []


def hold_until_waited_for(g: gocontext.Group, left: threading.Event) -> None:
    """Return once the block's exit waits for the functions, or once the block was left
    without waiting (*left*, set by the test): a handshake, not a hope."""
    deadline = time.monotonic() + NEVER
    while g._state == "open" and not left.is_set():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the block neither waited nor left"
        time.sleep(0.001)


def test_an_interrupt_out_of_the_exits_cancel_still_waits_and_keeps_the_bodys_exception() -> None:
    """A done callback raising KeyboardInterrupt stands for a Ctrl-C landing in the cancel."""
    boom = ValueError("the body failed")
    left = threading.Event()
    finished = threading.Event()
    saw: list[tuple[BaseException | None, bool]] = []

    def ctrl_c() -> None:
        raise KeyboardInterrupt("in the exit's cancel")

    def fn(ctx: gocontext.Context, g: gocontext.Group) -> None:
        try:
            assert ctx.done().wait(NEVER)
            hold_until_waited_for(g, left)
            saw.append((gocontext.cause(ctx), left.is_set()))
        finally:
            finished.set()

    with pytest.raises(KeyboardInterrupt, match="in the exit's cancel") as raised:
        try:
            with gocontext.Group(gocontext.background()) as g:
                g.ctx.done().add_callback(ctrl_c)
                g.go(fn, g)
                raise boom
        finally:
            left.set()
    assert finished.wait(NEVER)
    assert saw == [(boom, False)]  # told why, and waited for before the block was left
    assert raised.value.__context__ is boom  # the body's exception is not lost
    assert gocontext.cause(g.ctx) is boom
    assert g.errors == []


def test_an_interrupt_out_of_a_functions_own_failure_leaves_the_block_after_all_returned() -> None:
    """The failing function's cancel of the group meets a Ctrl-C (a done callback stands for
    it), in its worker thread: the interrupt goes out of the block, once every function has
    returned, instead of ending that thread unheard; the failure is kept in ``g.errors``."""
    boom = ValueError("a function failed")
    sibling_saw: list[BaseException | None] = []
    unheard: list[BaseException] = []
    hook = threading.excepthook

    def hear(args: threading.ExceptHookArgs) -> None:
        assert args.exc_value is not None
        unheard.append(args.exc_value)

    threading.excepthook = hear

    def ctrl_c() -> None:
        raise KeyboardInterrupt("in the failure's cancel")

    def sibling(ctx: gocontext.Context) -> None:
        assert ctx.done().wait(NEVER)
        sibling_saw.append(gocontext.cause(ctx))

    def failing(ctx: gocontext.Context) -> None:
        raise boom

    try:
        with pytest.raises(KeyboardInterrupt, match="in the failure's cancel"):
            with gocontext.Group(gocontext.background()) as g:
                g.ctx.done().add_callback(ctrl_c)
                g.go(sibling)
                g.go(failing)
    finally:
        threading.excepthook = hook
    assert unheard == []
    assert sibling_saw == [boom]  # the sibling was stopped by the failure, and waited for
    assert g.errors == [boom]
    assert gocontext.cause(g.ctx) is boom


def test_no_thread_outlives_the_block() -> None:
    before = set(threading.enumerate())
    with pytest.raises(ZeroDivisionError):
        with gocontext.Group(gocontext.background(), limit=30) as g:
            for _ in range(150):  # enough finished threads to be forgotten along the way
                g.go(lambda _c: None)
            for _ in range(20):
                g.go(wait_for_cancel)
            g.go(lambda _c: 1 / 0)
    assert [t for t in threading.enumerate() if t not in before] == []


def test_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match=r"Group\(\) needs a Context as parent, got None"):
        gocontext.Group(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Group\(\) needs limit=None or a positive int, got 0"):
        gocontext.Group(gocontext.background(), limit=0)
    with pytest.raises(TypeError, match=r"positive int, got True"):
        gocontext.Group(gocontext.background(), limit=True)
    g = gocontext.Group(gocontext.background())
    with pytest.raises(RuntimeError, match=r"Group.go\(\) called outside"):
        g.go(lambda _c: None)
    with g:
        with pytest.raises(TypeError, match=r"Group.go\(\) needs a callable, got 42"):
            g.go(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"runs functions in threads, got async function"):
            g.go(gocontext.sleep, 1)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="entered once"):
        g.__enter__()
    with pytest.raises(RuntimeError, match=r"Group.try_go\(\) called outside"):
        g.try_go(lambda _c: None)


# --------------------------------------------------------------------------------------------
# Ctrl-C: a real SIGINT sent to a subprocess

CHILD = textwrap.dedent(
    """
    import sys, threading, gocontext

    STUCK = {stuck}
    never = threading.Event()

    def say(line):  # one write per line: lines from threads never interleave
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    def fn(ctx, n):
        say(f"started {{n}}")
        ctx.done().wait()
        say(f"stopped {{n}}: {{gocontext.cause(ctx)!r}}")
        if STUCK and n == 0:
            never.wait()  # ignores the cancel: only a second Ctrl-C gets out

    with gocontext.Group(gocontext.background()) as g:
        for n in range(3):
            g.go(fn, n)
    print("not reached", flush=True)
    """
)


def run_child(stuck: bool) -> subprocess.Popen[str]:
    return spawn(CHILD.format(stuck=stuck))


def test_ctrl_c_while_waiting_stops_every_function_and_exits_with_the_interrupt() -> None:
    proc = run_child(stuck=False)
    try:
        read_lines(proc, "started", 3)
        proc.send_signal(signal.SIGINT)
        stopped = read_lines(proc, "stopped", 3)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert all(line.endswith("KeyboardInterrupt()") for line in stopped), stopped
    assert "not reached" not in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode == -signal.SIGINT


@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="3.10's bytecode: SETUP_FINALLY")
def test_no_function_of_ours_opens_with_a_try_a_ctrl_c_can_land_before() -> None:
    """Python 3.10 runs no signal handler at a SETUP_FINALLY, so a function whose first
    statement is a try (``Group.__exit__``, so that a Ctrl-C landing anywhere in it is
    handled) is safe from its first instruction; but a try whose handler lies far away opens
    with an EXTENDED_ARG, where a Ctrl-C can land and escape before the try (it did, in
    ``Group.__exit__``, when its body grew: the block was left without waiting)."""
    import dis
    import glob
    import types

    def codes(code: types.CodeType) -> Iterator[types.CodeType]:
        yield code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from codes(const)

    root = os.path.dirname(gocontext.__file__)
    exposed = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            top = compile(f.read(), path, "exec")
        for code in codes(top):
            first = [i.opname for i in itertools.islice(dis.get_instructions(code), 2)]
            if first == ["EXTENDED_ARG", "SETUP_FINALLY"]:
                where = os.path.relpath(path, root)
                exposed.append(f"{where}:{code.co_firstlineno} {code.co_name}")
    assert not exposed, exposed


def test_a_second_ctrl_c_stops_the_waiting_for_a_stuck_function() -> None:
    proc = run_child(stuck=True)
    try:
        read_lines(proc, "started", 3)
        proc.send_signal(signal.SIGINT)
        read_lines(proc, "stopped", 3)  # every function saw the cancel; one is stuck
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert "not reached" not in out
    assert err.count("KeyboardInterrupt") >= 2, err  # the second, raised during the first
    assert proc.returncode == -signal.SIGINT


NESTED_CHILD = textwrap.dedent(
    """
    import sys, threading, gocontext

    never = threading.Event()

    def say(line):
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    def stuck(ctx, name):  # ignores the cancel: only a second Ctrl-C gets out
        say(f"started {name}")
        ctx.done().wait()
        say(f"stopped {name}")
        never.wait()

    with gocontext.Group(gocontext.background()) as outer:
        outer.go(stuck, "outer")
        with gocontext.Group(gocontext.background()) as inner:
            inner.go(stuck, "inner")
    print("not reached", flush=True)
    """
)


SIGNAL_CHILD = textwrap.dedent(
    """
    import sys, threading, gocontext

    never = threading.Event()

    def stuck(ctx):  # ignores the cancel: only a second Ctrl-C gets out
        sys.stdout.write("started\\n")
        sys.stdout.flush()
        ctx.done().wait()
        sys.stdout.write(f"stopped: {gocontext.cause(ctx)!r}\\n")
        sys.stdout.flush()
        never.wait()

    with gocontext.signal_context() as (ctx, stop):
        with gocontext.Group(ctx) as g:
            g.go(stuck)
    print("not reached", flush=True)
    """
)


@pytest.mark.parametrize(
    ("child", "started", "stopped"),
    [
        # The inner group leaves at the second Ctrl-C; the outer one sees that second Ctrl-C
        # (raised during the first) come out of its body, and leaves at once too.
        (NESTED_CHILD, 2, "stopped inner"),
        # The first Ctrl-C went to signal_context(), which cancelled the group's parent: the
        # next one is the second, as in a program without a group.
        (SIGNAL_CHILD, 1, "stopped: SignalReceived(SIGINT)"),
    ],
    ids=["nested-groups", "signal-context"],
)
def test_a_second_ctrl_c_stops_the_waiting_whoever_took_the_first(
    child: str, started: int, stopped: str
) -> None:
    proc = spawn(child)
    try:
        read_lines(proc, "started", started)
        proc.send_signal(signal.SIGINT)
        assert read_lines(proc, "stopped", 1) == [stopped]
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        reap(proc)
    assert "not reached" not in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode == -signal.SIGINT


EXIT_CHILD = textwrap.dedent(
    """
    import inspect, signal, sys, threading, gocontext

    exit_code = gocontext.Group.__exit__.__code__
    source, first = inspect.getsourcelines(gocontext.Group.__exit__)
    # Where a real signal's handler runs in __exit__ before the functions are cancelled: after
    # each call up to the wait (with no exception out of the body, there is no cancel before).
    calls = ("sys.exc_info()", "isinstance(e, KeyboardInterrupt)", "self._wait()")
    lines = [first + next(i for i, text in enumerate(source) if c in text) for c in calls]

    def landing_at(line):
        def call(frame, event, arg):
            if frame.f_code is not exit_code:
                return None
            def local(frame, event, arg):
                if event == "line" and frame.f_lineno == line:
                    frame.f_trace = None
                    sys.settrace(None)
                    signal.raise_signal(signal.SIGINT)  # Ctrl-C, handled at once: right here
                return local
            return local
        return call

    for line in lines:
        stopped = []

        def fn(ctx, n):
            if ctx.done().wait({never}):  # cancelled, not timed out
                stopped.append(n)

        try:
            with gocontext.Group(gocontext.background()) as g:
                for n in range(3):
                    g.go(fn, n)
                sys.settrace(landing_at(line))
        except KeyboardInterrupt:
            pass
        left = [t for t in threading.enumerate() if t.name.startswith("gocontext.Group")]
        print(line - first, source[line - first].strip(), sorted(stopped), len(left), flush=True)
    """
)


def test_a_ctrl_c_landing_as_the_block_is_left_still_stops_and_waits_for_every_function() -> None:
    # The interrupt comes out of each call __exit__ makes before it waits for the functions.
    proc = spawn(EXIT_CHILD.format(never=NEVER))
    try:
        out, err = finish(proc)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    rows = out.splitlines()
    assert len(rows) == 3, (out, err)
    for row in rows:
        assert row.endswith("[0, 1, 2] 0"), row  # every function cancelled, every thread ended


def test_a_failure_racing_the_start_of_its_siblings_always_stops_them_all() -> None:
    for round_ in range(500 if STRESS else 20):
        boom = ValueError(f"round {round_}")
        causes: list[BaseException | None] = []
        lock = threading.Lock()

        def sibling(ctx: gocontext.Context) -> None:
            try:
                wait_for_cancel(ctx)
            finally:
                with lock:
                    causes.append(gocontext.cause(ctx))

        def failing(ctx: gocontext.Context, boom: BaseException = boom) -> None:
            raise boom

        with pytest.raises(ValueError) as raised:
            with gocontext.Group(gocontext.background(), limit=4) as g:
                for i in range(8):
                    g.go(failing if i == round_ % 4 else sibling)  # within the limit
        assert raised.value is boom
        assert all(c is boom for c in causes)


AFTER_A_BODY_ERROR = textwrap.dedent(
    """
    import os, signal, sys, threading, time, gocontext

    STUCK = {stuck}

    def say(line):  # one write per line: lines from threads never interleave
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    def on_sigint(signum, frame):  # Python's own handler, which says it ran once it has
        try:  # (a second Ctrl-C may land in here: then it is raised during the first)
            raise KeyboardInterrupt
        finally:
            os.write(1, b"sigint\\n")

    signal.signal(signal.SIGINT, on_sigint)

    def fn(ctx):
        ctx.done().wait()
        while g._state == "open":  # until the exit waits: past its cancel, whose end() keeps
            time.sleep(0.001)  # the first interrupt for after its work and drops a second
        say(f"stopped {{gocontext.cause(ctx)!r}}")
        if STUCK:
            threading.Event().wait()  # ignores the cancel: only a second Ctrl-C gets out
        os.read(0, 1)  # held until the test has sent its Ctrl-C
        say("finished")

    try:
        with gocontext.Group(gocontext.background()) as g:
            g.go(fn)
            raise ValueError("the body failed")
    except BaseException as e:
        chain = []
        while e is not None:
            chain.append(repr(e))
            e = e.__context__
        say("left with " + " <- ".join(chain))
    """
)


def spawn_with_stdin(code: str) -> subprocess.Popen[str]:
    """``spawn()``, with a pipe to the child's stdin as well."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_ctrl_c_after_the_body_raised_waits_for_the_functions_and_keeps_both_exceptions() -> None:
    proc = spawn_with_stdin(AFTER_A_BODY_ERROR.format(stuck=False))
    try:
        assert proc.stdin is not None
        read_lines(proc, "stopped ValueError('the body failed')", 1)  # the exit has cancelled
        proc.send_signal(signal.SIGINT)
        read_lines(proc, "sigint", 1)  # the Ctrl-C was raised in the exit's thread
        with contextlib.suppress(BrokenPipeError):  # (a child that left at once has ended)
            proc.stdin.write("go on\n")
            proc.stdin.flush()
        out, err = finish(proc)
    finally:
        reap(proc)
        proc.stdin.close()
    assert out.splitlines() == [
        "finished",
        "left with KeyboardInterrupt() <- ValueError('the body failed')",
    ], (out, err)
    assert proc.returncode == 0, err


def test_a_second_ctrl_c_after_the_body_raised_stops_the_waiting_and_keeps_all_three() -> None:
    proc = spawn_with_stdin(AFTER_A_BODY_ERROR.format(stuck=True))
    try:
        read_lines(proc, "stopped ValueError('the body failed')", 1)
        proc.send_signal(signal.SIGINT)
        read_lines(proc, "sigint", 1)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        reap(proc)
        proc.stdin.close()
    assert out.splitlines() == [
        "sigint",
        "left with KeyboardInterrupt() <- KeyboardInterrupt() <- ValueError('the body failed')",
    ], (out, err)
    assert proc.returncode == 0, err


def test_a_go_from_outside_the_group_waiting_for_a_slot_when_the_block_ends_is_refused() -> None:
    """A thread that is none of the group's functions waits in go() for a slot while the
    block's exit waits: once the last function returns the block is over, so that go() starts
    nothing (no function runs after the block, no error of one is lost)."""
    for _ in range(20):
        release = threading.Event()
        left = threading.Event()
        ran: list[str] = []
        refused: list[BaseException] = []

        def holder(ctx: gocontext.Context, release: threading.Event = release) -> None:
            release.wait(NEVER)

        def outsider(
            g: gocontext.Group, ran: list[str] = ran, refused: list[BaseException] = refused
        ) -> None:
            try:
                g.go(lambda _c: ran.append("late"))
            except RuntimeError as e:
                refused.append(e)

        def releaser(
            g: gocontext.Group, release: threading.Event = release, left: threading.Event = left
        ) -> None:
            wait_until_waiting(g)
            hold_until_waited_for(g, left)
            release.set()

        with gocontext.Group(gocontext.background(), limit=1) as g:
            g.go(holder)
            threads = [threading.Thread(target=f, args=(g,)) for f in (outsider, releaser)]
            for t in threads:
                t.start()
        left.set()
        for t in threads:
            t.join(NEVER)
        assert ran == []
        assert len(refused) == 1
        assert "waited for a slot until the group's with block ended" in str(refused[0])
        assert g.errors == []


class AsyncCall:
    """A callable object whose ``__call__`` is an async function."""

    async def __call__(self, ctx: gocontext.Context) -> None:
        raise AssertionError("never runs")


async def never_runs(ctx: gocontext.Context) -> None:
    raise AssertionError("never runs")


def test_an_async_callable_is_refused_and_a_coroutine_returned_is_a_failure() -> None:
    """Neither starts work that would never run: an object with an async ``__call__`` is
    refused at the call, and a coroutine that a function returns fails it, never dropped."""
    with gocontext.Group(gocontext.background()) as g:
        with pytest.raises(TypeError, match=r"runs functions in threads, got async function"):
            g.go(AsyncCall())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"returned a coroutine") as raised:
        with gocontext.Group(gocontext.background()) as g:
            g.go(lambda ctx: never_runs(ctx))
    assert g.errors == [raised.value]
    assert "use gocontext.TaskGroup" in str(raised.value)
