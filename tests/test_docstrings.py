"""Every public name documents itself with an example that runs, methods included.

``--doctest-modules`` finds a module's functions and classes, but not the methods of a class
whose ``__module__`` names the public package rather than the file that defines it (doctest
then takes them for imports). This runs those examples too, and checks that each public name has
one.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
from collections.abc import Iterator

import pytest

PACKAGES = [
    "gocontext",
    "gocontext.http",
    "gocontext.ray",
    "gocontext.aiohttp",
    "gocontext.grpc",
    "gocontext.testing",
]


def _public() -> Iterator[tuple[str, object]]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            yield f"{package}.{name}", getattr(module, name)


PUBLIC = dict(_public())


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_has_a_runnable_example(name: str) -> None:
    obj = PUBLIC[name]
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{name} has no example in its docstring"


def _method_tests() -> Iterator[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    for name, obj in sorted(PUBLIC.items()):
        if not inspect.isclass(obj):
            continue
        # module=False: take every member of the class as its own, wherever it was written.
        for test in finder.find(obj, name, module=False, globs={}):
            if test.name != name:  # the class's own docstring runs with its module already
                yield test.name, test


METHOD_TESTS = dict(_method_tests())


def test_methods_with_examples_are_found() -> None:
    assert METHOD_TESTS, "no method examples found: the finder no longer sees them"


@pytest.mark.parametrize("name", sorted(METHOD_TESTS))
def test_method_examples_run(name: str) -> None:
    test = METHOD_TESTS[name]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
