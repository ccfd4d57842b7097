"""Results as text: a markdown table with mean +- sd, repetitions and a ratio to a baseline,
and the same table as HTML for a notebook."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from qwenkit.bench.results import CONFIG_FIELDS, BenchResult

__all__ = ["fmt_rate", "html", "markdown_table", "table"]


def fmt_rate(r: BenchResult) -> str:
    if not r.rates:
        return "failed" if r.extra.get("error") else "-"
    return f"{r.mean:.2f} ± {r.sd:.2f}"


def table(results: Sequence[BenchResult], baseline: Callable[[BenchResult], BenchResult | None] | None = None,
          columns: Sequence[str] = ()) -> str:
    """A markdown table: path, test, config columns that vary, t/s (mean ± sd), reps, and the
    ratio to a baseline (a function result -> its baseline result)."""
    vary = list(columns) or [k for k in CONFIG_FIELDS
                             if len({json.dumps(r.config.get(k)) for r in results}) > 1]
    head = ["path", "test", *vary, "t/s", "reps"] + (["ratio"] if baseline else [])
    rows = []
    for r in results:
        row = [r.path, r.test, *[str(r.config.get(k, "")) for k in vary], fmt_rate(r), str(len(r.rates))]
        if baseline:
            b = baseline(r)
            row.append(f"{r.mean / b.mean:.3f}" if b and b.rates and r.rates else "")
        rows.append(row)
    return markdown_table(head, rows)


def html(markdown: str, trust_of: Sequence[BenchResult] | None = None):
    """A pipe table (table(), quality.table()) as a qwenkit.htmltable.Table: a notebook shows it
    as an HTML table (printed text tables wrap into unreadable lines), print() as text.
    trust_of: the results behind the rows, in order: adds a "trust" column (qwenkit.trust.judge)."""
    from qwenkit.htmltable import Table
    from qwenkit.trust import judge
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip().startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = cells[0] if cells else []
    rows = [r for r in cells[1:] if not all(set(c) <= set("-:") for c in r)]
    if trust_of is not None:
        head = [*head, "trust"]
        rows = [[*row, judge(r).short if r.rates else "-"] for row, r in zip(rows, trust_of, strict=False)]
    return Table(head, rows)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, every column padded to its widest cell."""
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)] if rows else [len(h) for h in head]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(n) for c, n in zip(cells, w, strict=False)) + " |"
    return "\n".join([line(head), "| " + " | ".join("-" * n for n in w) + " |", *[line(r) for r in rows]])
