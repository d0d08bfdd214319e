"""What a type checker sees: ``check()``/``remaining()`` on what the library hands out, a
``Key[T]`` that rejects a value that is not a ``T``, and a user-written four-method context that
still type-checks as a parent. The checkers run for real, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gocontext

from .typing.contexts import OtherContext

ROOT = Path(__file__).resolve().parent.parent

WRONG_VALUE = """
import gocontext

N = gocontext.Key[int]("n")
ctx = gocontext.with_value(gocontext.background(), N, "str")
"""

RIGHT_VALUE = """
import gocontext

N = gocontext.Key[int]("n")
ctx = gocontext.with_value(gocontext.background(), N, 3)
other = gocontext.with_value(ctx, ("any", "hashable"), object())
left: float | None = other.remaining()
other.check()
shown: object = other.value(N)
"""

USER_CONTEXT = """
import gocontext
from tests.typing.contexts import OtherContext as Mine  # four methods, value untyped


def handler(parent: gocontext.Context) -> float | None:
    with gocontext.with_timeout(parent, 5) as (ctx, _):
        ctx.check()
        return ctx.remaining()


handler(Mine(gocontext.background()))
with gocontext.use(Mine(gocontext.background())) as here:
    here.check()
gocontext.current().check()
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MYPYPATH": str(ROOT)}  # this tree, and tests
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_mypy_rejects_a_value_that_is_not_the_keys_type(tmp_path: Path) -> None:
    done = _mypy(tmp_path, WRONG_VALUE)
    assert done.returncode == 1, done.stdout + done.stderr
    # mypy says it either way, depending on how it solves T from the key and the value
    said = (
        'Cannot infer value of type parameter "T" of "with_value"',
        'Argument 3 to "with_value" has incompatible type "str"; expected "int"',
    )
    assert "snippet.py:5: error:" in done.stdout, done.stdout
    assert any(s in done.stdout for s in said), done.stdout


@pytest.mark.slow
def test_mypy_accepts_the_keys_type_and_sees_the_extras(tmp_path: Path) -> None:
    done = _mypy(tmp_path, RIGHT_VALUE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_accepts_a_user_written_four_method_context_as_a_parent(tmp_path: Path) -> None:
    done = _mypy(tmp_path, USER_CONTEXT)
    assert done.returncode == 0, done.stdout + done.stderr


PYRIGHT = shutil.which("pyright", path=str(Path(sys.executable).parent)) or shutil.which("pyright")


@pytest.mark.slow
@pytest.mark.skipif(PYRIGHT is None, reason="pyright is not installed")
@pytest.mark.parametrize(
    ("source", "ok"),
    [(WRONG_VALUE, False), (RIGHT_VALUE, True), (USER_CONTEXT, True)],
    ids=["wrong-value", "right-value", "user-context"],
)
def test_pyright_agrees(tmp_path: Path, source: str, ok: bool) -> None:
    assert PYRIGHT is not None
    (tmp_path / "snippet.py").write_text(textwrap.dedent(source))
    config = {"extraPaths": [str(ROOT)], "typeCheckingMode": "strict"}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    done = subprocess.run(
        [PYRIGHT, "--pythonpath", sys.executable, "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert (done.returncode == 0) is ok, done.stdout + done.stderr
    if not ok:
        assert '"Literal[\'str\']" is not assignable to "int"' in done.stdout, done.stdout


def test_current_has_the_extras_while_a_user_written_context_is_in_use() -> None:
    inner, cancel = gocontext.with_timeout(gocontext.background(), 60)
    inner = gocontext.with_value(inner, "k", "v")
    mine = OtherContext(inner)
    with gocontext.use(mine) as here:
        ctx = gocontext.current()
        assert ctx is here
        assert isinstance(ctx, gocontext.RichContext)
        assert ctx.check() is None
        remaining = ctx.remaining()
        assert remaining is not None and 0 < remaining <= 60
        assert ctx.value("k") == "v"
        assert ctx.deadline() == inner.deadline()
        assert ctx.done() is inner.done()
        assert repr(ctx) == "<gocontext OtherContext done=False>"
        cancel()
        with pytest.raises(gocontext.Canceled):
            ctx.check()
        assert isinstance(gocontext.cause(ctx), gocontext.Canceled)
    assert gocontext.current() is gocontext.background()


def test_isinstance_sees_both_protocols() -> None:
    ours = gocontext.with_cancel(gocontext.background()).ctx
    mine = OtherContext(ours)
    assert isinstance(ours, gocontext.Context)
    assert isinstance(ours, gocontext.RichContext)
    assert isinstance(mine, gocontext.Context)
    assert not isinstance(mine, gocontext.RichContext)
    for made in (
        gocontext.with_value(mine, "k", 1),
        gocontext.without_cancel(mine),
        gocontext.merge(mine).ctx,
        gocontext.with_cancel(mine).ctx,
        gocontext.background(),
        gocontext.todo(),
    ):
        assert isinstance(made, gocontext.RichContext), made


@pytest.mark.slow
@pytest.mark.skipif(PYRIGHT is None, reason="pyright is not installed")
def test_pyright_passes_the_typed_api_check(tmp_path: Path) -> None:
    assert PYRIGHT is not None
    checked = sorted(str(p) for p in (ROOT / "tests" / "typing").glob("*.py"))
    assert checked
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({"extraPaths": [str(ROOT)]}))
    done = subprocess.run(
        [PYRIGHT, "--pythonpath", sys.executable, "--project", str(tmp_path), *checked],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 errors" in done.stdout, done.stdout
