"""gocontext beside the peers a user would otherwise pick, in one run, with ratios.

Run: bash benchmarks/run.sh            (makes its own venv with the peers, then runs this)
     python benchmarks/bench.py --quick (a smoke run with small counts)

Each row prints our figure, every peer that has the operation, the ratio peer/ours (above 1
means we are faster or smaller), and the target. Peers that are not installed are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

import gocontext

QUICK = False


def best_ns(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best of *repeat* runs of *number* calls, in ns per call."""
    if QUICK:
        number, repeat = max(number // 50, 10), 2
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


# --------------------------------------------------------------------------------------------
# Peers (each optional: a missing one is reported, not hidden)

PEERS: dict[str, Any] = {}
MISSING: dict[str, str] = {}


def load_peers() -> None:
    try:
        from golang import context as gctx

        PEERS["pygolang"] = gctx
    except Exception as e:
        MISSING["pygolang"] = f"not installed ({type(e).__name__}: {e})"
    try:
        import cantok

        PEERS["cantok"] = cantok
    except Exception as e:
        MISSING["cantok"] = f"not installed ({type(e).__name__})"
    try:
        import cancel_contexts

        PEERS["cancel-contexts"] = cancel_contexts
    except Exception as e:
        MISSING["cancel-contexts"] = f"not installed ({type(e).__name__})"


# --------------------------------------------------------------------------------------------
# Rows


def row_create_cancel() -> dict[str, float]:
    root, _ = gocontext.with_cancel(gocontext.background())
    wc = gocontext.with_cancel

    def ours() -> None:
        _, cancel = wc(root)
        cancel()

    out = {"gocontext": best_ns(ours, 200_000)}
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        groot, _ = g.with_cancel(g.background())

        def pyg() -> None:
            _, cancel = g.with_cancel(groot)
            cancel()

        out["pygolang"] = best_ns(pyg, 100_000)
    if "cantok" in PEERS:
        ct = PEERS["cantok"]
        troot = ct.SimpleToken()

        def can() -> None:
            ct.SimpleToken(troot).cancel()

        out["cantok"] = best_ns(can, 100_000)
    if "cancel-contexts" in PEERS:
        cc = PEERS["cancel-contexts"]

        def ccx() -> None:  # no parent/child in this library: a bare context
            cc.CancelContext().cancel()

        out["cancel-contexts (no tree)"] = best_ns(ccx, 100_000)

    def event() -> None:
        threading.Event().set()

    out["threading.Event (no tree)"] = best_ns(event, 200_000)
    return out


def row_timeout_cancel() -> dict[str, float]:
    root, _ = gocontext.with_cancel(gocontext.background())
    wt = gocontext.with_timeout

    def ours() -> None:
        _, cancel = wt(root, 5.0)
        cancel()

    out = {"gocontext": best_ns(ours, 200_000)}
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        groot, _ = g.with_cancel(g.background())

        def pyg() -> None:
            _, cancel = g.with_timeout(groot, 5.0)
            cancel()

        # pygolang spends a thread per timer: keep the count low, or its runtime aborts.
        out["pygolang"] = best_ns(pyg, 2_000, repeat=3)
    if "cantok" in PEERS:
        ct = PEERS["cantok"]
        troot = ct.SimpleToken()

        def can() -> None:
            ct.TimeoutToken(5.0, troot).cancel()

        out["cantok"] = best_ns(can, 100_000)
    return out


def threads_for_live_timers(n: int = 10_000) -> dict[str, int]:
    out: dict[str, int] = {}
    before = threading.active_count()
    keep = [gocontext.with_timeout(gocontext.background(), 3600 + i) for i in range(n)]
    out["gocontext"] = threading.active_count() - before
    for _, cancel in keep:
        cancel()
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        before = threading.active_count()
        keep2 = [g.with_timeout(g.background(), 3600 + i) for i in range(min(n, 200))]
        out["pygolang (per 200)"] = threading.active_count() - before
        for _, cancel in keep2:
            cancel()
    return out


def row_err_poll() -> dict[str, float]:
    root, _ = gocontext.with_cancel(gocontext.background())
    child, _ = gocontext.with_cancel(root)
    deep = root
    for _ in range(10):
        deep, _ = gocontext.with_cancel(deep)
    out = {
        "gocontext (root)": best_ns(root.err, 2_000_000),
        "gocontext": best_ns(child.err, 2_000_000),
        "gocontext (10 deep)": best_ns(deep.err, 1_000_000),
    }
    ev = threading.Event()
    out["threading.Event.is_set"] = best_ns(ev.is_set, 2_000_000)
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        groot, _ = g.with_cancel(g.background())
        gchild, _ = g.with_cancel(groot)
        out["pygolang"] = best_ns(gchild.err, 1_000_000)
    if "cantok" in PEERS:
        ct = PEERS["cantok"]
        tchild = ct.SimpleToken(ct.SimpleToken())
        out["cantok"] = best_ns(lambda: tchild.cancelled, 1_000_000)
    if "cancel-contexts" in PEERS:
        cctx = PEERS["cancel-contexts"].CancelContext()
        out["cancel-contexts"] = best_ns(lambda: cctx.cancelled, 1_000_000)
    return out


def row_cancel_tree(width: int = 1000, depth: int = 100) -> dict[str, float]:
    """Cancel a root with width x depth descendants; ns per descendant, cancel + confirm."""
    if QUICK:
        width, depth = 50, 20
    n = width * depth + width

    def go_style(mod: Any) -> float:
        """gocontext and pygolang's golang.context share Go's API: one function for both."""
        root, cancel = mod.with_cancel(mod.background())
        leaves = []
        for _ in range(width):
            mid, _ = mod.with_cancel(root)
            leaves.append(mid)
            leaves.extend(mod.with_cancel(mid)[0] for _ in range(depth))
        t = time.perf_counter_ns()
        cancel()
        for c in leaves:
            if c.err() is None:
                raise AssertionError("a descendant is not done")
        return (time.perf_counter_ns() - t) / n

    out = {"gocontext": min(go_style(gocontext) for _ in range(3))}
    if "pygolang" in PEERS:
        out["pygolang"] = min(go_style(PEERS["pygolang"]) for _ in range(3))
    if "cantok" in PEERS:
        ct = PEERS["cantok"]

        def can() -> float:
            root = ct.SimpleToken()
            leaves = []
            for _ in range(width):
                mid = ct.SimpleToken(root)
                leaves.append(mid)
                leaves.extend(ct.SimpleToken(mid) for _ in range(depth))
            t = time.perf_counter_ns()
            root.cancel()
            for c in leaves:
                if not c.cancelled:
                    raise AssertionError
            return (time.perf_counter_ns() - t) / n

        out["cantok"] = min(can() for _ in range(3))
    return out


def row_value_50() -> dict[str, float]:
    key = gocontext.Key[int]("top")
    ctx = gocontext.with_value(gocontext.background(), key, 1)
    for i in range(49):
        ctx = gocontext.with_value(ctx, i, i)
    out = {"gocontext": best_ns(lambda: ctx.value(key), 1_000_000)}
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        gkey = object()
        gctx = g.with_value(g.background(), gkey, 1)
        for i in range(49):
            gctx = g.with_value(gctx, i, i)
        out["pygolang"] = best_ns(lambda: gctx.value(gkey), 500_000)
    return out


def wake_thread_latency(rounds: int = 2000) -> dict[str, tuple[float, float]]:
    """cancel() to the return of a thread blocked in wait(): median and p99, in µs."""
    if QUICK:
        rounds = 50

    def measure(
        make: Callable[[], tuple[Callable[[], object], Callable[[], object]]],
    ) -> tuple[float, float]:
        lat = []
        for _ in range(rounds):
            wait, fire = make()
            parked = threading.Event()
            woke: list[int] = []

            def waiter(wait: Callable[[], object] = wait) -> None:
                parked.set()
                wait()
                woke.append(time.perf_counter_ns())

            t = threading.Thread(target=waiter)
            t.start()
            parked.wait()
            time.sleep(0.0002)  # let the waiter block (benchmark only)
            t0 = time.perf_counter_ns()
            fire()
            t.join()
            lat.append((woke[0] - t0) / 1000)
        return statistics.median(lat), percentile(lat, 0.99)

    def ours() -> tuple[Callable[[], object], Callable[[], object]]:
        ctx, cancel = gocontext.with_cancel(gocontext.background())
        return ctx.done().wait, cancel

    def event() -> tuple[Callable[[], object], Callable[[], object]]:
        ev = threading.Event()
        return ev.wait, ev.set

    out = {"gocontext": measure(ours), "threading.Event": measure(event)}
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        from golang import select

        def pyg() -> tuple[Callable[[], object], Callable[[], object]]:
            ctx, cancel = g.with_cancel(g.background())
            return (lambda: select(ctx.done().recv)), cancel

        out["pygolang"] = measure(pyg)
    return out


def wake_asyncio_latency(rounds: int = 2000) -> dict[str, float]:
    """cancel() in another thread to an asyncio task's return from awaiting; median µs."""
    if QUICK:
        rounds = 50

    async def run(kind: str) -> float:
        loop = asyncio.get_running_loop()
        lat = []
        for _ in range(rounds):
            if kind == "gocontext":
                ctx, fire = gocontext.with_cancel(gocontext.background())
                wait = ctx.done
            else:
                ev = asyncio.Event()
                wait = ev.wait

                def fire(ev: asyncio.Event = ev) -> None:
                    loop.call_soon_threadsafe(ev.set)

            t0: list[int] = []
            parked = threading.Event()

            def canceller(fire: Callable[[], object] = fire) -> None:
                parked.wait()
                time.sleep(0.0002)
                t0.append(time.perf_counter_ns())
                fire()

            th = threading.Thread(target=canceller)
            th.start()
            loop.call_soon(parked.set)
            await wait()
            lat.append((time.perf_counter_ns() - t0[0]) / 1000)
            th.join()
        return statistics.median(lat)

    return {
        "gocontext": asyncio.run(run("gocontext")),
        "asyncio.Event + call_soon_threadsafe": asyncio.run(run("event")),
    }


def memory_per_child(n: int = 100_000) -> dict[str, float]:
    if QUICK:
        n = 2000
    out: dict[str, float] = {}

    def measure(make: Callable[[], object]) -> float:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        keep = [make() for _ in range(n)]
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del keep
        return used / n

    root, _ = gocontext.with_cancel(gocontext.background())
    out["gocontext"] = measure(lambda: gocontext.with_cancel(root))
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        groot, _ = g.with_cancel(g.background())
        out["pygolang"] = measure(lambda: g.with_cancel(groot))
    if "cantok" in PEERS:
        ct = PEERS["cantok"]
        troot = ct.SimpleToken()
        out["cantok"] = measure(lambda: ct.SimpleToken(troot))
    out["threading.Event (no tree)"] = measure(threading.Event)
    return out


def forgotten_children(n: int = 1_000_000) -> dict[str, float]:
    """Bytes still held per child after n children of one live root are dropped uncancelled."""
    if QUICK:
        n = 5000
    out: dict[str, float] = {}

    def measure(make: Callable[[], object], count: int) -> float:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            make()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return max(0.0, held / count)

    root, _ = gocontext.with_cancel(gocontext.background())
    out["gocontext"] = measure(lambda: gocontext.with_cancel(root), n)
    if "pygolang" in PEERS:
        g = PEERS["pygolang"]
        groot, _ = g.with_cancel(g.background())
        out["pygolang (100,000)"] = measure(lambda: g.with_cancel(groot), min(n, 100_000))
    if "cantok" in PEERS:
        ct = PEERS["cantok"]
        troot = ct.SimpleToken()
        out["cantok (100,000)"] = measure(lambda: ct.SimpleToken(troot), min(n, 100_000))
    return out


def deadline_lateness(rounds: int = 500) -> tuple[float, float]:
    """How late a deadline fires on an idle machine: median and p99, in ms."""
    if QUICK:
        rounds = 20
    late = []
    for _ in range(rounds):
        ctx, _ = gocontext.with_timeout(gocontext.background(), 0.002)
        d = ctx.deadline()
        ctx.done().wait()
        late.append((time.monotonic() - d) * 1000)  # type: ignore[operator]
    return statistics.median(late), percentile(late, 0.99)


# --------------------------------------------------------------------------------------------
# Printing


def table(
    title: str, unit: str, figures: dict[str, float], target: str, lower_better: bool = True
) -> None:
    ours = next(v for k, v in figures.items() if k == "gocontext")
    print(f"\n### {title}  (target: {target})\n")
    print(f"| implementation | {unit} | ratio to gocontext |")
    print("|---|---:|---:|")
    for name, v in figures.items():
        if name == "gocontext" or ours < 1e-3 or v < 1e-3:
            ratio = "1.00x" if name == "gocontext" else "n/a"
        else:
            ratio = f"{(v / ours if lower_better else ours / v):.2f}x"
        print(f"| {name} | {v:,.1f} | {ratio} |")


def main() -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    QUICK = parser.parse_args().quick
    load_peers()
    print(
        f"# gocontext benchmarks\n\nPython {platform.python_version()} ({sys.implementation.name}), "
        f"{os.cpu_count()} cores, {platform.machine()}{', QUICK run' if QUICK else ''}"
    )
    print(
        "Ratios are peer / gocontext for times and sizes: above 1.00x, gocontext is faster or smaller."
    )
    for name, why in MISSING.items():
        print(f"- peer {name}: {why}")

    table(
        "create a cancelable child of a live root + cancel it",
        "ns",
        row_create_cancel(),
        "<= 600 ns",
    )
    table("create a 5 s timeout child + cancel it", "ns", row_timeout_cancel(), "<= 1.2 µs")
    print(
        "\nthreads added by 10,000 live timers:",
        threads_for_live_timers(10_000 if not QUICK else 500),
    )
    table("err() poll on a live context", "ns", row_err_poll(), "<= 35 ns")
    table(
        "cancel a tree of 101,000 descendants (cancel + confirm each is done)",
        "ns each",
        row_cancel_tree(),
        "<= 300 ns each",
    )
    table("value() 50 levels up", "ns", row_value_50(), "<= 400 ns")
    wake = wake_thread_latency()
    print("\n### wake a blocked thread on cancel  (target: <= 10 / 50 µs)\n")
    print("| implementation | median µs | p99 µs |\n|---|---:|---:|")
    for name, (med, p99) in wake.items():
        print(f"| {name} | {med:.1f} | {p99:.1f} |")
    table(
        "wake an asyncio task on cancel from another thread (median)",
        "µs",
        wake_asyncio_latency(),
        "<= 50 µs",
    )
    table(
        "memory per live cancelable child (ctx, cancel) kept",
        "bytes",
        memory_per_child(),
        "<= 220 B",
    )
    table(
        "forgotten children of one live root, held after gc",
        "bytes each",
        forgotten_children(),
        "0 B held",
    )
    med, p99 = deadline_lateness()
    print(
        f"\ndeadline lateness on the shared timer: median {med:.2f} ms, p99 {p99:.2f} ms (target: p99 <= 10 ms)"
    )
    for extra in ("bench_async", "bench_http", "bench_ray"):
        try:
            mod = __import__(extra)
        except ImportError as e:
            print(f"\n({extra}: skipped, {e})")
            continue
        mod.main(quick=QUICK)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
