"""The benchmark page's tables and plot, from the benchmark's own output.

``benchmarks/bench.py`` prints Markdown; its output, committed as ``docs/benchmarks/results.md``,
is the one source. Refresh it with::

    bash benchmarks/run.sh | tee docs/benchmarks/results.md

``python docs/gen_bench.py`` prints the tables and writes the plot to ``ratios.svg`` in the
current directory, to look at them without building the site.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "benchmarks" / "results.md"
PLOT = "benchmarks/ratios.svg"  # where the site serves the plot
MARKER = "<!-- bench-tables -->"


@dataclass
class Table:
    """One of bench.py's sections: a title, its target, a table (maybe empty), lines after it."""

    title: str
    target: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    """bench.py's output: the preamble (machine, Python, missing peers), then its sections."""

    preamble: list[str]
    tables: list[Table]


def parse(text: str) -> Results:
    """Split bench.py's Markdown into the preamble and its sections, in order.

    Example:
        >>> r = parse("# b\\nPython 3.11\\n\\n### op  (target: <= 1 ns)\\n\\n| a | ns |\\n"
        ...           "|---|---:|\\n| gocontext | 1.0 |\\n\\nthreads: 1\\n")
        >>> r.preamble, r.tables[0].title, r.tables[0].target, r.tables[0].rows, r.tables[0].notes
        (['Python 3.11'], 'op', '<= 1 ns', [['gocontext', '1.0']], ['threads: 1'])
    """
    preamble: list[str] = []
    tables: list[Table] = []
    for raw in text.splitlines():
        line = raw.strip()
        heading = re.match(r"^#{2,}\s+(.*?)(?:\s+\(target:\s*(.*)\))?$", line)
        if heading:
            tables.append(Table(heading.group(1).strip(), (heading.group(2) or "").strip()))
        elif not line or line.startswith("# ") or re.match(r"^\(?\d{4}-\d\d-\d\d ", line):
            continue  # blank, the page title, or a log line that reached stdout
        elif not tables:
            preamble.append(line)
        elif line.startswith("|") and not tables[-1].notes:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            if not tables[-1].header:
                tables[-1].header = cells
            else:
                tables[-1].rows.append(cells)
        else:
            tables[-1].notes.append(line)
    return Results(preamble, tables)


def load(path: Path = RESULTS) -> Results:
    """Parse the committed benchmark output."""
    return parse(path.read_text(encoding="utf-8"))


def tables_markdown(results: Results) -> str:
    """The sections again as Markdown, in bench.py's order: title, target, table, notes."""
    out = [line + "\n" for line in results.preamble]
    for t in results.tables:
        out += [f"### {t.title}", ""]
        if t.target:
            out += [f"Target: {t.target}", ""]
        if t.header:
            out.append("| " + " | ".join(t.header) + " |")
            out.append("|---" + "|---:" * (len(t.header) - 1) + "|")
            out += ["| " + " | ".join(r) + " |" for r in t.rows]
            out.append("")
        out += [f"{n}\n" for n in t.notes]
    return "\n".join(out) + "\n"


def ratios(results: Results) -> dict[str, dict[str, float]]:
    """Per table, each peer's ratio to gocontext (above 1: gocontext is faster or smaller).

    Only tables whose last column is bench.py's "ratio to gocontext" count; rows that are
    gocontext itself (or a variant of it) are left out.

    Example:
        >>> t = Table("op", "", ["implementation", "ns", "ratio to gocontext"],
        ...           [["gocontext", "1", "1.00x"], ["peer", "3", "3.00x"], ["x", "0", "n/a"]])
        >>> ratios(Results([], [t]))
        {'op': {'peer': 3.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for t in results.tables:
        if "peer/ours" in t.header:
            out.update(_ratios_by_row(t))
            continue
        if not t.header or t.header[-1] != "ratio to gocontext":
            continue
        row = {
            r[0]: float(r[-1].rstrip("x"))
            for r in t.rows
            if r[-1].endswith("x") and not r[0].startswith("gocontext")
        }
        if row:
            out[t.title] = row
    return out


def _ratios_by_row(t: Table) -> dict[str, dict[str, float]]:
    """A core table (row, library, figure, peer/ours, ...): per row, each peer's ratio; a row's
    name is written on its first line only.

    Example:
        >>> t = Table("op", "", ["row", "library", "ns", "peer/ours", "target", "met"],
        ...           [["err()", "gocontext", "50", "", "≤ 60 ns", "met"],
        ...            ["", "peer", "150", "3.00x", "", ""]])
        >>> _ratios_by_row(t)
        {'err()': {'peer': 3.0}}
    """
    out: dict[str, dict[str, float]] = {}
    at = t.header.index("peer/ours")
    row = ""
    for cells in t.rows:
        row = cells[0] or row
        if cells[at].endswith("x"):
            out.setdefault(row, {})[cells[1]] = float(cells[at].rstrip("x"))
    return out


def plot_svg(results: Results) -> bytes:
    """A bar chart (log scale) of every peer's ratio to gocontext, one group per operation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    data = ratios(results)
    peers = sorted({p for row in data.values() for p in row})
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.55 * max(1, len(data))))
    height = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        ys = [j + i * height for j, row in enumerate(data.values()) if peer in row]
        xs = [row[peer] for row in data.values() if peer in row]
        ax.barh(ys, xs, height=height, label=peer)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(data))])
    ax.set_yticklabels([textwrap(t) for t in data], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("peer / gocontext (log scale): right of 1, gocontext is faster or smaller")
    if peers:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # reproducible output
    plt.close(fig)
    return buf.getvalue()


def textwrap(title: str, width: int = 40) -> str:
    """Break a long title onto lines of at most *width* characters."""
    import textwrap as tw

    return "\n".join(tw.wrap(title, width))


if __name__ == "__main__":
    res = load()
    print(tables_markdown(res))
    out = Path("ratios.svg")
    out.write_bytes(plot_svg(res))
    print(f"plot written to {out}")
