"""Byte units, size text and the process's memory figures: one home for what several modules
used to define for themselves (MiB/GiB constants, size formatting, '16GiB' parsing, /proc readers)."""
from __future__ import annotations

import os
import re

from qwenkit.errors import ConfigError

__all__ = [
    "GB", "GiB", "KB", "KiB", "MB", "MiB", "TB", "TiB",
    "format_bytes", "parse_bytes", "ram_available_bytes", "ram_total_bytes", "rss_bytes",
]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB")
_SIZES = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB, "KB": KB, "MB": MB, "GB": GB, "TB": TB}
# what parse_bytes reads (case-insensitive): a bare k/m/g/t is decimal, as in "15.5G" = 15.5 GB
_PARSE = {"": 1, "b": 1, "k": KB, "kb": KB, "kib": KiB, "m": MB, "mb": MB, "mib": MiB,
          "g": GB, "gb": GB, "gib": GiB, "t": TB, "tb": TB, "tib": TiB}


def format_bytes(n: float, unit: str | tuple[str, ...] | None = None, digits: int = 2, *,
                 grouping: bool = False) -> str:
    """`n` bytes as text: '19.70 GiB'.

    unit: one unit ('MiB', 'GB', ...) to always use; a tuple of units in ascending order to use
    the largest that `n` reaches (the first if it reaches none); None for B..TiB in steps of 1024.
    Bytes are shown whole ('512 B'), other units with `digits` decimals; `grouping` adds
    thousands separators ('1,234.5 MiB')."""
    units = _BINARY if unit is None else (unit,) if isinstance(unit, str) else tuple(unit)
    for u in units:
        if u not in _SIZES:
            raise ValueError(f"unknown unit {u!r}: one of {', '.join(_SIZES)}")
    chosen = units[0]
    for u in units:
        if abs(n) >= _SIZES[u]:
            chosen = u
    sep = "," if grouping else ""
    places = 0 if chosen == "B" else digits
    return f"{n / _SIZES[chosen]:{sep}.{places}f} {chosen}"


def parse_bytes(text: str) -> int:
    """'16GiB' -> 17179869184, '15.5 GB' -> 15500000000, '800MiB', plain bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _PARSE:
        raise ConfigError(f"cannot read a memory size from {text!r}", "write e.g. 16GiB, 15.5GB or 12000MiB")
    try:
        return int(float(m.group(1)) * _PARSE[m.group(2).lower()])
    except ValueError:  # '1.2.3GiB': digits and dots, but not a number
        raise ConfigError(f"cannot read a memory size from {text!r}",
                          "write e.g. 16GiB, 15.5GB or 12000MiB") from None


def ram_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what the kernel says can be allocated without swapping);
    None where there is no /proc."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def ram_total_bytes() -> int | None:
    """Physical memory of the machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover
        return 0
