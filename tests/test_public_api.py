"""The public surface: exactly the contract's names, public module paths, no extras imported."""

from __future__ import annotations

import subprocess
import sys

import gocontext

CONTRACT = {
    # section 1: the core
    "Context", "Done", "Key", "background", "todo", "with_cancel", "with_cancel_cause",
    "with_deadline", "with_deadline_cause", "with_timeout", "with_timeout_cause", "with_value",
    "without_cancel", "merge", "after_func", "cause", "RichContext",
    "ContextError", "Canceled", "Cancelled", "DeadlineExceeded",
    # section 2: async
    "scope", "sleep", "to_thread", "FrameworkCancelled",
    # section 3: the ambient context
    "current", "use",
    # section 4: crossing a process boundary
    "PropagatedKey",
    # section 5: structured concurrency
    "Group", "TaskGroup",
    # section 6: programs
    "signal_context", "SignalReceived", "ContextExecutor",
}  # fmt: skip


def test_all_is_exactly_the_contract() -> None:
    assert set(gocontext.__all__) == CONTRACT
    assert sorted(gocontext.__all__) == list(gocontext.__all__)
    for name in CONTRACT:
        assert getattr(gocontext, name) is not None


def test_public_names_show_their_public_module() -> None:
    for name in CONTRACT:
        obj = getattr(gocontext, name)
        if name != "Cancelled":
            assert obj.__module__ == "gocontext", name
        assert obj.__doc__, name


def test_importing_the_core_imports_no_extra() -> None:
    code = (
        "import sys, gocontext\n"
        "extras = ('httpx', 'starlette', 'ray', 'fastapi', 'uvicorn')\n"
        "bad = [m for m in extras if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_package_is_typed() -> None:
    from importlib.resources import files

    assert files("gocontext").joinpath("py.typed").is_file()
