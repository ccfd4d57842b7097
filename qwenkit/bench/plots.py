"""Results as a bar chart (matplotlib)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from qwenkit.bench.results import BenchResult

__all__ = ["plot"]


def plot(results: Sequence[BenchResult], x: str | None = None, ax=None, title: str | None = None):
    """Bar chart of mean t/s with sd error bars: one panel per kind (pp, tg), bars by `x`
    (a config field that varies) or by path. Returns the matplotlib Figure."""
    import matplotlib
    if not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = [k for k in ("pp", "tg") if any(r.kind == k and r.rates for r in results)]
    if ax is None:
        fig, grid = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.6), squeeze=False)
        axes = list(grid[0])
    else:
        axes, fig = [ax], ax.figure
    for a, kind in zip(axes, kinds, strict=False):  # no results: one empty panel
        rs = [r for r in results if r.kind == kind and r.rates]
        labels = [(f"{r.config.get(x)}" if x else r.path) + ("" if x else f"\n{r.test}") for r in rs]
        a.bar(range(len(rs)), [r.mean for r in rs], yerr=[r.sd for r in rs], capsize=3, color="#4C72B0")
        a.set_xticks(range(len(rs)), labels, rotation=30 if len(rs) > 4 else 0, fontsize=8)
        a.set_ylabel("tokens / s")
        a.set_title(f"{kind} ({rs[0].test.split(' ')[0]})" + (f" vs {x}" if x else ""))
        for i, r in enumerate(rs):
            a.annotate(f"{r.mean:.1f}", (i, r.mean), ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
