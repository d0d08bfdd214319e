"""examples/wires.py runs as a user would run it, ends by itself, and shows one deadline and
one cancel crossing every wire."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "wires.py"

IN_ORDER = [
    "1. a 5s deadline crosses five wires, shrinking at every hop",
    "  2 FastAPI: request req-1, ",
    "  3 gRPC server: request req-1, ",
    "  4 aiohttp: request req-1, ",
    "  5 leaf (Starlette): request req-1, ",
    "client: leaf ok",
    "2. the client cancels; the cancel reaches every hop",
    "client: Canceled('context canceled')",
    "wires done",
]
ANYWHERE = [
    "  2 FastAPI stopped: ClientDisconnected(",
    "  3 gRPC server stopped: ClientDisconnected(",
    "  4 aiohttp stopped: ClientDisconnected(",
    "  5 leaf (Starlette) stopped: ClientDisconnected(",
]


def test_the_wires_example_carries_one_deadline_and_one_cancel() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLE.parent,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = 0
    for expected in IN_ORDER:
        found = [i for i, line in enumerate(lines[at:], at) if line.startswith(expected)]
        assert found, f"missing {expected!r} after line {at} in:\n{out.stdout}"
        at = found[0] + 1
    for expected in ANYWHERE:
        assert any(line.startswith(expected) for line in lines), out.stdout
    # Every hop sees the one deadline: never more than the client gave, and never growing along
    # the chain beyond rounding (printed to 10 ms; gRPC rounds the time it sends up).
    left = [
        float(line.rsplit(", ", 1)[1].split("s left")[0])
        for line in lines
        if "request req-1, " in line
    ]
    assert len(left) == 4 and all(0 < x <= 5.0 for x in left), left
    assert all(b <= a + 0.02 for a, b in itertools.pairwise(left)), left
    assert "Traceback" not in out.stderr, out.stderr
