"""Each wire is an extra: the core and gocontext.http import none of them, and a missing one
is an ImportError that names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_core_and_gocontext_http_import_no_wire() -> None:
    out = run(
        "import sys, gocontext, gocontext.http\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'aiohttp', 'grpc') if m in sys.modules))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("blocked", "statement", "extra"),
    [
        ("requests", "from gocontext.http import RequestsAdapter", "gocontext[requests]"),
        ("aiohttp", "import gocontext.aiohttp", "gocontext[aiohttp]"),
        ("grpc", "import gocontext.grpc", "gocontext[grpc]"),
    ],
)
def test_a_missing_extra_is_an_import_error_naming_it(
    blocked: str, statement: str, extra: str
) -> None:
    out = run(f"import sys\nsys.modules[{blocked!r}] = None\n{statement}\n")
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert f"pip install '{extra}'" in out.stderr, out.stderr
