"""Fault suite, fuzz: property-based mutations of a real GGUF header (the tiny random qwen35moe,
about 20 KB of header: 40 keys with a vocabulary and merges, 149 tensors) fed to the kit's
header reader (`parse_gguf`, then `model_info`). Whatever the bytes, the reader returns a
valid parse or raises GGUFError: no other exception, no hang, no read beyond the file, no
large allocation. Derandomized (the same cases every run) and without an example database,
so CI runs are repeatable and leave nothing behind.

Each property runs as one campaign per session (`_campaign`), whichever test asks first:
its own test, or the summary, which needs all four and so runs alone or in any order."""
from __future__ import annotations

import struct
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenkit.errors import GGUFError
from qwenkit.gguf_info import model_info, parse_gguf, read_gguf

pytestmark = pytest.mark.faults
MiB = 1 << 20
FUZZ: dict[str, Any] = {"deadline": None, "derandomize": True, "database": None,
                        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
N = {"bit_flips": 1000, "truncation": 500, "inflated_field": 1000, "overwrite": 500}

_state: dict = {}
_done: set[str] = set()   # campaigns that finished without a failure this session


def _base() -> dict:
    """The real header, its file size, and the offsets of every u64 in it that holds a plausible
    count or length (1..10^6): the fields a corruption would inflate."""
    if not _state:
        from qwenkit import synthetic
        path = synthetic.tiny_model("qwen35moe")
        g = read_gguf(path)
        head = path.read_bytes()[: g.header_size]
        fields = [i for i in range(len(head) - 8) if 1 <= struct.unpack_from("<Q", head, i)[0] <= 10**6]
        _state.update(head=head, size=path.stat().st_size, fields=fields, stats={k: Counter() for k in N})
    return _state


def _campaign(kind: str) -> Counter:
    """Run the `kind` property's hypothesis campaign once per session; its counts."""
    if kind not in _done:
        _base()["stats"][kind] = Counter()   # a campaign that failed half-way starts again
        _PROPERTIES[kind]()                  # raises hypothesis's falsifying example
        _done.add(kind)
    return _base()["stats"][kind]


def check(data: bytes, file_size: int, kind: str) -> None:
    """Parse `data` as the first bytes of a `file_size`-byte file (zeros after it)."""
    reads: list[int] = []

    def read(off: int, n: int) -> bytes:
        assert off >= 0 and n >= 0, (off, n)
        reads.append(n)
        end = min(off + n, file_size)
        if end <= off:
            return b""
        chunk = data[off:end]
        return chunk + bytes(end - off - len(chunk))

    stats = _base()["stats"][kind]
    t = time.monotonic()
    try:
        info = model_info([parse_gguf(read, file_size, "fuzz.gguf")])
        assert info.n_layer >= 0
        stats["parsed"] += 1
    except GGUFError as e:
        assert "fuzz.gguf" in e.problem or "no GGUF files" in e.problem
        stats["GGUFError"] += 1
    took = time.monotonic() - t
    stats["max_ms"] = max(stats["max_ms"], round(took * 1000))
    stats["max_read_bytes"] = max(stats["max_read_bytes"], sum(reads))
    assert took < 2, f"{took:.1f} s for one header"
    assert sum(reads) <= 64 * MiB, f"read {sum(reads):,} bytes of a {file_size:,}-byte file"


@settings(max_examples=N["bit_flips"], **FUZZ)
@given(st.data())
def _fuzz_bit_flips(data):
    b = _base()
    head = bytearray(b["head"])
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(head) - 1), label="byte")
        head[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    check(bytes(head), b["size"], "bit_flips")


@settings(max_examples=N["truncation"], **FUZZ)
@given(st.data())
def _fuzz_truncation(data):
    b = _base()
    cut = data.draw(st.integers(0, len(b["head"])), label="cut")
    tail = data.draw(st.sampled_from([0, 0, 1, 4096, b["size"] - len(b["head"]) - 1]), label="data bytes kept")
    check(b["head"][:cut], cut + tail if cut == len(b["head"]) else cut, "truncation")


@settings(max_examples=N["inflated_field"], **FUZZ)
@given(st.data())
def _fuzz_inflated_field(data):
    b = _base()
    i = data.draw(st.sampled_from(b["fields"]), label="field offset")
    value = data.draw(st.one_of(st.sampled_from([2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63, 2**64 - 1]),
                                st.integers(0, 2**64 - 1), st.integers(0, 1 << 24)), label="value")
    head = bytearray(b["head"])
    struct.pack_into("<Q", head, i, value)
    check(bytes(head), b["size"], "inflated_field")


@settings(max_examples=N["overwrite"], **FUZZ)
@given(st.data())
def _fuzz_overwrite(data):
    b = _base()
    head = bytearray(b["head"])
    start = data.draw(st.integers(0, len(head) - 1), label="start")
    junk = data.draw(st.binary(min_size=1, max_size=64), label="bytes")
    head[start:start + len(junk)] = junk
    check(bytes(head[: len(b["head"])]), b["size"], "overwrite")


_PROPERTIES = {"bit_flips": _fuzz_bit_flips, "truncation": _fuzz_truncation,
               "inflated_field": _fuzz_inflated_field, "overwrite": _fuzz_overwrite}


def test_fuzz_bit_flips():
    _campaign("bit_flips")


def test_fuzz_truncation():
    _campaign("truncation")


def test_fuzz_inflated_field():
    _campaign("inflated_field")


def test_fuzz_overwrite():
    _campaign("overwrite")


def test_fuzz_summary(faults_log):
    """Records how many cases each property tried (running the campaigns not yet run)."""
    for kind, n in N.items():
        s = _campaign(kind)
        cases = s["parsed"] + s["GGUFError"]
        assert cases >= n * 0.9, (kind, dict(s))
        faults_log.add(f"fuzz:{kind}", area="fuzz",
                       input=f"tiny qwen35moe header ({len(_base()['head']):,} B), hypothesis, {n} examples",
                       fault={"bit_flips": "1-8 random bit flips",
                              "truncation": "header cut at any byte",
                              "inflated_field": "a count/length u64 set to 0..2^64-1",
                              "overwrite": "1-64 random bytes written anywhere"}[kind],
                       result=f"{cases} cases: {s['GGUFError']} GGUFError, {s['parsed']} valid parses, "
                       f"0 other errors; slowest {s['max_ms']} ms, most bytes read {s['max_read_bytes']:,}",
                       cases=cases, gguf_errors=s["GGUFError"], parsed=s["parsed"], max_ms=s["max_ms"],
                       max_read_bytes=s["max_read_bytes"])
