"""What a user downloads: the wheel's metadata and files, an sdist that tests itself, the extras."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300  # seconds a build or a collection may take before the test fails


def build(kind: str, outdir: Path) -> Path:
    """Build an sdist or a wheel of this tree with the project's own backend, offline."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree")
    code = f"import sys, setuptools.build_meta as b\nprint(b.build_{kind}(sys.argv[1]))\n"
    out = subprocess.run(
        [sys.executable, "-c", code, str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return outdir / out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(build("wheel", tmp_path_factory.mktemp("wheel"))) as whl:
        yield whl


def metadata(whl: zipfile.ZipFile) -> Message:
    (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(whl.read(name).decode())


@pytest.mark.slow
def test_the_wheel_ships_the_license_and_the_typed_marker(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "gocontext/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    license_text = next(n for n in names if n.endswith("/LICENSE"))
    assert wheel.read(license_text).decode().startswith("MIT License")


@pytest.mark.slow
def test_the_wheel_metadata_names_license_pythons_status_and_urls(wheel: zipfile.ZipFile) -> None:
    meta = metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None  # the deprecated free-text field is gone
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Documentation", "Source", "Changelog"} <= set(urls)
    assert meta["Author"] or meta["Author-email"]
    assert meta["Keywords"]


@pytest.mark.slow
def test_each_extra_pulls_only_what_its_side_needs(wheel: zipfile.ZipFile) -> None:
    requires = metadata(wheel).get_all("Requires-Dist") or []

    def extra(name: str) -> list[str]:
        return [r.split(";")[0].strip() for r in requires if f'extra == "{name}"' in r]

    client = " ".join(extra("http-client"))
    assert "httpx" in client and "starlette" not in client
    assert "httpx" not in " ".join(extra("http-server"))
    assert extra("http") == ["gocontext[http-client,http-server]"]
    (ray,) = extra("ray")
    assert ray.startswith("ray>") and "[" not in ray  # plain Ray, not ray[default]
    for wire, library in (("requests", "requests"), ("aiohttp", "aiohttp"), ("grpc", "grpcio")):
        (req,) = extra(wire)
        assert req.startswith(library + ">"), (wire, req)
    (everything,) = [r for r in extra("test") if r.startswith("gocontext[")]
    assert set(everything[len("gocontext[") : -1].split(",")) == {
        "http", "ray", "requests", "aiohttp", "grpc"
    }  # fmt: skip


def test_the_http_middleware_imports_without_httpx_and_the_transports_name_their_extra() -> None:
    """A server-only install (no httpx, no Starlette) can use the ASGI middleware."""
    code = (
        "import sys\n"
        "for m in ('httpx', 'httpcore', 'starlette'):\n"
        "    sys.modules[m] = None  # as if not installed\n"
        "import gocontext.http\n"
        "assert gocontext.http.ContextMiddleware\n"
        "try:\n"
        "    gocontext.http.Transport\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pip install 'gocontext[http-client]'" in out.stdout


@pytest.mark.slow
def test_the_sdist_holds_the_whole_suite_and_it_collects_without_errors(tmp_path: Path) -> None:
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path, filter="data")
        else:  # a Python from before extraction filters; our own archive, just built
            tar.extractall(tmp_path)
    root = tmp_path / sdist.name.removesuffix(".tar.gz")
    for needed in (
        "LICENSE", "README.md", "CHANGELOG.md", "tests/__init__.py", "tests/conftest.py",
        "tests/strategies.py", "tests/http/conftest.py", "tests/ray/conftest.py",
        "tests/typing/check_api.py", "examples/tour.py", "benchmarks/bench.py",
    ):  # fmt: skip
        assert (root / needed).is_file(), needed
    env = {**os.environ, "PYTHONPATH": str(root)}
    where = subprocess.run(
        [sys.executable, "-c", "import gocontext; print(gocontext.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(root)  # the sdist's copy is under test
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "error" not in out.stdout.splitlines()[-1], out.stdout[-3000:]
    assert "tests/http/" in out.stdout and "tests/ray/" in out.stdout
