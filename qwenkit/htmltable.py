"""Tables that read well in a terminal and in a notebook.

`Table` is a `str` (the aligned text a CLI prints; `in`, `print`, `count` work as on any
string) that a notebook shows as an HTML table (`_repr_html_`): wide text tables wrap into
unreadable lines in a narrow output area, an HTML table does not.

    t = Table(["quant", "size"], [["Q4_K_M", "19.70 GiB"]], title="quants", align="lr")
    print(t)        # text
    t               # (last line of a notebook cell) an HTML table
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from qwenkit.units import GiB, MiB

__all__ = ["Table", "compare_table", "fit_table"]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


class Table(str):
    """A text table that renders as HTML in a notebook. `align`: one letter per column,
    "l" or "r" (default: numbers right, text left)."""

    columns: list[str]
    rows: list[list[str]]
    caption: str | None         # the title line (not `title`: that is str.title())
    notes: list[str]
    align: str
    bold_last: bool

    def __new__(cls, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                notes: Sequence[str] = (), align: str | None = None, bold_last: bool = False) -> Table:
        cols = [str(c) for c in columns]
        cells = [[_cell(v) for v in r] for r in rows]
        if align is None:
            align = "".join("r" if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
                            else "l" for i in range(len(cols)))
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

        def line(xs: Sequence[str]) -> str:
            return "  ".join(x.rjust(w) if a == "r" else x.ljust(w)
                             for x, w, a in zip(xs, widths, align, strict=True)).rstrip()

        text = "\n".join(([title] if title else []) + [line(cols)] + [line(r) for r in cells]
                         + [f"note: {n}" for n in notes])
        obj = super().__new__(cls, text)
        obj.columns, obj.rows, obj.caption, obj.notes = cols, cells, title, list(notes)
        obj.align, obj.bold_last = align, bold_last
        return obj

    def __repr__(self) -> str:  # a console (and a notebook's text/plain) shows the table, not a quoted string
        return str.__str__(self)

    def _repr_html_(self) -> str:
        if not self.columns:
            return f"<div>{html.escape(self.caption or '')}</div>"

        def td(x: str, a: str, tag: str = "td", bold: bool = False) -> str:
            style = "text-align:right" if a == "r" else "text-align:left"
            x = html.escape(x)
            return f"<{tag} style='{style}'>{'<b>' + x + '</b>' if bold else x}</{tag}>"

        head = "".join(td(c, a, "th") for c, a in zip(self.columns, self.align, strict=True))
        body = "".join("<tr>" + "".join(td(x, a, bold=self.bold_last and i == len(self.rows) - 1)
                                        for x, a in zip(r, self.align, strict=True)) + "</tr>"
                       for i, r in enumerate(self.rows))
        title = f"<div><b>{html.escape(self.caption)}</b></div>" if self.caption else ""
        notes = "".join(f"<div style='font-size:90%'><i>note: {html.escape(n)}</i></div>" for n in self.notes)
        return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def fit_table(info, vram_budget: int, contexts=(8192, 32768, 65536, 131072),
              kv_types=(("f16", "f16"), ("q8_0", "q8_0"))) -> Table:
    """For each context and KV type pair: the fitted n_cpu_moe / n_gpu_layers and the planned
    GPU and RAM use (`plan.fit_report`), so the cost of context and of KV quantization can be
    read side by side."""
    from qwenkit.config import RunConfig
    from qwenkit.plan import fit_report
    rows = []
    for n_ctx in contexts:
        for tk, tv in kv_types:
            r = fit_report(info, vram_budget, RunConfig(model=str(info.source), n_ctx=n_ctx, type_k=tk, type_v=tv))
            c = r.cfg
            rows.append([n_ctx, f"{tk}/{tv}", round(r.plan.kv / MiB), c.n_cpu_moe, c.n_gpu_layers,
                         f"{r.plan.gpu_total / GiB:.2f}", f"{r.plan.cpu_total / GiB:.2f}",
                         "yes" if r.fits else "no"])
    return Table(["n_ctx", "K/V", "KV MiB", "n_cpu_moe", "n_gpu_layers", "GPU GiB", "RAM GiB", "fits"], rows,
                 title=f"fitted to a {vram_budget / GiB:.1f} GiB budget", align="rlrrrrrl")


def compare_table(cmp: dict[str, dict[str, float]]) -> Table:
    """`plan.compare` (planned vs llama.cpp's no-alloc figures) as a table."""
    rows = [[k, f"{v['planned'] / MiB:,.2f}", f"{v['llama'] / MiB:,.2f}", f"{v['rel_error'] * 100:+.2f} %"]
            for k, v in cmp.items()]
    return Table(["part", "planned MiB", "llama.cpp MiB", "error"], rows, align="lrrr", bold_last=True)
