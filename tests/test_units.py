"""units: byte constants, size text, '16GiB' parsing and the process's memory figures."""
from __future__ import annotations

import pytest

from qwenkit.errors import ConfigError
from qwenkit.units import (
    GB,
    GiB,
    KiB,
    MiB,
    TiB,
    format_bytes,
    parse_bytes,
    ram_available_bytes,
    ram_total_bytes,
    rss_bytes,
)


def test_constants():
    assert (KiB, MiB, GiB, TiB) == (1024, 1024**2, 1024**3, 1024**4)
    assert GB == 1_000_000_000


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
    (int(62.81 * MiB), "62.81 MiB"), (int(19.70 * GiB), "19.70 GiB"), (3 * TiB, "3.00 TiB"),
    (5000 * TiB, "5000.00 TiB"), (-2 * MiB, "-2.00 MiB"),
])
def test_format_bytes_auto(n, text):
    # the steps gguf_info's summaries have always shown
    assert format_bytes(n) == text


def test_format_bytes_fixed_unit_and_digits():
    assert format_bytes(int(19.7 * GiB), "GiB") == "19.70 GiB"           # plan's _gib
    assert format_bytes(1234.5 * MiB, "MiB", 1, grouping=True) == "1,234.5 MiB"   # kvnotes
    assert format_bytes(1234.5 * MiB, "MiB", 1) == "1234.5 MiB"
    assert format_bytes(21 * GB, "GB", 0) == "21 GB"
    assert format_bytes(100 * MiB, "GiB") == "0.10 GiB"                 # a fixed unit is kept below 1


def test_format_bytes_unit_choice():
    # synthetic.summary's rule: GiB from 1 GiB up, MiB below
    assert format_bytes(GiB - 1, ("MiB", "GiB")) == "1024.00 MiB"
    assert format_bytes(GiB, ("MiB", "GiB")) == "1.00 GiB"
    assert format_bytes(10 * KiB, ("MiB", "GiB")) == "0.01 MiB"         # below every unit: the first
    with pytest.raises(ValueError, match="unknown unit 'Gb'"):
        format_bytes(1, "Gb")


@pytest.mark.parametrize("text, n", [
    ("16GiB", 16 * GiB), ("15.5 GB", 15_500_000_000), ("800MiB", 800 * MiB), ("12000mib", 12000 * MiB),
    ("4096", 4096), (" 2 g ", 2 * GB), ("1.5TiB", int(1.5 * TiB)), ("64k", 64_000), ("7B", 7),
])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "GiB", "16 GiBs", "-1GiB", "1.2.3GiB", "sixteen"])
def test_parse_bytes_refuses_with_the_fix(text):
    with pytest.raises(ConfigError) as e:
        parse_bytes(text)
    assert "cannot read a memory size" in e.value.problem and "16GiB" in (e.value.fix or "")


def test_ram_figures_are_this_machines():
    total, avail = ram_total_bytes(), ram_available_bytes()
    assert total is not None and avail is not None
    assert 64 * MiB < avail <= total


def test_rss_grows_with_touched_memory():
    # a fresh anonymous mapping, not the heap: an earlier test can leave 64 MiB of freed but
    # resident heap behind, which a bytes object would reuse without RSS growing (random order)
    import mmap
    before = rss_bytes()
    with mmap.mmap(-1, 64 * MiB) as block:
        for off in range(0, 64 * MiB, mmap.PAGESIZE):   # one byte per page makes each resident
            block[off] = 1
        grown = rss_bytes() - before
    assert 48 * MiB < grown < 128 * MiB
