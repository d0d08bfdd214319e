"""The core benchmark runs: a quick pass over gocontext's rows, and against a baseline ref.

No figure is judged here (the machine may be loaded): only that each run finishes, prints its
tables and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300  # seconds a quick run may take before the test fails (a hang, not a speed)
QUICK = ["--quick", "--no-extras", "--peers", "gocontext,threading.Event,plain"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    if not (ROOT / "benchmarks" / "bench.py").is_file():
        pytest.skip("not a source tree")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


@pytest.mark.slow
def test_a_quick_run_prints_every_core_table_with_targets() -> None:
    out = bench(*QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    for heading in ("### poll a live context", "### create and cancel", "### memory"):
        assert heading in out.stdout, out.stdout[-3000:]
    assert "| err(), depth 1 | gocontext |" in out.stdout
    memory = out.stdout.split("### memory", 1)[1].split("###", 1)[0]
    assert "| bytes per live child | gocontext |" in memory  # and under it, plain Python's floor
    assert memory.index("|  | plain Python |") > memory.index("| bytes per live child |")
    assert "| row | library | ns | peer/ours | target | met |" in out.stdout
    assert "| pygolang |" not in out.stdout  # only the libraries asked for


@pytest.mark.slow
def test_a_baseline_run_adds_the_old_figures_beside_the_new() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = bench(*QUICK, "--baseline", "HEAD")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| row | library | ns | peer/ours | old | new/old | target | met |" in out.stdout
    assert "within 5% of old" in out.stdout
