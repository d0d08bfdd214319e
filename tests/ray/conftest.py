"""A real local Ray cluster, started once for the session, on loopback only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


def init_local_ray(namespace: str) -> None:
    """Start a local Ray on loopback: two CPUs, no dashboard, workers' output kept to them."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        namespace=namespace,
        runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},
    )


@pytest.fixture(scope="session", autouse=True)
def ray_cluster() -> Iterator[None]:
    init_local_ray("gocontext-tests")
    try:
        yield
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
class Signal:
    """A handshake across processes: set() from a task, wait() from the test."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.notes: list[str] = []

    async def set(self, note: str = "") -> None:
        self.notes.append(note)
        self.event.set()

    async def wait(self) -> list[str]:
        await self.event.wait()
        return self.notes

    async def clear(self) -> None:
        self.event.clear()
        self.notes = []


@pytest.fixture
def signal() -> Iterator[object]:
    s = Signal.remote()  # type: ignore[attr-defined]
    yield s
    ray.kill(s)
