"""benchmarks/summary_slots.py without a model: the document builder, the client transport that
adds logit_bias and records the server's usage, the N-slot / one-slot comparison, and its
section of RESULTS.md."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


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
    lines = [l for l in text.splitlines() if l.startswith("| 1 ") and "ratio" not in l]
    assert [l.split("|")[2].strip() for l in lines] == ["4", "1"]
    assert [l.split("|")[3].strip() for l in lines] == ["6.0", "10.0"]
    assert "0.600" in text and "met" in text and "Skipped: round 2" in text
