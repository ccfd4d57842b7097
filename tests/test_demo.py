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
def test_demo_summarizes_the_english_sample_readably_and_stops_the_server(default_model):
    """`make demo` as it is, on the 135M default model: the printed summary has at least 50 words,
    no repeated sentence and at least 60 % distinct words (it repeated one sentence 19 times
    before the loop guard and the small-model sampling)."""
    from qwenkit.loopguard import text_stats
    proc = subprocess.run([sys.executable, "-m", "qwenkit", "demo"], capture_output=True, text=True,
                          timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "[1/4] build: llama-cpp-python 0.3.36, CPU backend -> no GPU: CPU only" in out
    assert re.search(r"OpenAI-compatible API at http://127\.0\.0\.1:\d+/v1", out)
    assert "135M-parameter stand-in" in out and "the real model answers from the same code" in out
    # the summary is what is printed between step 3's note and step 4; a loop guard notice is
    # a line of its own starting with "[loop guard:" (or "[the loop guard")
    body = out.split("[3/4]", 1)[1].split("[4/4]", 1)[0].split("same code)", 1)[1]
    notices = [line for line in body.splitlines() if line.startswith("[")]
    summary = "\n".join(line for line in body.splitlines() if not line.startswith("["))
    st = text_stats(summary)
    assert st.readable(min_words=50, min_distinct=0.6), f"{st}\n{body}"
    assert all(n.startswith(("[loop guard:", "[the loop guard")) for n in notices), notices
    stats = out.split("[4/4]", 1)[1]
    assert re.search(r"\d+(\.\d+)? ?s", stats) and re.search(r"tok/s", stats), stats
    assert "server stopped" in out


def test_demo_help_lists_the_main_job():
    out = subprocess.run([sys.executable, "-m", "qwenkit", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "demo" in out.stdout and "doctor" in out.stdout
