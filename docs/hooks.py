"""Build-time steps of the documentation site (mkdocs hooks).

- The benchmark page's tables and plot come from the benchmark's own committed output
  (``docs/benchmarks/results.md``, written by ``benchmarks/bench.py``), through ``gen_bench``.
- The build fails if a public name (``__all__`` of ``gocontext`` and of each integration
  package) has no entry in the API reference, so a new name cannot go undocumented.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).parent))
import gen_bench

ROOT = Path(__file__).parent.parent
REFERENCE = {
    "gocontext": "reference/core/index.html",
    "gocontext.http": "reference/http/index.html",
    "gocontext.ray": "reference/ray/index.html",
    "gocontext.aiohttp": "reference/aiohttp/index.html",
    "gocontext.grpc": "reference/grpc/index.html",
    "gocontext.testing": "reference/testing/index.html",
}


def public_names(module: str) -> list[str]:
    """The module's ``__all__``, read from its source: the docs build imports no extra.

    Example:
        >>> "with_cancel" in public_names("gocontext")
        True
        >>> public_names("gocontext.testing")
        ['FakeClock', 'fake_clock']
    """
    package = ROOT.joinpath(*module.split("."), "__init__.py")
    path = package if package.exists() else package.parent.with_suffix(".py")  # a plain module
    source = path.read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise PluginError(f"{module} has no literal __all__")


def on_files(files: Files, config: Any, **_: Any) -> Files:
    files.append(
        File.generated(config, gen_bench.PLOT, content=gen_bench.plot_svg(gen_bench.load()))
    )
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "benchmarks.md":
        return markdown.replace(gen_bench.MARKER, gen_bench.tables_markdown(gen_bench.load()))
    return markdown


def on_post_build(config: Any, **_: Any) -> None:
    site = Path(config["site_dir"])
    missing = []
    for module, page in REFERENCE.items():
        html = (site / page).read_text(encoding="utf-8")
        names = public_names(module)
        missing += [f"{module}.{n}" for n in names if f'id="{module}.{n}"' not in html]
    if missing:
        raise PluginError(f"public names missing from the API reference: {', '.join(missing)}")
