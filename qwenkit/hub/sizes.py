"""Byte units and the size text the hub's tables and messages show."""
from __future__ import annotations

__all__ = ["GB", "GiB", "human_size"]


GiB = 1 << 30
GB = 1_000_000_000


def human_size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"
