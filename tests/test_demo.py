"""The main job end to end, as `make demo` runs it: build check, server, summary, stop."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_demo_summarizes_the_english_sample_and_stops_the_server(default_model):
    proc = subprocess.run([sys.executable, "-m", "qwenkit", "demo", "--max-tokens", "64", "--n-ctx", "2048"],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "[1/4] build: llama-cpp-python 0.3.36, CPU backend -> no GPU: CPU only" in out
    assert re.search(r"OpenAI-compatible API at http://127\.0\.0\.1:\d+/v1", out)
    # the summary text between step 3 and step 4 is real model output
    body = out.split("[3/4]", 1)[1].split("[4/4]", 1)[0].split("\n", 1)[1]
    assert len(body.split()) >= 10, body
    stats = out.split("[4/4]", 1)[1]
    assert re.search(r"\d+(\.\d+)? ?s", stats) and re.search(r"tok/s", stats), stats
    assert "server stopped" in out


def test_demo_help_lists_the_main_job():
    out = subprocess.run([sys.executable, "-m", "qwenkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout and "doctor" in out.stdout
