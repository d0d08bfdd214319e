"""gocontext beside the peers a user would otherwise pick, in one run, with ratios and targets.

Run from the repository root:
    bash benchmarks/run.sh [--quick] [--baseline REF]  (builds benchmarks/.venv with the peers)
    python -m benchmarks.bench [--quick] [--baseline REF] [--peers gocontext,...]
    (python benchmarks/bench.py ... does the same)

Each section is one table: per row, every library that has the operation (see ``_peers``),
the ratio peer/ours (above 1.00x, gocontext is faster or smaller), the row's target from
``TARGETS`` and whether it is met. ``--baseline REF`` runs gocontext's rows again from the
package as it was at git REF, in a subprocess, and adds ``old`` and ``new/old`` columns; a row
without a target of its own must then stay within 5% of old. Peers that are not installed are
reported. Go's figures come from ``benchmarks/go`` when ``go`` is on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: run it as the package's module
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench", *sys.argv[1:]])

from . import _peers
from ._latency import RemoteCanceller, busy, percentile
from ._peers import Adapter, Op

ROOT = Path(__file__).resolve().parent.parent
OURS = "gocontext"
GO = "Go"


@dataclass(frozen=True)
class Settings:
    """How big a run is; passed to every row (nothing global changes)."""

    quick: bool = False

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def best_ns(fn: Op, s: Settings, calls: int | None = None) -> float:
    """Best of 5 runs (2 when quick) of *calls* calls of *fn*, or of as many as take 0.2 s
    (0.02 s when quick), in ns per call."""
    timer = timeit.Timer(fn)
    number = calls or 1
    while calls is None and timer.timeit(number) < s.n(200, 20) / 1000:
        number *= 4
    if calls is not None and s.quick:
        number = max(number // 10, 1)
    return min(timer.repeat(repeat=s.n(5, 2), number=number)) / number * 1e9


def each_ns(make: Callable[[], list[Op]], s: Settings, repeat: int = 5) -> float:
    """Best of *repeat* runs calling every function *make* returns once, ns per call."""
    best = float("inf")
    for _ in range(2 if s.quick else repeat):
        ops = make()
        t = time.perf_counter_ns()
        for op in ops:
            op()
        best = min(best, (time.perf_counter_ns() - t) / len(ops))
    return best


# --------------------------------------------------------------------------------------------
# Rows: each function measures one library through its adapter and returns its figures by row
# name, leaving out the rows whose operations the library lacks.

Figures = dict[str, float]


def _chain(a: Adapter, depth: int) -> list[Any]:
    """A live root and *depth* cancelable descendants in a line, kept: the last one has
    *depth* cancelable ancestors."""
    kept = [a.root()]
    for _ in range(depth):
        kept.append(a.child(a.node(kept[-1])))
    return kept


def _polls(a: Adapter, kept: list[Any]) -> list[Op]:
    polls = [a.poll(a.node(k)) for k in kept]
    return [p for p in polls if p is not None]


def poll_rows(a: Adapter, s: Settings) -> Figures:
    """err() (or the library's "is it cancelled?") on a live node, by cancelable ancestors;
    a library with no tree has depth 1 only."""

    def measure() -> Figures:
        out: Figures = {}
        for depth in (1, 10, 1000) if a.tree else (0,):
            kept = _chain(a, depth)
            polls = _polls(a, kept[-1:])
            if kept[0] is None or not polls:
                break
            try:
                out[f"err(), depth {max(depth, 1):,}"] = best_ns(polls[0], s)
            except RecursionError:
                break  # a library that recurses per level cannot poll this deep
        return out

    return a.call(measure)


def _chain_ns(a: Adapter, depth: int) -> float:
    """Cancel the root of a *depth*-deep chain, then ask every node; ns per node."""
    kept = _chain(a, depth)
    polls = _polls(a, kept[1:])
    t = time.perf_counter_ns()
    a.cancel(kept[0])
    for poll in polls:
        if not poll():
            raise AssertionError(f"{a.name}: a node of the chain is not cancelled")
    return (time.perf_counter_ns() - t) / depth


def _tree_ns(a: Adapter, width: int, depth: int) -> float:
    """Cancel a root with *width* children of *depth* children each, then ask every one."""
    root = a.root()
    kept = []
    for _ in range(width):
        mid = a.child(a.node(root))
        kept.append(mid)
        kept.extend(a.child(a.node(mid)) for _ in range(depth))
    polls = _polls(a, kept)
    t = time.perf_counter_ns()
    a.cancel(root)
    for poll in polls:
        if not poll():
            raise AssertionError(f"{a.name}: a descendant is not cancelled")
    return (time.perf_counter_ns() - t) / len(kept)


def cancel_tree_rows(a: Adapter, s: Settings) -> Figures:
    out: Figures = {}
    if not a.tree:
        return out
    for depth, repeat in ((1000, 3), (10_000, s.n(3, 1))):  # the second shows O(n), or not
        with contextlib.suppress(RecursionError):  # a library that recurses per level
            out[f"{depth:,}-deep chain, per node"] = min(_chain_ns(a, depth) for _ in range(repeat))
    width, depth = s.n(1000, 50), s.n(100, 20)
    out[f"{width:,} x {depth:,} tree, per node"] = min(_tree_ns(a, width, depth) for _ in range(3))
    return out


def value_rows(a: Adapter, s: Settings) -> Figures:
    out: Figures = {}
    for depth in (1, 50):
        lookup = a.value_lookup(depth)
        if lookup is not None:
            out[f"value(), depth {depth}"] = best_ns(lookup, s)
    return out


def lifecycle_rows(a: Adapter, s: Settings) -> Figures:
    return a.call(lambda: _lifecycle_rows(a, s))


def _lifecycle_rows(a: Adapter, s: Settings) -> Figures:
    out: Figures = {}
    root = a.root()
    if root is None:
        return out
    parent = a.node(root)
    op = a.create_cancel(parent)
    if op is not None:
        out["create child + cancel"] = best_ns(op, s)
    op = a.make_pair()
    if op is not None:
        out["build the (ctx, cancel) pair"] = best_ns(op, s)
    op = a.create_timeout_cancel(parent, 5.0)
    if op is not None:
        out["5 s timeout child: create + cancel"] = best_ns(op, s, calls=a.most_timers)
    n = s.n(100_000, 2000)
    if a.watched_cancels(parent, 1) is not None:
        out["cancel a watched child"] = each_ns(lambda: a.watched_cancels(parent, n) or [], s)
    return out


def _threads() -> int:
    """Threads of this process, the runtime's own (pygolang's) included where the OS says."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def timer_thread_rows(a: Adapter, s: Settings) -> Figures:
    n = min(s.n(10_000, 500), a.most_live_timers or 10_000)
    before = _threads()
    cancels = [c for c in (a.new_timer(3600 + i) for i in range(n)) if c is not None]
    added = _threads() - before
    for cancel in cancels:
        cancel()
    return {"threads per 1,000 live timers": added * 1000 / n} if cancels else {}


def thread_wake_rows(a: Adapter, s: Settings) -> Figures:
    """cancel() in another thread to the return of a thread blocked in wait(), in µs: idle
    canceller (median), and a canceller that computes ~5 ms right after firing (p99). The
    third row is that row's floor: the waiter blocked as long (~5 ms), the canceller idle
    after firing, so only the OS's wake-up of a thread idle that long is measured."""
    if a.blocking_waiter() is None:
        return {}
    rounds = s.n(2000, 50)

    def run(after: Callable[[], object] | None, n: int, settle: float = 0.0002) -> list[float]:
        lat = []
        with RemoteCanceller(n, settle=settle, after=after) as canceller:
            for _ in range(n):
                waiter = a.blocking_waiter()
                assert waiter is not None
                wait, fire = waiter
                canceller.arm(fire)
                canceller.parked()  # the canceller settles, so this thread is blocked by then
                wait()
                lat.append(canceller.since_fire_us())
        return lat

    return {
        "thread wake: median": statistics.median(run(None, rounds)),
        "thread wake, busy canceller: p99": percentile(run(busy(0.005), s.n(300, 20)), 0.99),
        "thread wake after 5 ms blocked, idle canceller: p99": percentile(
            run(None, s.n(300, 20), settle=0.005), 0.99
        ),
    }


def task_wake_rows(a: Adapter, s: Settings) -> Figures:
    """cancel() in another thread to an asyncio task's return from awaiting; median µs."""
    rounds = s.n(2000, 50)

    async def main() -> Figures:
        if a.async_waiter() is None:
            return {}
        post = asyncio.get_running_loop().call_soon
        lat = []
        with RemoteCanceller(rounds) as canceller:
            for _ in range(rounds):
                waiter = a.async_waiter()
                assert waiter is not None
                wait, fire = waiter
                canceller.arm(fire)
                post(canceller.parked)
                await wait()
                lat.append(canceller.since_fire_us())
        return {"asyncio task wake: median": statistics.median(lat)}

    return asyncio.run(main())


@contextlib.contextmanager
def _traced() -> Iterator[Callable[[], int]]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def memory_rows(a: Adapter, s: Settings) -> Figures:
    out: Figures = {}
    root = a.root() if a.tree else None
    bare = a.bare_child()
    if root is None and bare is None:
        return out
    n = s.n(100_000, 2000)
    with _traced() as used:
        if bare is None:
            keep = [a.child(a.node(root)) for _ in range(n)]
        else:
            keep = [bare() for _ in range(n)]
        out["bytes per live child"] = used() / n
    del keep
    if root is None:
        return out
    # Held after n and after 2n children dropped uncancelled: the difference, per child, is
    # what each one leaves behind, free of tracemalloc's and the interpreter's fixed costs.
    n = s.n(1_000_000, 20_000)
    with _traced() as used:
        held = []
        for _ in range(2):
            for _ in range(n):
                a.child(a.node(root))
            gc.collect()
            held.append(used())
    out["bytes held per forgotten child"] = max(0.0, (held[1] - held[0]) / n)
    return out


def deadline_rows(a: Adapter, s: Settings) -> Figures:
    """How late a 2 ms deadline fires, in ms."""
    if a.deadline_waiter(0.0) is None:
        return {}
    late = []
    for _ in range(s.n(500, 20)):
        waiter = a.deadline_waiter(0.002)
        assert waiter is not None
        wait, deadline = waiter
        wait()
        late.append((time.monotonic() - deadline) * 1000)
    return {
        "deadline lateness: median": statistics.median(late),
        "deadline lateness: p99": percentile(late, 0.99),
    }


@dataclass(frozen=True)
class Section:
    title: str
    unit: str
    measure: Callable[[Adapter, Settings], Figures]


SECTIONS = [
    Section(
        "poll a live context: err(), the library's is-cancelled, or (plain Python) a method "
        "returning an attribute",
        "ns",
        poll_rows,
    ),
    Section("cancel a root, then ask every descendant", "ns", cancel_tree_rows),
    Section("look up a value", "ns", value_rows),
    Section("create and cancel", "ns", lifecycle_rows),
    Section("wake a waiter on a cancel from another thread", "µs", thread_wake_rows),
    Section("wake an asyncio task on a cancel from another thread", "µs", task_wake_rows),
    Section(
        "memory: what a kept (ctx, cancel) costs, or (plain Python) the least one can in Python",
        "B",
        memory_rows,
    ),
    Section("timers", "threads", timer_thread_rows),
    Section("deadlines on the shared timer", "ms", deadline_rows),
]


# --------------------------------------------------------------------------------------------
# Targets: per row, what gocontext must reach, checked against the figures of the same run.


@dataclass
class Run:
    """Every figure of a run: by row, then by library."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)  # title -> its rows, in order

    def get(self, row: str, lib: str = OURS) -> float | None:
        return self.rows.get(row, {}).get(lib)


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float, Run], bool | None]  # ours, the run -> met (None: no figure to judge by)
    reference: bool = False  # a floor to read another row by: nothing to meet


def _none(ours: float, run: Run) -> None:
    return None


def _at_most(limit: float) -> Callable[[float, Run], bool]:
    return lambda ours, run: ours <= limit


def _vs(row: str, lib: str, factor: float = 1.0) -> Callable[[float, Run], bool | None]:
    def met(ours: float, run: Run) -> bool | None:
        other = run.get(row, lib)
        return None if other is None else ours <= factor * other

    return met


def _all(*checks: Callable[[float, Run], bool | None]) -> Callable[[float, Run], bool | None]:
    def met(ours: float, run: Run) -> bool | None:
        results = [check(ours, run) for check in checks]
        return None if None in results else all(results)

    return met


PLAIN = _peers.Plain.name
ERR_FLAT = "≤ 1.2x depth 1, ≤ 1.3x plain method"
TARGETS: dict[str, Target] = {
    "err(), depth 1": Target("≤ 1.3x plain method", _vs("err(), depth 1", PLAIN, 1.3)),
    "err(), depth 10": Target(
        ERR_FLAT, _all(_vs("err(), depth 1", OURS, 1.2), _vs("err(), depth 1", PLAIN, 1.3))
    ),
    "err(), depth 1,000": Target(
        ERR_FLAT, _all(_vs("err(), depth 1", OURS, 1.2), _vs("err(), depth 1", PLAIN, 1.3))
    ),
    "1,000-deep chain, per node": Target(
        "≤ 900 ns, ahead of cantok",
        _all(_at_most(900), _vs("1,000-deep chain, per node", "cantok")),
    ),
    "10,000-deep chain, per node": Target(
        "O(n): ≤ 1.2x the 1,000-deep", _vs("1,000-deep chain, per node", OURS, 1.2)
    ),
    "value(), depth 1": Target("≤ pygolang", _vs("value(), depth 1", "pygolang")),
    "value(), depth 50": Target("≤ Go", _vs("value(), depth 50", GO)),
    "create child + cancel": Target("≤ 500 ns", _at_most(500)),
    "5 s timeout child: create + cancel": Target("≤ 1.0 µs", _at_most(1000)),
    "cancel a watched child": Target("≤ 700 ns", _at_most(700)),
    "thread wake: median": Target(
        "≤ threading.Event", _vs("thread wake: median", "threading.Event")
    ),
    "thread wake, busy canceller: p99": Target("≤ 100 µs", _at_most(100)),
    "thread wake after 5 ms blocked, idle canceller: p99": Target(
        "none: the OS's floor for the row above", _none, reference=True
    ),
    "bytes per live child": Target("≤ 150 B", _at_most(150)),
    "bytes held per forgotten child": Target("0 B", _at_most(0.01)),
}
WITHIN = 1.05  # a row without a target of its own, against the baseline


# --------------------------------------------------------------------------------------------
# Go: the same rows in Go's context package (benchmarks/go), when a Go toolchain is here.

GO_BENCHMARKS = {
    "BenchmarkErrLive": "err(), depth 1",
    "BenchmarkChainCancel": "1,000-deep chain, per node",
    "BenchmarkValue1": "value(), depth 1",
    "BenchmarkValue50": "value(), depth 50",
    "BenchmarkCreateCancel": "create child + cancel",
    "BenchmarkTimeoutCreateCancel": "5 s timeout child: create + cancel",
}


def go_figures(s: Settings) -> tuple[Figures, str]:
    go = shutil.which("go")
    if go is None:
        return {}, "go is not on the PATH"
    out = subprocess.run(
        [go, "test", "-run", "^$", "-bench", ".", "-benchtime", "0.1s" if s.quick else "1s"],
        cwd=Path(__file__).parent / "go",
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": tempfile.gettempdir() + "/gocache"},
    )
    if out.returncode != 0:
        return {}, f"go test failed: {out.stderr.strip()[-300:]}"
    figures: Figures = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0].split("-")[0] in GO_BENCHMARKS and "ns/op" in parts:
            ns = float(parts[parts.index("ns/op") - 1])
            figures[GO_BENCHMARKS[parts[0].split("-")[0]]] = ns
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.split()
    return figures, " ".join(version[2:3])


# --------------------------------------------------------------------------------------------
# The baseline: gocontext's rows again, from the package as it was at a git ref.


def _ours_in_subprocess(package_dir: Path, s: Settings) -> Figures:
    """gocontext's figures, measured in a fresh interpreter that imports the package from
    *package_dir* (which must be the one it gets: checked)."""
    with tempfile.TemporaryDirectory(prefix="gocontext-figures-") as tmp:
        out_file = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "benchmarks.bench", "--peers", OURS, "--json", str(out_file)]
        if s.quick:
            cmd.append("--quick")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_dir), str(ROOT)])}
        # cwd: `python -m` puts the working directory first on the path.
        subprocess.run(cmd, cwd=package_dir, env=env, check=True, stdout=subprocess.DEVNULL)
        got = json.loads(out_file.read_text())
    where = Path(got["from"]).resolve()
    if not where.is_relative_to(package_dir.resolve()):
        raise RuntimeError(f"gocontext came from {where}, not from {package_dir}")
    figures: Figures = got["figures"]
    return figures


def baseline(ref: str, s: Settings, rounds: int = 2) -> tuple[Figures, Figures]:
    """gocontext's figures (old, new): the package at git *ref* and this tree's, each run
    *rounds* times in subprocesses, old and new alternating so that a change in the machine's
    load falls on both; per row, the best of the rounds."""
    old: Figures = {}
    new: Figures = {}
    with tempfile.TemporaryDirectory(prefix="gocontext-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "archive", ref, "gocontext"], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        for _ in range(rounds):
            for figures, where in ((old, Path(tmp)), (new, ROOT)):
                for row, v in _ours_in_subprocess(where, s).items():
                    figures[row] = min(v, figures.get(row, v))
    return old, new


# --------------------------------------------------------------------------------------------
# Printing


def _num(v: float) -> str:
    return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"


ZERO = 0.01  # below this, a figure counts as zero and has no ratio


def _ratio(v: float, to: float) -> str:
    return f"{v / to:.2f}x" if v >= ZERO and to >= ZERO else ""


def print_section(
    sec: Section, run: Run, libs: list[str], baseline: tuple[Figures, Figures] | None
) -> None:
    """One table: per row, every library's figure, peer/ours, and gocontext's target; with
    a *baseline* (old, new), its old figure and new/old, from the subprocess runs."""
    rows = run.sections.get(sec.title, [])
    if not rows:
        return
    print(f"\n### {sec.title}  ({sec.unit})\n")
    head = ["row", "library", sec.unit, "peer/ours"]
    if baseline is not None:
        head += ["old", "new/old"]
    head += ["target", "met"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(head) - 4) + "---|---|")
    for row in rows:
        ours = run.get(row)
        first = True
        for lib in libs:
            v = run.get(row, lib)
            if v is None:
                continue
            ratio = _ratio(v, ours) if ours is not None and lib != OURS else ""
            cells = [row if first else "", lib, _num(v), ratio]
            first = False
            target = met = ""
            goal = TARGETS.get(row)
            if lib == OURS and goal is not None:
                target = goal.text
                verdict = goal.met(v, run)
                met = (
                    ""
                    if goal.reference
                    else "?"
                    if verdict is None
                    else "met"
                    if verdict
                    else "MISSED"
                )
            if baseline is not None:
                was = baseline[0].get(row) if lib == OURS else None
                now = baseline[1].get(row)
                change = ""
                if was is not None and now is not None:
                    change = _ratio(now, was)
                    if change and goal is None:
                        target = f"within {WITHIN - 1:.0%} of old"
                        met = "met" if now <= WITHIN * was else "MISSED"
                cells += ["" if was is None else _num(was), change]
            cells += [target, met]
            print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--baseline", metavar="REF", help="also run gocontext as it was at git REF")
    parser.add_argument(
        "--peers",
        help="comma-separated libraries (default: all): " + ", ".join([*_peers.LOADERS, GO]),
    )
    parser.add_argument("--json", metavar="PATH", help="write gocontext's figures to PATH as JSON")
    parser.add_argument(
        "--no-extras", action="store_true", help="skip the async, HTTP, group and Ray benchmarks"
    )
    args = parser.parse_args(argv)
    s = Settings(quick=args.quick)
    names = args.peers.split(",") if args.peers else [*_peers.LOADERS, GO]
    adapters = _peers.load([n for n in names if n != GO])
    import gocontext

    if args.json:  # the baseline's subprocess: only the figures
        run = measure(adapters, s)
        ours = {r: f[OURS] for r, f in run.rows.items() if OURS in f}
        Path(args.json).write_text(json.dumps({"from": gocontext.__file__, "figures": ours}))
        return
    print(
        f"# gocontext benchmarks\n\nPython {platform.python_version()} "
        f"({sys.implementation.name}), {os.cpu_count()} cores, {platform.machine()}"
        f"{', QUICK run (small counts)' if s.quick else ''}\n"
    )
    print(
        "Ratios peer/ours above 1.00x: gocontext is faster or smaller. met/MISSED: "
        "gocontext's figure against its target (TARGETS in bench.py), in this run."
    )
    print(f"- gocontext: {Path(gocontext.__file__).parent}")
    for a in adapters:
        if isinstance(a, _peers.Missing):
            print(f"- {a.name}: missing, {a.why}")
    old_new = None
    if args.baseline:
        rounds = s.n(2, 1)
        print(
            f"- old: gocontext at {args.baseline}. The old figure and new/old come from runs of "
            f"gocontext alone in subprocesses, old and new alternating, {rounds} each (the best "
            "is kept); the figure beside it is this process's, measured as the peers are"
        )
        old_new = baseline(args.baseline, s, rounds)
    run = measure(adapters, s)
    libs = [a.name for a in adapters if not isinstance(a, _peers.Missing)]
    if GO in names:
        go, version = go_figures(s)
        print(f"- Go: {version}" if go else f"- Go: no figures ({version})")
        for row, ns in go.items():
            run.rows.setdefault(row, {})[GO] = ns
        libs.append(GO)
    for sec in SECTIONS:
        print_section(sec, run, libs, old_new)
    if not args.no_extras:
        for extra in ("bench_async", "bench_http", "bench_ray"):
            try:  # each needs its own extras (anyio and trio, httpx and uvicorn, Ray)
                mod = importlib.import_module(f".{extra}", __package__)
            except ImportError as e:
                print(f"\n({extra}: skipped, {e})")
                continue
            mod.main(quick=s.quick)


def measure(adapters: list[Adapter], s: Settings) -> Run:
    run = Run()
    for sec in SECTIONS:
        names = run.sections.setdefault(sec.title, [])
        for a in adapters:
            if isinstance(a, _peers.Missing):
                continue
            for row, v in sec.measure(a, s).items():
                run.rows.setdefault(row, {})[a.name] = v
                if row not in names:
                    names.append(row)
    return run


if __name__ == "__main__":
    main()
