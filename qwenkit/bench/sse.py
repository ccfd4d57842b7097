"""A streaming client for OpenAI-style servers: time every SSE event of a /v1/completions
request (time to first token, client-side decode rate), the kit's server, `python -m
llama_cpp.server` and llama.cpp's `llama-server` alike. Plain http.client: no openai package
needed (a device machine's carried wheels do not have it), one connection per request.
open_stream() is the transport for any streaming endpoint (/chat/completions too)."""
from __future__ import annotations

import contextlib
import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qwenkit.bench.results import BenchError, BenchResult

__all__ = ["DEFAULT_SERVER_PROMPT", "StreamStats", "bench_server", "get_json", "open_stream", "stream_completion"]

DEFAULT_SERVER_PROMPT = (
    "The history of the city begins with a small settlement on the river, where traders met "
    "to exchange grain, salt and cloth. Over the following centuries"
)


@dataclass
class StreamStats:
    n_chunks: int              # SSE events that carried text
    t_send: float
    t_first: float | None
    t_last: float | None
    text: str
    finish_reason: str | None
    server: dict[str, Any]     # what the server said about itself (usage / timings), if anything
    times: list[float] = field(default_factory=list)  # arrival of each text event (perf_counter)

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_send

    @property
    def decode_rate(self) -> float | None:
        if self.t_first is None or self.t_last is None or self.n_chunks < 2 or self.t_last <= self.t_first:
            return None
        return (self.n_chunks - 1) / (self.t_last - self.t_first)


@contextlib.contextmanager
def open_stream(url: str, body: dict[str, Any], *, headers: dict | None = None, timeout: float = 600,
                source: str | None = None) -> Iterator[tuple[float, Iterator[tuple[float, dict[str, Any]]]]]:
    """POST `body` as JSON to url (a streaming endpoint) on a connection of its own, closed on
    exit. Yields (t_send, events): the perf_counter time just before the request went out and
    the stream's JSON events up to [DONE], each as (arrival time, event). A status other than
    200, or an event {"error": ...}, raises BenchError naming `source` (default: url)."""
    source = source or url
    u = urllib.parse.urlsplit(url)
    conn = _connection(u, 80, timeout)
    try:
        hdrs = {"Content-Type": "application/json", "Accept": "text/event-stream", **(headers or {})}
        t_send = time.perf_counter()
        conn.request("POST", u.path, body=json.dumps(body), headers=hdrs)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"{source}: HTTP {resp.status}: {resp.read()[:300]!r}",
                             "check the server's log and that the URL and key are right")
        yield t_send, _events(resp, source)
    finally:
        conn.close()


def _events(resp: http.client.HTTPResponse, source: str) -> Iterator[tuple[float, dict[str, Any]]]:
    while True:
        line = resp.readline()
        if not line:
            return
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        now = time.perf_counter()
        try:
            ev = json.loads(data)
        except ValueError:
            continue
        if "error" in ev:
            raise BenchError(f"{source}: the stream reported an error: {ev['error']}",
                             "read the error and the server's log; a benchmark needs every answer complete")
        yield now, ev


def stream_completion(base_url: str, prompt: str, max_tokens: int, *, headers: dict | None = None,
                      model: str | None = None, temperature: float = 0.0, timeout: float = 600,
                      extra: dict | None = None) -> StreamStats:
    """POST {base_url}/completions with stream=true and time every SSE event that carries text.
    base_url ends in /v1 (as an OpenAI client's). Plain http.client: no openai package needed."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
    if model:
        body["model"] = model
    body.update(extra or {})
    url = base_url.rstrip("/") + "/completions"
    with open_stream(url, body, headers=headers, timeout=timeout, source=base_url) as (t_send, events):
        n, t_first, t_last, finish = 0, None, None, None
        parts: list[str] = []
        times: list[float] = []
        info: dict[str, Any] = {}
        for now, ev in events:
            ch = (ev.get("choices") or [{}])[0]
            text = ch.get("text")
            if text is None:
                text = (ch.get("delta") or {}).get("content")
            if text:
                n += 1
                parts.append(text)
                times.append(now)
                if t_first is None:
                    t_first = now
                t_last = now
            finish = ch.get("finish_reason") or finish
            for k in ("usage", "timings"):
                if ev.get(k):
                    info[k] = ev[k]
    return StreamStats(n, t_send, t_first, t_last, "".join(parts), finish, info, times)


def bench_server(base_url: str, n: int = 128, r: int = 5, *, label: str = "server",
                 prompt: str = DEFAULT_SERVER_PROMPT, headers: dict | None = None,
                 model: str | None = None, warmup: bool = True, config: dict | None = None,
                 extra_body: dict | None = None) -> BenchResult:
    """Streamed decode rate seen by a client, r requests of n tokens (greedy), after one
    short warm-up request. Result test name: "tg{n} (stream)"; extra holds ttft and chunks."""
    if warmup:
        stream_completion(base_url, prompt, 8, headers=headers, model=model, extra=extra_body)
    rates, ttft, chunks = [], [], []
    for _ in range(r):
        st = stream_completion(base_url, prompt, n, headers=headers, model=model, extra=extra_body)
        if st.decode_rate is not None:
            rates.append(st.decode_rate)
        ttft.append(st.ttft)
        chunks.append(st.n_chunks)
    return BenchResult(f"tg{n} (stream)", label, 0, n, 0, rates, dict(config or {}),
                       {"ttft_s": ttft, "chunks": chunks})



def _connection(u: urllib.parse.SplitResult, default_port: int | None, timeout: float) -> http.client.HTTPConnection:
    if not u.hostname:
        raise BenchError(f"{u.geturl()!r} names no host", "give a URL such as http://127.0.0.1:8000/v1")
    return http.client.HTTPConnection(u.hostname, u.port or default_port, timeout=timeout)


def get_json(url: str, timeout: float = 5) -> Any:
    """GET url: its JSON body on 200, else {"status": code}, or {"error": text} when the server
    cannot be reached or does not answer JSON (a benchmark records it and goes on)."""
    u = urllib.parse.urlsplit(url)
    c = _connection(u, None, timeout)
    try:
        c.request("GET", u.path)
        r = c.getresponse()
        return json.loads(r.read()) if r.status == 200 else {"status": r.status}
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    finally:
        c.close()
