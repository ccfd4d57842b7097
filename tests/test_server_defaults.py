"""The kit server's sampling defaults are llama-server's: a request that leaves out
repeat_penalty is not penalized (a real server on the small default model)."""
from __future__ import annotations

import time

from qwenkit import bench
from qwenkit.serving.sampling import SamplingParams

REPEATS = "The list of words: apple, apple, apple, apple,"


def test_left_out_repeat_penalty_is_llama_servers_default(served):
    """A request without repeat_penalty is not penalized (llama-server's 1.0, not
    llama_cpp.server's 1.1); one that sends it gets what it sent."""
    assert SamplingParams().repeat_penalty == 1.0

    def text(extra=None):
        return bench.stream_completion(served.base_url, REPEATS, 24, headers=served.headers(), extra=extra).text

    left_out, off, on = text(), text({"repeat_penalty": 1.0}), text({"repeat_penalty": 1.1})
    assert left_out == off
    assert on != off  # the greedy answer repeats "apple"; a penalty breaks the run
    assert left_out.count("apple") > on.count("apple")


def test_left_out_repeat_penalty_non_streamed_chat(served):
    import json
    import urllib.request
    msgs = [{"role": "user", "content": "Repeat after me: apple, apple, apple, apple, apple"}]

    def answer(extra):
        body = {"messages": msgs, "max_tokens": 24, "temperature": 0, **extra}
        req = urllib.request.Request(served.base_url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", **served.headers()})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]

    left_out = answer({})
    assert left_out == answer({"repeat_penalty": 1.0})
    assert left_out != answer({"repeat_penalty": 1.1})  # llama_cpp.server's own default would differ


def test_server_runs_uvloop_and_httptools(served):
    st = served.status()
    assert st["event_loop"] == "uvloop" and st["http"] == "httptools"


def test_stream_flush_default_groups_writes_only_when_the_model_takes_every_core(served):
    import os

    import llama_cpp

    from qwenkit.config import RunConfig
    from qwenkit.serve_entry import stream_flush_default
    c = RunConfig(model="m.gguf", n_threads=16)
    assert stream_flush_default(c, gpu_offload=True, cores=16) == 0.0              # model on the GPU
    assert stream_flush_default(c.replace(n_cpu_moe=11), gpu_offload=True, cores=16) == 0.0  # experts in RAM
    assert stream_flush_default(c, gpu_offload=False, cores=16) == 25.0             # CPU build
    assert stream_flush_default(c.replace(n_gpu_layers=0), gpu_offload=True, cores=16) == 25.0
    assert stream_flush_default(c.replace(n_threads=8), gpu_offload=False, cores=16) == 0.0  # spare cores
    # the running server applied the rule to its own config and machine
    want = stream_flush_default(served.cfg, bool(llama_cpp.llama_supports_gpu_offload()), os.cpu_count() or 1)
    assert served.status()["stream_flush_ms"] == want


def test_grouped_stream_is_the_same_stream_in_fewer_writes_and_ends_on_time(default_model, served):
    """stream_flush_ms groups tokens into fewer writes: the same events and text as an ungrouped
    server, arriving in bursts, and the end is not held back for the pause."""
    from qwenkit.config import RunConfig
    cfg = RunConfig(model=str(default_model), n_ctx=1024, n_threads=1)
    assert served.status()["stream_flush_ms"] == 0.0
    with bench.kit_server(cfg, stream_flush_ms=1000) as grouped:
        assert grouped.status()["stream_flush_ms"] == 1000.0
        g = bench.stream_completion(grouped.base_url, REPEATS, 48, headers=grouped.headers())
        g_took = time.perf_counter() - g.t_send
    p = bench.stream_completion(served.base_url, REPEATS, 48, headers=served.headers())
    p_took = time.perf_counter() - p.t_send
    assert g.text == p.text and g.n_chunks == p.n_chunks >= 40
    assert g.finish_reason == "length"
    bursts = 1 + sum(1 for a, b in zip(g.times, g.times[1:], strict=False) if b - a > 0.02)
    assert bursts <= g.n_chunks // 4  # 48 tokens: the first at once, the rest in a few writes
    # the stream's end cuts the 1 s pause short: no later than the ungrouped stream + slack
    assert g_took <= p_took + 0.25
