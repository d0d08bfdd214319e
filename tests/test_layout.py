"""The package's own import graph: no cycle, and no import hidden in a function to dodge one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gocontext"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, at module level) for every import *path* makes at run
    time (what sits under ``if TYPE_CHECKING:`` is left out)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        out.append((sub, child.lineno, top))
                    elif target in modules:
                        out.append((target, child.lineno, top))
            elif isinstance(child, ast.Import):
                out.extend(
                    (alias.name, child.lineno, top)
                    for alias in child.names
                    if alias.name in modules
                )
            visit(child, inner)

    visit(tree, True)
    return out


def test_no_module_imports_another_of_ours_inside_a_function() -> None:
    modules = _modules()
    lazy = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        for name, path in modules.items()
        for target, line, top in _imports(name, path, modules)
        if not top
    ]
    assert lazy == []


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    graph = {
        name: sorted({t for t, _, _ in _imports(name, path, modules) if t != name})
        for name, path in modules.items()
    }
    # Depth-first search with colours; a grey node met again closes a cycle.
    colour: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        colour[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if colour.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in colour:
                walk(nxt, stack)
        stack.pop()
        colour[node] = 2

    for name in graph:
        if name not in colour:
            walk(name, [])
    assert cycles == []


def test_the_check_sees_a_cycle_and_a_hidden_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: run them on a package that has both faults.
    global PACKAGE
    pkg = tmp_path / "gocontext"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_a.py").write_text("from ._b import x\n")
    (pkg / "_b.py").write_text("x = 1\ndef f():\n    from ._a import y\n    from . import _a\n")
    (pkg / "_c.py").write_text("from . import _d\n")
    (pkg / "_d.py").write_text("from . import _c\n")
    saved, PACKAGE = PACKAGE, pkg
    try:
        modules = _modules()
        found = {(n, t, top) for n, p in modules.items() for t, _, top in _imports(n, p, modules)}
        assert ("gocontext._b", "gocontext._a", False) in found
        assert ("gocontext._a", "gocontext._b", True) in found
        try:
            test_the_import_graph_has_no_cycle()
        except AssertionError:
            pass
        else:
            raise AssertionError("a cycle went unseen")
    finally:
        PACKAGE = saved
