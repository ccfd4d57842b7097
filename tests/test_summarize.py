"""Summaries: chunking at paragraph / sentence (。 too) / token boundaries, <think> removal,
bad input, and a document of more than 10 x n_ctx tokens through the real shared server."""
from __future__ import annotations

import difflib
import socket
from itertools import pairwise
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenkit import summarize
from qwenkit.data import sample_path, sample_text
from qwenkit.errors import ContextOverflowError, ServerError
from qwenkit.summarize import DocumentError, ThinkFilter, split_spans, strip_thinking


def assert_covers(text: str, spans: list[tuple[int, int]]) -> None:
    """Consecutive spans from 0 to len(text): every character is in exactly one chunk."""
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a, b), (c, _) in pairwise(spans):
        assert b == c and a < b
    assert "".join(text[a:b] for a, b in spans) == text


# ---- splitting (a character counter stands in for the tokenizer) -----------------------------
def test_japanese_sentences_split_at_maru():
    text = "これは一文目です。これは二文目です。これは三文目です。" * 4
    spans = split_spans(text, 20, len)
    assert_covers(text, spans)
    assert all(b - a <= 20 for a, b in spans)
    assert all(text[b - 1] == "。" for a, b in spans)  # every cut is after 。


def test_paragraphs_first_then_sentences_then_tokens():
    text = "Short para one.\n\nShort para two.\n\n" + "A long sentence without any stop " * 10 + "end."
    spans = split_spans(text, 40, len)
    assert_covers(text, spans)
    assert all(b - a <= 40 for a, b in spans)
    assert text[:spans[0][1]].rstrip().endswith("two.")  # two paragraphs packed, cut at a paragraph


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abc 。.\n", min_size=0, max_size=40), min_size=1, max_size=25),
       st.integers(min_value=8, max_value=60))
def test_chunks_cover_everything_within_budget(parts, budget):
    text = "\n\n".join(parts)
    if not text:
        return
    spans = split_spans(text, budget, len)
    assert_covers(text, spans)
    assert all(b - a <= budget for a, b in spans)


def test_budget_too_small():
    with pytest.raises(ContextOverflowError):
        split_spans("abc", 2, len)


# ---- thinking ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,clean", [
    ("<think>plan</think>\n\nAnswer.", "Answer."),
    ("Answer.", "Answer."),
    ("<think>\n\n</think>\n\nA <b>x</b>", "A <b>x</b>"),
    ("<think>never closed", ""),
])
def test_think_filter_any_chunking(raw, clean):
    assert strip_thinking(raw).strip() == clean
    for size in (1, 2, 3, 5, 100):
        f = ThinkFilter()
        out = "".join(f.feed(raw[i:i + size]) for i in range(0, len(raw), size)) + f.flush()
        assert out.strip() == clean, (size, out)


# ---- documents and bad input -------------------------------------------------------------------
def test_samples_are_bundled():
    for lang in ("ja", "en"):
        assert sample_path(lang).is_file() and len(sample_text(lang)) > 3000
    assert "。" in sample_text("ja")
    with pytest.raises(ValueError):
        sample_path("fr")


def test_bad_documents(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01GGUF" * 10)
    with pytest.raises(DocumentError, match="empty"):
        summarize.read_document(tmp_path / "empty.txt")
    with pytest.raises(DocumentError, match="not a text file"):
        summarize.read_document(tmp_path / "bin.dat")
    with pytest.raises(DocumentError, match="does not exist"):
        summarize.read_document(tmp_path / "missing.txt")
    (tmp_path / "sjis.txt").write_bytes("日本語の文書です。".encode("cp932"))
    assert summarize.read_document(tmp_path / "sjis.txt") == "日本語の文書です。"
    with pytest.raises(DocumentError, match="empty"):
        summarize.summarize("", None, "m", n_ctx=1024)


def test_server_down_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=5)
    with pytest.raises(ServerError, match="no server answers"):
        summarize.summarize("Some text.", client, "m", n_ctx=1024)


# ---- through the real server -------------------------------------------------------------------
@pytest.mark.slow
def test_short_document_in_one_request(served):
    pieces: list[str] = []
    s = summarize.summarize(sample_text("en")[:1500], served.client(), served.alias, n_ctx=served.n_ctx,
                            language="en", max_tokens=32, on_token=pieces.append)
    assert s.chunks == 1 and s.text and "".join(pieces).strip() == s.text
    assert s.completion_tokens > 0 and s.prompt_tokens > 300 and s.tok_per_s > 0
    assert s.first_token_s is not None and s.seconds >= s.first_token_s
    assert "tok/s" in str(s)


@pytest.mark.slow
def test_long_document_map_reduce_covers_all_within_budget(served):
    """A document of more than 10 x n_ctx tokens: chunks cover every character, each fits its
    budget by the model's own tokenizer, and chunk + prompt + answer fits n_ctx."""
    n_ctx = 512  # the plan's context; the server has 1024, so every request surely fits
    client = served.client()
    count = summarize.TokenCounter(client, served.alias)
    text = sample_text("en") + "\n\n" + sample_text("ja")[:1600]
    assert count(text) >= 10 * n_ctx
    progress: list[str] = []
    s = summarize.summarize(text, client, served.alias, n_ctx=n_ctx, language="en", max_tokens=32,
                            on_progress=progress.append)
    assert s.chunks > 1 and s.rounds >= 2 and s.text
    assert_covers(text, s.chunk_spans)
    assert s.chunk_tokens == [count(text[a:b]) for a, b in s.chunk_spans]
    assert max(s.chunk_tokens) <= s.chunk_budget < n_ctx
    for c in s.calls:
        assert c.prompt_tokens + 32 <= n_ctx, c
    assert any("part" in p for p in progress)
    assert all(c.completion_tokens <= 34 for c in s.calls)  # retokenized: a token or two of slack


@pytest.mark.slow
def test_context_exceeded_leads_to_smaller_chunks(served):
    """n_ctx larger than the server's: the 400 context_length_exceeded answers make it split."""
    text = sample_text("en")[:5000]  # about 1100 tokens, more than the server's 1024
    s = summarize.summarize(text, served.client(), served.alias, n_ctx=4096, language="en", max_tokens=24)
    assert s.text and s.chunks > 1


@pytest.mark.slow
def test_cli_summarize_streams_and_prints_stats(served, capsys, tmp_path):
    from qwenkit.cli import main
    doc = tmp_path / "doc.txt"
    doc.write_text(sample_text("en")[:4000], encoding="utf-8")
    rc = main(["summarize", str(doc), "--url", served.base_url, "--ctx", "512",
               "--language", "en", "--max-tokens", "24"])
    out = capsys.readouterr().out
    assert rc == 0 and "tok/s" in out and "chunks" in out


@pytest.mark.slow
def test_summary_of_thinking_model_has_no_think_block(served_thinking):
    s = summarize.summarize("The cache holds keys and values. " * 20, served_thinking.client(),
                            served_thinking.alias, n_ctx=512, language="en", max_tokens=16)
    assert "<think>" not in s.text and "</think>" not in s.text


def _empty_stream_server(plain_status: int):
    """A local OpenAI-protocol server whose chat streams end empty (no content, no finish_reason,
    then [DONE]) and whose non-streamed chat answers `plain_status` (the 1-token template probe
    always succeeds); it records each chat request as streamed or not."""
    from netutil import QuietHandler, serve

    chats: list[bool] = []
    bodies: list[dict] = []

    class H(QuietHandler):
        def do_POST(self):
            req = self.read_json()
            if self.path.endswith("/tokenize/count"):
                return self.send_json({"count": 1 + len(req.get("input", "").split())})
            probe = req.get("max_tokens") == 1  # summarize measures the chat template's overhead first
            if not probe:
                chats.append(bool(req.get("stream")))
                bodies.append(req)
            if req.get("stream"):
                return self.send_body(200, b"data: [DONE]\n\n", "text/event-stream")
            if plain_status != 200 and not probe:
                return self.send_json({"error": {"message": "boom", "type": "server_error"}}, plain_status)
            return self.send_json({
                "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "A summary."}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}})

    httpd, root = serve(H)
    return httpd, root + "/v1", chats, bodies


def test_empty_stream_is_asked_once_more_without_streaming():
    httpd, url, chats, bodies = _empty_stream_server(200)
    try:
        client = openai.OpenAI(base_url=url, api_key="x", timeout=10, max_retries=1)
        r = summarize.summarize("One short paragraph to summarize.", client, "m", n_ctx=1024, language="en")
    finally:
        httpd.shutdown()
    assert r.text == "A summary." and chats == [True, False]
    # both askings carry Qwen3.5's model-card presence penalty and no llama.cpp repeat penalty
    assert [b.get("presence_penalty") for b in bodies] == [1.5, 1.5]
    assert all("repeat_penalty" not in b for b in bodies)


def test_empty_stream_then_failing_server_submits_twice_not_four_times():
    """The non-streamed second asking is itself the retry: the client does not retry it again."""
    httpd, url, chats, _ = _empty_stream_server(500)
    try:
        client = openai.OpenAI(base_url=url, api_key="x", timeout=10, max_retries=1)
        with pytest.raises(ServerError, match="error"):
            summarize.summarize("One short paragraph to summarize.", client, "m", n_ctx=1024, language="en")
    finally:
        httpd.shutdown()
    assert chats == [True, False]


# ---- concurrent map requests -------------------------------------------------------------------
def _slotted_server(slots: int | None, fail_part: int | None = None):
    """A fake OpenAI-protocol server with `slots` in its /health (no /health when None): each map
    request streams "Summary of part i." after a delay that makes later parts finish first
    (part `fail_part` answers 500); it records the most requests it held at once and every
    reduce prompt."""
    import re
    import time as _time

    from netutil import QuietHandler, serve

    state: dict[str, Any] = {"now": 0, "max": 0, "reduce": [], "map": []}
    lock = __import__("threading").Lock()

    def chunk(content=None, finish=None):
        delta = {"content": content} if content else {}
        return ("data: " + __import__("json").dumps({
            "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n").encode()

    class H(QuietHandler):
        def do_GET(self):
            if self.path == "/health" and slots is not None:
                return self.send_json({"status": "ok", "slots": {"total": slots, "busy": 0, "idle": slots}})
            self.send_json({"error": {"message": "no such route"}}, 404)

        def do_POST(self):
            req = self.read_json()
            if self.path.endswith("/tokenize/count"):
                return self.send_json({"count": 1 + len(req.get("input", "").split())})
            if req.get("max_tokens") == 1:
                return self.send_json({
                    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "A"}}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41}})
            user = req["messages"][-1]["content"]
            m = re.search(r"\(This was part (\d+) of (\d+)\.\)$", user)
            if not m:
                state["reduce"].append(user)
                body = chunk("The whole summary.") + chunk(finish="stop") + b"data: [DONE]\n\n"
                return self.send_body(200, body, "text/event-stream")
            i, n = int(m.group(1)), int(m.group(2))
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                state["map"].append(i)
            try:
                _time.sleep(0.02 * (n - i + 1))
                if i == fail_part:
                    return self.send_json({"error": {"message": "boom", "type": "server_error"}}, 500)
                body = chunk(f"Summary of part {i}.") + chunk(finish="stop") + b"data: [DONE]\n\n"
                self.send_body(200, body, "text/event-stream")
            finally:
                with lock:
                    state["now"] -= 1

    httpd, root = serve(H)
    return httpd, root + "/v1", state


_DOC = "\n\n".join(f"Paragraph {k} says something about topic {k} in a few plain words here." for k in range(40))


@pytest.mark.parametrize("slots,width", [(3, 3), (None, 1), (1, 1)])
def test_map_requests_go_out_as_many_at_once_as_the_server_has_slots(slots, width):
    httpd, url, state = _slotted_server(slots)
    said: list[str] = []
    try:
        client = openai.OpenAI(base_url=url, api_key="x", timeout=10, max_retries=0)
        assert summarize.server_slots(client) == (slots or 1)
        s = summarize.summarize(_DOC, client, "m", n_ctx=200, language="en", max_tokens=16,
                                on_progress=said.append)
    finally:
        httpd.shutdown()
    n = s.chunks
    assert n >= 4 and state["max"] == width, (n, state)
    # the partial summaries reach the reduce in the document's order, whatever finished first
    assert state["reduce"][0] == summarize.REDUCE_PROMPTS["en"].format(
        text=summarize._join(f"Summary of part {k}." for k in range(1, n + 1)))
    maps = [c for c in s.calls if c.role == "map"]
    assert len(maps) == n and all(c.finish_reason == "stop" for c in maps)
    if width == 1:
        assert [c.started for c in maps] == sorted(c.started for c in maps)
    assert [m for m in said if m.startswith("summarizing part")] and all(
        f"summarizing part {k}/{n}" in said for k in range(1, n + 1))


def test_a_failing_map_request_raises_its_error_with_others_in_flight():
    httpd, url, state = _slotted_server(3, fail_part=2)
    try:
        client = openai.OpenAI(base_url=url, api_key="x", timeout=10, max_retries=0)
        with pytest.raises(ServerError, match="500"):
            summarize.summarize(_DOC, client, "m", n_ctx=200, language="en", max_tokens=16)
    finally:
        httpd.shutdown()
    assert state["reduce"] == [] and state["max"] >= 2


def test_map_prompt_puts_the_instructions_first_and_the_part_number_last():
    for lang, tpl in summarize.MAP_PROMPTS.items():
        a, b = tpl.format(i=1, n=5, text="CHUNK A"), tpl.format(i=4, n=5, text="CHUNK B")
        head = tpl.split("{text}")[0]
        assert a.startswith(head) and b.startswith(head) and "{" not in head, lang
        assert a.index("CHUNK A") < a.index("1") and b.index("CHUNK B") < b.index("4"), lang


@pytest.fixture(scope="module")
def two_slots(default_model, tmp_path_factory):
    """A fresh 2-slot server on the default model with flash attention off: with the prompt
    cache on, CPU flash attention gives logits that depend on where a prompt's prefill was cut
    (a reused prefix), so even two one-at-a-time summaries can differ; without it, a reused or
    copied prefix gives bit-identical logits (batching still rounds differently: see below)."""
    from qwenkit import server
    from qwenkit.config import RunConfig
    srv = server.start(RunConfig(model=str(default_model), n_ctx=1024, n_threads=1, parallel=2,
                                 flash_attn=False), port="any", ready_timeout=120, quiet=True,
                       log_path=tmp_path_factory.mktemp("two_slots") / "server.log")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_map_requests_overlap_on_the_real_server_and_equal_the_sequential_summary(two_slots, monkeypatch):
    """On a fresh 2-slot server: the map requests run two at once (their times overlap and the
    server decoded 2 sequences in one step), and the partial summaries are the ones
    one-at-a-time requests give, in the same order (greedy).

    "The same" allows float noise: with one KV region per slot llama.cpp cuts a batch into
    micro-batches with equally many tokens of each sequence, so a prompt token decoded beside
    another sequence's token goes through a 2-row matrix product, which rounds differently
    from the many-row one; where an answer's top two tokens nearly tie, it can part from the
    one-at-a-time answer (measured: partial 4 of 4 differed in 2 of 5 runs, with the same
    prompt-cache counters). So: at least half the partials equal exactly, and each partial is
    closest to its own one-at-a-time counterpart (the order is kept)."""
    srv = two_slots
    client = srv.client()
    assert summarize.server_slots(client) == 2
    text = sample_text("en")[:5000]           # about 1100 tokens: 4 chunks at n_ctx 512
    got = []
    real = summarize._ask_all

    def recording(run, users, *a, **kw):
        out = real(run, users, *a, **kw)
        got.append((run.parallel, a[1], out))
        return out

    monkeypatch.setattr(summarize, "_ask_all", recording)
    kw: dict[str, Any] = dict(n_ctx=512, language="en", max_tokens=32, temperature=0.0, seed=1)
    assert srv.health()["decode"]["max_sequences"] <= 1
    both = summarize.summarize(text, client, srv.alias, **kw)     # first, on a cold prompt cache
    assert srv.health()["decode"]["max_sequences"] == 2
    one = summarize.summarize(text, client, srv.alias, parallel=1, **kw)
    assert one.chunks == both.chunks >= 3
    maps_par = [g for g in got if g[1] == "map"]
    assert [(p, len(out)) for p, _, out in maps_par] == [(2, both.chunks), (1, one.chunks)]
    par, seq = maps_par[0][2], maps_par[1][2]
    assert 2 * sum(a == b for a, b in zip(par, seq, strict=True)) >= len(seq), (par, seq)
    for i, a in enumerate(par):
        near = [difflib.SequenceMatcher(None, a, b).ratio() for b in seq]
        assert near.index(max(near)) == i, (i, a, seq)
    assert both.text and one.text
    maps = [c for c in both.calls if c.role == "map"]
    overlaps = sum(1 for a, b in pairwise(maps) if b.started < a.started + a.seconds)
    assert overlaps >= 1, [(c.started, c.seconds) for c in maps]
    wall = max(c.started + c.seconds for c in maps) - maps[0].started
    print(f"map step, {len(maps)} requests 2 at once: {wall:.1f} s wall for "
          f"{sum(c.seconds for c in maps):.1f} s of requests; summary {both.seconds:.1f} s")


@pytest.fixture(scope="module")
def tiny_two_slots():
    """The kit's server on the tiny random qwen35moe: 2 slots of 1024 tokens."""
    from qwenkit import server, synthetic
    from qwenkit.config import RunConfig
    path = synthetic.cached_model("qwen35moe", "tiny")
    srv = server.start(RunConfig(model=str(path), n_ctx=1024, n_threads=1, parallel=2), port="any", quiet=True,
                       access_log=False)
    yield srv
    srv.stop()


def test_partials_longer_than_planned_are_cut_to_fit_not_replanned(tiny_two_slots):
    # the random model answers in filler tokens (" w123") that count ~2 tokens each when tokenized
    # again (the full-size vocabulary's " w123456": ~6.5): two 256-token partial summaries do not
    # fit one 1024-token reduce prompt. Before: a 400, then the whole summary again at 0.7 x n_ctx,
    # three times, then ContextOverflowError (130-180 s here)
    said: list[str] = []
    s = summarize.summarize(sample_text("en"), tiny_two_slots.client(), tiny_two_slots.alias, n_ctx=1024,
                            language="en", temperature=0.0, max_tokens=256, loop_guard=False, on_progress=said.append)
    assert not any("planning for" in m for m in said), said
    assert s.chunks > 2 and s.text
    assert max(c.prompt_tokens for c in s.calls) <= 1024 - 64
