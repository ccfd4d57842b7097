"""qwenkit.bench and qwenkit.fastgen: sane structures from one repetition on small models,
the fast path's text identical to llama-cpp-python's, the SSE reader, tables, plots, JSON.
No timing assertions: speed targets are checked by benchmarks/ scripts, not tests."""
from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwenkit import bench
from qwenkit.config import RunConfig

PROMPT = "The history of the city begins with a small settlement on the river. Over the following centuries"


@pytest.fixture(scope="module")
def llm(default_model):
    from qwenkit.engine import load
    m = load(RunConfig(model=str(default_model), n_ctx=512))
    yield m
    m.close()


@pytest.fixture(scope="module")
def tiny_hybrid():
    """The tiny random qwen35moe (hybrid recurrent + attention layers)."""
    from qwenkit import synthetic
    from qwenkit.engine import load
    m = load(RunConfig(model=str(synthetic.tiny_model("qwen35moe")), n_ctx=256, n_batch=256, n_ubatch=256))
    yield m
    m.close()


def _sane(res, paths=None):
    for r in res:
        assert r.rates and all(math.isfinite(x) and x > 0 for x in r.rates)
        assert math.isfinite(r.mean) and r.sd >= 0
        if paths:
            assert r.path in paths


# ---- in-kernel bench ------------------------------------------------------------------------
@pytest.mark.parametrize("path", bench.PATHS)
def test_bench_one_rep_each_path(llm, path):
    res = bench.bench(llm, p=16, n=8, r=1, path=path)
    assert [r.test for r in res] == ["pp16", "tg8"]
    assert [r.kind for r in res] == ["pp", "tg"]
    assert all(len(r.rates) == 1 for r in res)
    _sane(res, {path})


def test_bench_depth_and_names(llm):
    res = bench.bench(llm, p=8, n=4, r=2, d=32, path="kit")
    assert [r.test for r in res] == ["pp8 @ d32", "tg4 @ d32"]
    assert all(r.n_depth == 32 and len(r.rates) == 2 for r in res)
    _sane(res)
    # the depth state was saved once and restored for the second repetition
    res2 = bench.bench(llm, p=0, n=4, r=1, d=32, path="decode")
    assert [r.test for r in res2] == ["tg4 @ d32"]


def test_bench_from_config_loads_and_closes(default_model):
    cfg = RunConfig(model=str(default_model), n_ctx=64)  # too small: bench raises it to p+n+d
    res = bench.bench(cfg, p=32, n=8, r=1, d=40)
    assert [r.test for r in res] == ["pp32 @ d40", "tg8 @ d40"]
    assert res[0].config["model"] == default_model.name
    assert res[0].config["n_ctx"] >= 72


def test_bench_context_too_small(llm):
    with pytest.raises(bench.BenchError, match="needs"):
        bench.bench(llm, p=400, n=200, r=1, d=200)


def test_bench_hybrid_model(tiny_hybrid):
    for path in bench.PATHS:
        _sane(bench.bench(tiny_hybrid, p=16, n=8, r=1, d=16, path=path))


def test_unknown_path(llm):
    with pytest.raises(bench.BenchError):
        bench.bench(llm, p=4, n=4, r=1, path="nope")


def test_sweep_records_values_and_failures(default_model):
    cfg = RunConfig(model=str(default_model), n_ctx=128)
    rows = bench.sweep(cfg, "n_threads", [1, 2], p=8, n=4, r=1, progress=False)
    assert [r.config["n_threads"] for r in rows] == [1, 1, 2, 2]
    _sane(rows)
    rows = bench.sweep(cfg.replace(flash_attn=False), "type_v", ["q8_0"], p=8, n=4, r=1, progress=False)
    assert rows[0].rates == [] and "flash attention" in rows[0].extra["error"]


# ---- tables, plots, files --------------------------------------------------------------------
def _fake():
    return [bench.BenchResult("pp512", "kit", 512, 0, 0, [100.0, 110.0], {"type_k": "f16"}),
            bench.BenchResult("tg128", "kit", 0, 128, 0, [50.0, 52.0], {"type_k": "f16"}),
            bench.BenchResult("tg128", "llama-bench", 0, 128, 0, [55.0], {"type_k": "q8_0"})]


def test_result_stats_and_roundtrip(tmp_path):
    r = _fake()[0]
    assert r.mean == 105.0 and r.sd == pytest.approx(7.0710678)
    p = bench.save_json(_fake(), tmp_path / "x.json", meta={"m": 1}, extra_section=[1])
    meta, back = bench.load_json(p)
    assert meta == {"m": 1}
    assert [b.to_dict() for b in back] == [b.to_dict() for b in _fake()]
    assert json.loads(p.read_text())["extra_section"] == [1]


def test_merge_joins_interleaved_reps():
    a = bench.BenchResult("tg8", "kit", 0, 8, 0, [1.0], {"x": 1})
    b = bench.BenchResult("tg8", "kit", 0, 8, 0, [3.0], {"x": 1})
    c = bench.BenchResult("tg8", "kit", 0, 8, 0, [5.0], {"x": 2})
    m = bench.merge([a, b, c])
    assert [x.rates for x in m] == [[1.0, 3.0], [5.0]]


def test_table_with_ratio():
    res = _fake()
    lb = {r.test: r for r in res if r.path == "llama-bench"}
    t = bench.table(res, baseline=lambda r: lb.get(r.test))
    assert "type_k" in t.splitlines()[0]
    assert "105.00 ± 7.07" in t
    row = next(line for line in t.splitlines() if "kit" in line and "tg128" in line)
    assert f"{51.0 / 55.0:.3f}" in row


def test_plot(tmp_path):
    fig = bench.plot(_fake(), title="t")
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    fig2 = bench.plot(_fake(), x="type_k")
    assert len(fig2.axes) == 2


def test_machine_info():
    info = bench.machine_info()
    for k in ("date", "cpu", "cpu_count", "llama_cpp_python"):
        assert info.get(k), k


# ---- server streaming client -----------------------------------------------------------------
class _SSE(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("fail") == "status":
            self.send_response(503)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(body["max_tokens"]):
            ev = {"choices": [{"text": f"t{i} ", "index": 0, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
            self.wfile.flush()
        if body.get("fail") == "event":
            self.wfile.write(b'data: {"error": {"message": "slot lost"}}\n\n')
            return
        self.wfile.write(b'data: {"choices": [{"text": "", "finish_reason": "length"}]}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture()
def sse_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_stream_completion_parses_sse(sse_server):
    st = bench.stream_completion(sse_server, "hi", 5)
    assert st.n_chunks == 5 and st.text == "t0 t1 t2 t3 t4 " and st.finish_reason == "length"
    assert st.ttft is not None and st.ttft >= 0
    assert st.decode_rate is None or st.decode_rate > 0


def test_open_stream_events_in_order_and_its_errors(sse_server):
    url = sse_server + "/completions"
    with bench.open_stream(url, {"max_tokens": 3, "stream": True}) as (t_send, events):
        got = list(events)
    assert [ev["choices"][0]["text"] for _, ev in got] == ["t0 ", "t1 ", "t2 ", ""]
    times = [t for t, _ in got]
    assert t_send <= times[0] and times == sorted(times)
    with pytest.raises(bench.BenchError, match=r"HTTP 503: b'busy'"):
        with bench.open_stream(url, {"max_tokens": 1, "fail": "status"}):
            pass
    with pytest.raises(bench.BenchError, match="the stream reported an error: .*slot lost"):
        bench.stream_completion(sse_server, "hi", 2, extra={"fail": "event"})


def test_bench_server_against_fake(sse_server):
    r = bench.bench_server(sse_server, n=6, r=2, label="fake")
    assert r.test == "tg6 (stream)" and r.path == "fake" and r.extra["chunks"] == [6, 6]


def test_bench_server_on_kit_server(served):
    r = bench.bench_server(served.base_url, n=8, r=1, label="kit server", headers=served.headers())
    _sane([r])
    assert r.extra["chunks"][0] >= 2


def test_kit_server_text_equals_in_kernel_greedy(llm, served):
    """The server's scheduler (its own context, batch and sampler) gives the same greedy text
    as llama-cpp-python's own in-kernel completion of the same prompt."""
    from qwenkit import fastgen
    fastgen.uninstall(llm)
    ref = llm.create_completion(PROMPT, max_tokens=24, temperature=0.0)["choices"][0]["text"]
    b = bench.stream_completion(served.base_url, PROMPT, 24, headers=served.headers())
    assert b.text == ref and ref


def test_tools_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QWENKIT_TOOLS_BIN", str(tmp_path))
    with pytest.raises(bench.BenchError, match="build_tools"):
        bench.tool_path("llama-bench", tmp_path)


@pytest.mark.skipif(bench.find_tools() is None, reason="llama.cpp tools not built (scripts/build_tools.sh)")
def test_run_llama_bench_structures(default_model):
    res = bench.run_llama_bench(RunConfig(model=str(default_model), n_threads=2), p=16, n=4, r=1)
    assert [r.test for r in res] == ["pp16", "tg4"] and all(r.path == "llama-bench" for r in res)
    _sane(res)
    res = bench.run_llama_bench(RunConfig(model=str(default_model)), p=0, n=4, r=1, d=[0, 8],
                                extra_args=["-ub", "256"])
    assert [r.test for r in res] == ["tg4", "tg4 @ d8"] and res[0].config["n_ubatch"] == 256


# ---- the fast generation path ---------------------------------------------------------------
def _text(out):
    return out["choices"][0]["text"]


def test_fastgen_matches_llama_cpp_python(llm):
    from qwenkit import fastgen
    fastgen.uninstall(llm)
    ref = llm.create_completion(PROMPT, max_tokens=32, temperature=0)
    ref_stream = "".join(_text(c) for c in llm.create_completion(PROMPT, max_tokens=32, temperature=0, stream=True))
    fg = fastgen.FastGen(llm)
    out = fg.create_completion(PROMPT, max_tokens=32, temperature=0)
    assert _text(out) == _text(ref) == ref_stream
    assert out["usage"] == ref["usage"] and out["choices"][0]["finish_reason"] == ref["choices"][0]["finish_reason"]
    chunks = list(fg.create_completion(PROMPT, max_tokens=32, temperature=0, stream=True))
    assert "".join(_text(c) for c in chunks) == _text(ref)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert set(chunks[0]) == {"id", "object", "created", "model", "choices"}


def test_fastgen_stop_strings_match(llm):
    from qwenkit import fastgen
    fastgen.uninstall(llm)
    full = _text(llm.create_completion(PROMPT, max_tokens=32, temperature=0))
    for stop in [full[10:14], [full[20:22], "zzz"], "never-there"]:
        fastgen.uninstall(llm)
        a = llm.create_completion(PROMPT, max_tokens=32, temperature=0, stop=stop)
        sa = "".join(_text(c) for c in llm.create_completion(PROMPT, max_tokens=32, temperature=0, stop=stop,
                                                             stream=True))
        fastgen.install(llm)
        b = llm.create_completion(PROMPT, max_tokens=32, temperature=0, stop=stop)
        sb = "".join(_text(c) for c in llm.create_completion(PROMPT, max_tokens=32, temperature=0, stop=stop,
                                                             stream=True))
        assert _text(a) == _text(b) == sa == sb, stop
        assert a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"]
    fastgen.uninstall(llm)


def test_fastgen_chat_and_fallbacks(llm):
    from qwenkit import fastgen
    msgs = [{"role": "user", "content": "Name three colours."}]
    fastgen.uninstall(llm)
    ref = llm.create_chat_completion(msgs, max_tokens=24, temperature=0)
    fastgen.install(llm)
    assert fastgen.is_installed(llm)
    out = llm.create_chat_completion(msgs, max_tokens=24, temperature=0)
    assert out["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in llm.create_chat_completion(msgs, max_tokens=24, temperature=0, stream=True))
    assert streamed == ref["choices"][0]["message"]["content"]
    # options the fast path does not take go to the original (which refuses logprobs here)
    with pytest.raises(ValueError, match="logprobs"):
        llm.create_completion(PROMPT, max_tokens=4, logprobs=2)
    assert not fastgen.fast_path_supports(llm, {"prompt": "x", "grammar": object()})
    assert fastgen.fast_path_supports(llm, {"prompt": "x", "temperature": 0.7})
    # sampling with a seed is reproducible, penalties and logit bias run natively
    a = llm.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=7)
    b = llm.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=7)
    assert _text(a) == _text(b)
    ban = llm.tokenize(b" the", add_bos=False)[0]
    c = llm.create_completion(PROMPT, max_tokens=12, temperature=0, repeat_penalty=1.3,
                              logit_bias={str(ban): -100.0})
    assert ban not in llm.tokenize(_text(c).encode(), add_bos=False)
    fastgen.uninstall(llm)
    assert not fastgen.is_installed(llm)


def test_fastgen_context_overflow_message(llm):
    from qwenkit import fastgen
    fg = fastgen.FastGen(llm)
    with pytest.raises(ValueError, match=r"Requested tokens \(\d+\) exceed context window of 512"):
        fg.create_completion("word " * 600, max_tokens=4)


def test_fastgen_hybrid_model_repeatable(tiny_hybrid):
    """Recurrent state cannot be cut back: a repeated or extended prompt must give the tokens a
    fresh start gives (compared as token ids: this random model emits partial UTF-8, where
    llama-cpp-python's text path even runs past max_tokens)."""
    from qwenkit import fastgen
    llm = tiny_hybrid
    toks = llm.tokenize(b"a b c d", add_bos=False, special=True)

    def stock(prompt):
        out = []
        for t in llm.generate(prompt, temp=0.0):
            out.append(t)
            if len(out) == 8:
                break
        return out

    ref = stock(toks)
    fg = fastgen.FastGen(llm)
    assert list(fg.tokens(toks, 8)) == ref
    assert list(fg.tokens(toks, 8)) == ref             # same prompt again: no stale state
    longer = toks + ref[:3]
    assert list(fg.tokens(longer, 5)) == ref[3:8]      # prompt extended by what was generated
    assert stock(toks) == ref                          # llama-cpp-python's own path still agrees


def test_stop_scan_holds_partial_matches():
    from qwenkit.fastgen import StopScanner
    s = StopScanner(["END"])
    assert s.push("abc E") == "abc " and s.push("N") == "" and s.push("x") == "ENx"
    assert s.push("yyEND zz") == "yy" and s.hit
    s = StopScanner([])
    assert s.push("anything") == "anything"
    s = StopScanner(["ab", "b"])
    assert s.push("xab") == "x" and s.hit


@pytest.mark.slow
def test_fast_server_streams_chat_and_survives_disconnects(default_model):
    """The fast publisher: streamed chat equals the non-streamed answer, a client that drops
    the connection mid-stream does not leave the model locked, [DONE] ends every stream."""
    import http.client
    import urllib.parse
    cfg = RunConfig(model=str(default_model), n_ctx=1024)
    msgs = [{"role": "user", "content": "Name three colours."}]
    with bench.kit_server(cfg) as srv:
        u = urllib.parse.urlsplit(srv.base_url)

        def post(body, read_all=True):
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            c.request("POST", u.path + "/chat/completions", json.dumps(body),
                      {"Content-Type": "application/json", **srv.headers()})
            r = c.getresponse()
            assert r.status == 200
            return c, r

        c, r = post({"messages": msgs, "max_tokens": 24, "temperature": 0})
        full = json.loads(r.read())["choices"][0]["message"]["content"]
        c.close()
        c, r = post({"messages": msgs, "max_tokens": 24, "temperature": 0, "stream": True})
        raw = r.read().decode()
        c.close()
        events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text == full
        for _ in range(2):  # hang up after the first event, twice
            c, r = post({"messages": msgs, "max_tokens": 200, "temperature": 0, "stream": True})
            r.readline()
            c.close()
        st = bench.stream_completion(srv.base_url, PROMPT, 16, headers=srv.headers())
        assert st.n_chunks >= 2 and st.finish_reason == "length"
        assert "Traceback" not in srv.log_tail(400)
