"""Every example runs as a user would run it, ends by itself, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# For each example, lines (substrings) its output must contain, in this order.
EXPECTED: dict[str, list[str]] = {
    "tour.py": [
        "1. one cancel() reaches a thread, an asyncio loop and a trio run",
        "asyncio task: Canceled('context canceled')",
        "thread: Canceled('context canceled')",
        "trio task: Canceled('context canceled')",
        "cause: ConnectionAbortedError('client went away') | request id: req-42",
        "2. a deadline ends an async scope and the thread it started (asyncio)",
        "scope raised DeadlineExceeded('context deadline exceeded')",
        "2. a deadline ends an async scope and the thread it started (trio)",
        "scope raised DeadlineExceeded('context deadline exceeded')",
        "tour done",
    ],
    "fanout.py": [
        "request req-7 fans out, deadline in 0.3s",
        "request ended: DeadlineExceeded('context deadline exceeded')",
        "fanout done",
    ],
    "http_chain.py": [
        "1. a 1.5s deadline crosses both hops",
        "  B: request req-1,",
        "client: B answered with",
        "2. the deadline passes while B works",
        "  B: stopped,",
        "client: DeadlineExceeded('context deadline exceeded')",
        "3. the client cancels; the cancel reaches B",
        "  B: stopped, ClientDisconnected('the client disconnected')",
        "client: Canceled('context canceled')",
        "http chain done",
    ],
    "ray_fanout.py": [
        "1. a request fans out to 2 branches x 2 leaves, deadline in 1.0s",
        "branch-0 saw DeadlineExceeded('context deadline exceeded')",
        "branch-0.0 saw DeadlineExceeded('context deadline exceeded')",
        "(req-3)",
        "2. the driver cancels; get() raises at once and cancels the tree",
        "driver: get() raised Canceled('context canceled')",
        "ray fanout done",
    ],
    "errgroup.py": [
        "1. threads: 6 shards, 3 at a time; shard 3 fails",
        "group raised LookupError('shard 3 is missing'); g.ctx's cause is it: True",
        "2. tasks and a thread in one group; backend B fails",
        "group raised ConnectionError('backend B refused')",
        "3. Ray: 3 tasks; shard 1 fails",
        "group raised RayTaskError(ValueError): ValueError: ray shard 1 has bad data",
        "errgroup done",
    ],
    "shutdown.py": [
        "service up (pid",
        "SignalReceived(SIGTERM): stop accepting, drain",
        "drained: every request in flight finished",
        "shutdown done",
    ],
    "wires.py": [
        "1. a 5s deadline crosses five wires, shrinking at every hop",
        "  5 leaf (Starlette): request req-1,",
        "client: leaf ok",
        "2. the client cancels; the cancel reaches every hop",
        "client: Canceled('context canceled')",
        "wires done",
    ],
}

# Lines that must appear, in any order (they come from threads and tasks racing each other).
ANYWHERE: dict[str, list[str]] = {
    "fanout.py": [
        "thread X stopped after",
        "thread Y stopped after",
        "task A stopped: DeadlineExceeded('context deadline exceeded')",
        "task B stopped: DeadlineExceeded('context deadline exceeded')",
    ],
    "errgroup.py": [
        "thread shard 3 stopped after 5 chunks",
        "task A stopped; cause: ConnectionError('backend B refused')",
        "thread resize stopped after",
    ],
    "shutdown.py": ["request 1 done"],
}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_its_key_lines(name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    pos = 0
    for line in EXPECTED[name]:
        found = out.stdout.find(line, pos)
        assert found >= 0, f"{line!r} not in the output after position {pos}:\n{out.stdout}"
        pos = found + len(line)
    for line in ANYWHERE.get(name, []):
        assert line in out.stdout, f"{line!r} not in the output:\n{out.stdout}"
