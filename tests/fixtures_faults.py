"""Fixtures of the fault suite (`pytest -m faults`): broken GGUF files made from a real one,
and the session record of every fault tried and its result.

Records: each test adds what it tried (`faults_log.add(...)`) AFTER its assertions passed, so
a record is a result that held. With `QWENKIT_FAULTS_JSON=path` in the environment the
session writes them to that JSON file at the end (benchmarks/faults/faults.json is the
committed copy, rendered into the README by tools/faults_table.py); without it nothing is
written anywhere.
"""
from __future__ import annotations

import json
import os
import platform
import struct
import time
from pathlib import Path

import pytest

FAULTS_JSON_ENV = "QWENKIT_FAULTS_JSON"
# the marker file a malicious chat template would create if it could run code
TEMPLATE_MARKER = Path("/tmp/qwenkit-faults-template-ran")
MALICIOUS_TEMPLATE = (
    "{{ cycler.__init__.__globals__.os.popen('touch " + str(TEMPLATE_MARKER) + "').read() }}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


class FaultLog:
    """What the suite tried and what happened: one record per fault / input / load."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.t0 = time.monotonic()

    def add(self, id: str, *, area: str, input: str, fault: str, load: str = "-", result: str,
            **figures) -> None:
        self.records[id] = {"id": id, "area": area, "input": input, "fault": fault, "load": load,
                            "result": result, "figures": figures}

    def to_json(self) -> dict:
        areas = ["files", "fuzz", "server", "load", "clients"]
        recs = sorted(self.records.values(),
                      key=lambda r: (areas.index(r["area"]) if r["area"] in areas else 99, r["id"]))
        return {"suite": "pytest -m faults", "records": recs, "count": len(recs),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "suite_seconds": round(time.monotonic() - self.t0, 1)}


@pytest.fixture(scope="session")
def faults_log():
    log = FaultLog()
    yield log
    out = os.environ.get(FAULTS_JSON_ENV)
    if out and log.records:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(log.to_json(), indent=1, ensure_ascii=False) + "\n")


# ---- broken files ------------------------------------------------------------------------------
def _locate_kv(data: bytes, key: str) -> int:
    """Offset just after the key string `key` in the header (its value type follows)."""
    needle = struct.pack("<Q", len(key)) + key.encode()
    i = data.index(needle)
    return i + len(needle)


def broken_variants(good: bytes, header_size: int, first_tensor: str) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, what is wrong), each made from a valid GGUF's bytes."""
    out: dict[str, tuple[bytes, str]] = {}
    out["empty"] = (b"", "a 0-byte file")
    out["header_only"] = (good[:header_size], "the header without any tensor data")
    out["bad_magic"] = (b"GGML" + good[4:], "magic GGML instead of GGUF")
    out["bad_version"] = (good[:4] + struct.pack("<I", 4) + good[8:], "GGUF version 4")
    out["truncated_half"] = (good[: len(good) // 2], "the first half of the file")
    out["tensor_past_end"] = (good[:-8192], "the last 8 KiB cut: the last tensor's data runs past the end")
    out["absurd_tensor_count"] = (good[:8] + struct.pack("<Q", 1 << 60) + good[16:], "tensor count 2^60")
    out["absurd_kv_count"] = (good[:16] + struct.pack("<Q", 1 << 60) + good[24:], "metadata key count 2^60")
    out["absurd_string_length"] = (good[:24] + struct.pack("<Q", 1 << 62) + good[32:],
                                   "first key's length 2^62 bytes")
    i = _locate_kv(good, "tokenizer.ggml.tokens")  # u32 type (array), u32 element type, u64 count
    out["absurd_array_length"] = (good[:i + 8] + struct.pack("<Q", 1 << 40) + good[i + 16:],
                                  "vocabulary array of 2^40 strings")
    name = first_tensor.encode()
    j = good.index(struct.pack("<Q", len(name)) + name, 24) + 8 + len(name)  # then u32 n_dims, u64 dims
    out["absurd_tensor_dims"] = (good[:j + 4] + struct.pack("<Q", 1 << 62) + good[j + 12:],
                                 f"{first_tensor} dimension 0 = 2^62")
    return out


@pytest.fixture(scope="session")
def faults_good_model() -> Path:
    """The tiny random qwen35moe (about 10 MB), the source of every broken file."""
    from qwenkit import synthetic
    return synthetic.tiny_model("qwen35moe")


@pytest.fixture(scope="session")
def broken_files(faults_good_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (path of a broken GGUF, what is wrong with it)."""
    from qwenkit.gguf_info import read_gguf

    good = faults_good_model.read_bytes()
    info = read_gguf(faults_good_model)
    d = tmp_path_factory.mktemp("broken")
    out = {}
    for name, (data, what) in broken_variants(good, info.header_size, info.tensors[0].name).items():
        p = d / f"{name}.gguf"
        p.write_bytes(data)
        out[name] = (p, what)
    return out


@pytest.fixture(scope="session")
def malicious_template_model() -> Path:
    """The tiny qwen35moe whose chat template tries to reach `os` and create TEMPLATE_MARKER."""
    from qwenkit import synthetic
    return synthetic.tiny_model("qwen35moe", chat_template=MALICIOUS_TEMPLATE)
