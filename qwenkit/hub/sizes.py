"""The size text the hub's tables and messages show (units from qwenkit.units)."""
from __future__ import annotations

from qwenkit.units import GB, GiB, MiB

__all__ = ["GB", "GiB", "human_size"]


def human_size(n: float) -> str:
    """GiB with 2 decimals from 0.1 GiB up, MiB with 1 below (the hub tables' figures)."""
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / MiB:.1f} MiB"
