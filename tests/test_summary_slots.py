"""benchmarks/summary_slots.py without a model: the document builder, the client transport that
adds logit_bias and records the server's usage, the N-slot / one-slot comparison, and its
section of RESULTS.md."""
from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time

import httpx
import pytest

from repo_scripts import load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


@pytest.fixture(scope="module")
def ss():
    return _load("summary_slots")


def _count(text: str) -> int:  # about 4 characters a token
    return max(1, len(text) // 4)


@pytest.mark.parametrize("language", ["en", "ja"])
def test_document_reaches_the_size_and_varies(ss, language):
    text, n, parts = ss.build_document(_count, language, 6000)
    assert 6000 <= n <= 6000 + 600
    assert n == _count(text)
    assert parts >= 2
    paras = [p for p in text.split("\n\n") if p.strip()]
    # not one passage repeated: most paragraphs differ (those of one or two sentences recur)
    assert len(set(paras)) >= 0.75 * len(paras)
    starts = [p for p in paras if re.match(r"(Part \d+\. |第\d+部 )", p)]
    assert len(starts) == parts
    again, _, _ = ss.build_document(_count, language, 6000)
    assert again == text  # seeded: the same document for both servers and every run


def _fake_server(seen: list):
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if body.get("stream"):
            events = [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
                      {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": body["max_tokens"],
                                                "prompt_tokens_details": {"cached_tokens": 20}}}]
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=data.encode())
        return httpx.Response(200, json={"choices": [{"message": {"content": "y"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    return httpx.MockTransport(handler)


def test_capture_adds_the_bias_and_records_usage(ss):
    seen: list = []
    cap = ss.Capture({"logit_bias": {"2": -100.0}}, {"map": "The following is one part", "reduce": "These are"},
                     inner=_fake_server(seen))
    with httpx.Client(transport=cap, base_url="http://test/v1") as c:
        with c.stream("POST", "/chat/completions", json={
                "max_tokens": 7, "stream": True,
                "messages": [{"role": "system", "content": "s"},
                             {"role": "user", "content": "The following is one part of a longer document."}]}) as r:
            assert b"[DONE]" in r.read()
        c.post("/chat/completions", json={"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
    assert seen[0]["logit_bias"] == {"2": -100.0} and seen[1]["logit_bias"] == {"2": -100.0}
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert "stream_options" not in seen[1]
    recs = sorted(cap.records, key=lambda r: r["sent_s"])
    assert recs[0]["role"] == "map" and recs[0]["completion_tokens"] == 7 and recs[0]["cached_tokens"] == 20
    assert recs[0]["finish_reason"] == "length"
    assert recs[1]["role"] == "overhead" and recs[1]["completion_tokens"] == 1 and recs[1]["finish_reason"] == "stop"


def _row(rnd, slots, wall, toks=1000):
    return {"round": rnd, "slots": slots, "n_ctx_per_slot": 1024, "wall_s": wall, "map_s": wall * 0.8,
            "reduce_s": wall * 0.2, "chunks": 4, "rounds": 2, "map_calls": 4, "reduce_calls": 1, "map_width": slots,
            "map_in_flight_max": slots, "slots_seen": slots, "prompt_tokens": 4000, "cached_tokens": 100,
            "completion_tokens": toks, "summary_prompt_tokens": 3900, "summary_completion_tokens": toks,
            "map_completion_tokens": [128], "finish_reasons": ["length"], "decode_mean_sequences": 2.5,
            "decode_max_sequences": slots, "decode_tok_per_s": 50.0, "first_token_s": 1.0}


def test_compare_pairs_rounds_and_checks_the_work(ss):
    rows = [_row(0, 4, 6.0), _row(0, 1, 10.0), _row(1, 1, 12.0), _row(1, 4, 6.0)]
    c = ss.compare(rows, 4)
    assert c["rounds"] == 2 and c["ratios"] == [0.6, 0.5]
    assert c["ratio"] == pytest.approx(12 / 22, abs=1e-4)
    assert c["equal_work"] and c["meets_target"]
    c = ss.compare([_row(0, 4, 9.0, toks=900), _row(0, 1, 10.0), _row(1, 4, 1.0)], 4)  # round 2 incomplete
    assert c["rounds"] == 1 and c["ratio"] == 0.9 and not c["equal_work"] and not c["meets_target"]
    assert ss.compare([_row(0, 4, 9.0)], 4)["rounds"] == 0


def test_results_md_renders_the_section(ss):
    md = _load("results_md")
    rows = [_row(0, 4, 6.0), _row(0, 1, 10.0)]
    sec = {"slots": 4, "n_ctx_per_slot": 1024, "document_tokens": 3000, "max_tokens": 128, "map_answer_tokens": 128,
           "language": "en", "eos_bias": True, "rows": rows, "compare": ss.compare(rows, 4),
           "skipped": ["round 2, 1 slot(s): 300 s gone"], "errors": []}
    text = md.summary_slots_tables(sec)
    lines = [line for line in text.splitlines() if line.startswith("| 1 ") and "ratio" not in line]
    assert [line.split("|")[2].strip() for line in lines] == ["4", "1"]
    assert [line.split("|")[3].strip() for line in lines] == ["6.0", "10.0"]
    assert "0.600" in text and "met" in text and "Skipped: round 2" in text


# ---- a run that cannot hang: timeouts, abort, heartbeat, the server's log ------------------------------
class _SSEServer(http.server.ThreadingHTTPServer):
    """Counts the POSTs it answered; `closing` ends a stalled stream."""
    daemon_threads = True
    posts = 0
    closing = False


class _SSE(http.server.BaseHTTPRequestHandler):
    """A chat endpoint that streams `events` events `gap` seconds apart, then (stall) waits
    for the client to go away without ending the stream."""
    events, gap, stall = 3, 0.05, True
    protocol_version = "HTTP/1.1"

    def log_message(self, *_a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        server = self.server
        assert isinstance(server, _SSEServer)
        server.posts += 1
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        ev = json.dumps({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
        try:
            for _ in range(self.events):
                data = f"data: {ev}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(self.gap)
            while self.stall and not server.closing:
                time.sleep(0.05)
        except OSError:
            pass


@pytest.fixture
def sse_server():
    made = []

    def make(**kw):
        handler = type("H", (_SSE,), kw)
        srv = _SSEServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield make
    for srv in made:
        srv.closing = True
        srv.shutdown()
        srv.server_close()


def _chat(client: httpx.Client, url: str):
    return client.stream("POST", url + "/v1/chat/completions", json={
        "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "The following is one part"}]})


def test_a_stalled_stream_fails_after_the_read_timeout_with_a_clear_error(ss, sse_server):
    url = sse_server(events=2, stall=True)
    cap = ss.Capture({}, {"map": "The following is one part"}, read_timeout=0.5)
    t0 = time.monotonic()
    with httpx.Client(transport=cap, timeout=httpx.Timeout(0.5, connect=5)) as c:
        with pytest.raises(ss.ClientTimeout, match=r"sent nothing for 0.5 s .*--request-timeout"):
            with _chat(c, url) as r:
                for _ in r.iter_bytes():
                    pass
    assert time.monotonic() - t0 < 5
    (rec,) = cap.records
    assert rec["role"] == "map" and "--request-timeout" in rec["error"] and "done_s" in rec
    assert cap.counts() == (1, 1)


def test_a_request_past_its_deadline_fails_and_aborts_the_rest(ss, sse_server):
    url = sse_server(events=10_000, gap=0.02, stall=False)   # streams steadily, never ends
    cap = ss.Capture({}, {"map": "The following is one part"}, request_deadline=0.4)
    with httpx.Client(transport=cap, timeout=5) as c:
        with pytest.raises(ss.ClientTimeout, match=r"map request ran past its deadline of 0.4 s"):
            with _chat(c, url) as r:
                for _ in r.iter_bytes():
                    pass
        assert "--request-deadline" in cap.aborted
        with pytest.raises(ss.ClientTimeout, match="--request-deadline"):   # nothing more is sent
            with _chat(c, url):
                pass
    assert len(cap.records) == 1


def test_abort_stops_a_streaming_request_at_its_next_event(ss, sse_server):
    url = sse_server(events=10_000, gap=0.02, stall=False)
    cap = ss.Capture({}, {"map": "The following is one part"})
    got = 0
    with httpx.Client(transport=cap, timeout=5) as c:
        with pytest.raises(ss.ClientTimeout, match="run timeout: test"):
            with _chat(c, url) as r:
                for _ in r.iter_bytes():
                    got += 1
                    if got == 3:
                        cap.abort("run timeout: test")
    assert got == 3 and cap.records[0]["error"] == "run timeout: test"


def test_heartbeat_lines_say_what_the_server_and_the_client_do(ss):
    b = {"t_s": 45.2, "health": True, "slots_busy": 5, "slots_total": 8, "queue": 0, "decode_steps": 120,
         "decode_tokens": 4000, "requests_done": 3, "sent": 6, "done": 1, "server_cpu_s": 40.5,
         "gpu": "97 %, 30000 MiB",
         "prompt_cache": {"used_mib": 315.0, "budget_mib": 2048.0, "checkpoints": 5, "parked": 0, "saved": 5,
                          "restored": 0, "parked_total": 0, "evicted": 0},
         "last": "summarizing part 5/5 (at 0 s)"}
    line = ss.beat_line("8 slots", b)
    for part in ("[8 slots 45 s]", "slots 5/8 busy", "queue 0", "+120 steps +4000 tokens", "315.0/2048.0 MiB",
                 "5 ckpt", "client 6 sent, 1 done", "server cpu 40.5 s", "gpu 97 %", "last: summarizing part 5/5"):
        assert part in line, part
    dead = ss.beat_line("1 slot", {"t_s": 3, "health": False, "server_alive": False, "sent": 2, "done": 1})
    assert "/health NO ANSWER (server process GONE)" in dead
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    assert ss.proc_cpu_s(os.getpid()) >= 0.05
    assert ss.proc_cpu_s(2**22 + 12345) is None


def test_log_tail_is_copied_next_to_the_results(ss, tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    dest = tmp_path / "out" / "x.round1-8slot.server.log"
    last = ss.copy_log_tail(log, dest)
    assert last[-1] == "line 999" and len(last) == 40
    lines = dest.read_text().splitlines()
    assert lines[0].startswith("# last 400 lines of") and lines[1] == "line 600" and lines[-1] == "line 999"
    assert "could not be read" in ss.copy_log_tail(tmp_path / "missing.log", dest)[0]


def test_replan_error_names_the_ratio_and_a_max_tokens_that_fits(ss):
    msg = "the server's context is smaller than n_ctx=8192: planning for 5734"
    assert ss.REPLAN in msg
    e = ss.replan_error(msg, {"generated_tokens": 5000, "counted_again": 32680, "ratio": 6.54}, 8192, 1000)
    assert "6.5x" in e and "--max-tokens 563 or less" in e and "--allow-replan" in e and "WHOLE summary" in e
    assert "--allow-replan" in ss.replan_error(msg, None, 8192, 1000)
    # the guard matches the line summarize() says before it starts the whole summary again
    import inspect

    from qwenkit import summarize
    assert ss.REPLAN in inspect.getsource(summarize.summarize)


# ---- real runs on the tiny synthetic qwen35moe ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from qwenkit import synthetic
    return str(synthetic.cached_model("qwen35moe", "tiny"))


def test_a_run_past_its_timeout_is_an_error_that_keeps_what_was_measured(ss, tiny, tmp_path, capsys):
    out = tmp_path / "ss.json"
    rc = ss.main(["--model", tiny, "--tokens", "1500", "--slots", "2", "--n-ctx", "8192", "--max-tokens", "4000",
                  "--threads", "1", "--run-timeout", "2", "--heartbeat", "0.5", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["watch"]["run_timeout_s"] == 2.0
    errs = doc["summary_slots"]["errors"]
    assert [e["slots"] for e in errs] == [2, 1] and doc["summary_slots"]["rows"] == []
    for r in doc["runs"]:
        assert "--run-timeout" in r["error"] and "--run-timeout" in r["aborted"]
        assert r["heartbeats"] and r["heartbeats"][0]["health"] and r["heartbeats"][0]["slots_total"] == r["slots"]
        assert r["requests"] and r["health_at_error"]["status"] == "ok" and r["server_alive_at_error"]
        assert "thread MainThread" in r["client_stacks"]
        copy = tmp_path / r["server_log_copy"]
        assert copy.is_file() and r["server_log_tail"] and "qwenkit.serve_entry" in copy.read_text()
    err = capsys.readouterr().err
    assert "ABORT: run timeout" in err and re.search(r"\[2 slots \d+ s\] slots [12]/2 busy", err)
