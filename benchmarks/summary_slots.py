"""One long summary, N slots vs one: qwenkit.summarize through the kit's server with
`parallel=N` (the summarizer sends its map requests N at once, as many as /health says) and
through the same server with `parallel=1` (one request at a time), same model, flags, document
and context per slot. The issue's target: a ~30K-token summary on the H200 in <= 0.7 x the
one-slot wall time.

    # 2-core CPU, the default model (SmolLM2-135M): a ~3K-token document, 4 slots of 1024
    # tokens (4 chunks of ~750 tokens) vs 1 slot, 96-token answers, --threads 1 (a shared
    # machine); ~45 s a round (--rounds 2: ~1.7 min):
    python benchmarks/summary_slots.py --rounds 2   # writes benchmarks/results/summary_slots_cpu.json

    # GPU (H200), the full-size random synthetic Qwen3.5-35B-A3B (written once, ~15 s, unless
    # --model), a ~30K-token document, 8 slots of 8192 tokens vs 1, 1000-token answers (the
    # summarizer's default max_tokens); the CUDA wheel from scripts/device_build.sh and the
    # openai wheels of .carry_extra in /tmp/site first, then the ONE benchmark command
    # (~80 s a round, estimated: --rounds 2 fits --budget 280):
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/summary_slots.py --gpu \
        --model /tmp/qwenkit-models/qwen35moe-full-q4_k_m-random.gguf --rounds 2 --budget 280 \
        --out $OUT/summary_slots_h200.json
    # Then, here: cp <files_at>/summary_slots_h200.json benchmarks/results/ && python benchmarks/results_md.py

What is measured:
- the document: ~--tokens tokens (30000 with --gpu, 3000 on the CPU) of qwenkit/data's sample
  text (sample_en.txt; --language ja: sample_ja.txt), counted with the model's own tokenizer
  (llama.cpp, the GGUF loaded vocab only). It is built of "Part k" sections: each a heading of
  the sample (cycled) and half the sample's paragraphs in a shuffled order, every paragraph's
  sentences shuffled too (seeded), so no two parts and no two chunks start alike (the
  server's prompt cache can reuse only the shared system prompt and instructions, as for a
  real document). The SAME text goes to both servers.
- the servers: qwenkit.server.start(RunConfig(n_ctx=--n-ctx per slot, parallel=P)) with
  P = --slots (8 with --gpu, 4 on the CPU) and P = 1, one at a time (loaded, used, stopped),
  the same model, build and flags; with --rounds > 1 the order alternates (N first in even
  rounds, 1 first in odd ones). Each server answers one 8-token warm-up chat first.
- the summary: qwenkit.summarize.summarize(text, openai.OpenAI client, alias,
  n_ctx=--n-ctx, language, temperature=0 (greedy), max_tokens=--max-tokens, loop_guard off,
  everything else the summarizer's defaults (presence_penalty 1.5, parallel=None: it asks
  /health for the slots). The map answers get min(max_tokens, n_ctx/4) tokens, the final
  answer max_tokens. A random model writes garbage and may stop at any time: the client's
  HTTP transport adds `logit_bias` -100 on every end-of-generation token to every chat
  request (summarize() has no extra-body argument; --no-eos-bias leaves it out), so every
  answer runs to its limit on both servers, and the loop guard is off (it would cut a
  repeating answer and ask again at temperature 0.7: unequal work). The same transport asks
  for `stream_options.include_usage` and records each request's server-side usage
  (prompt, cached and completion tokens) and finish_reason, so the table shows whether both
  runs did the same work.
- per run: the summary's wall time (summarize()'s own Summary.seconds: tokenizing, planning,
  map and reduce), the map phase (first map request sent -> last map answer done) and the
  reduce phase, the map / reduce calls, prompt / completion tokens (the Summary's, which
  re-tokenizes the answers, and the server's usage), the slots the summarizer saw (its
  "N parts, W at once" line; 1 slot: one at a time), the most map requests in flight at once,
  the Summary's figures (chunks, chunk tokens, rounds, decode tok/s, first token), and the
  server's /health decode counters (sequences per llama_decode: mean and max over the
  summary, from the counters before and after it). The load average before and after.
- ratio = wall(N slots) / wall(1 slot), per round and of the summed walls.

Time on an H200, estimated from the committed runs (~4,700 tok/s prefill, ~235 tok/s one
stream, ~5 s a server load): the synthetic Qwen3.5's tokenizer makes the 30K tokens 5 chunks
of ~6.7K tokens at n_ctx 8192 (checked with the sparse full-size GGUF's vocabulary), so ~36K
prompt tokens (~8 s of prefill either way) and 6 x 1000 answer tokens: ~26 s of decode one at
a time, ~10 s for the 5 map answers together + ~4 s for the final one: ~35-40 s with one
slot, ~25 s with 8, ~80 s a round with the loads and warm-ups. The map answer length is the
lever: it is min(--max-tokens, n_ctx/4); 1000 (the summarizer's default) keeps a round near
80 s. --budget: no run starts past it (nor a later round that would end past it); the JSON is
written after every run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qwenkit import bench
from qwenkit.config import RunConfig, default_threads

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 0.7


# ---- the document -----------------------------------------------------------------------------
_SENT = {"en": re.compile(r"(?<=[.!?])\s+"), "ja": re.compile(r"(?<=[。！？])")}


def _sample(language: str) -> tuple[list[str], list[str]]:
    """(headings, body paragraphs) of the bundled sample in `language`."""
    from qwenkit.data import sample_text
    paras = [" ".join(p.split())
             for p in re.split(r"\n\s*\n", sample_text(language)) if p.strip()]
    heads = [p for p in paras if len(p) < 80 and not p.endswith(("." if language == "en" else "。"))]
    body = [p for p in paras if p not in heads]
    return heads or ["Notes"], body


def _vary(p: str, rng: random.Random, language: str) -> str:
    """The paragraph with its sentences in a shuffled order."""
    sents = [x.strip() for x in _SENT[language].split(p) if x.strip()]
    if len(sents) < 2:
        return p
    rng.shuffle(sents)
    return ("" if language == "ja" else " ").join(sents)


def build_document(count, language: str, tokens: int, seed: int = 0) -> tuple[str, int, int]:
    """(text, tokens by `count`, parts): "Part k" sections of half the sample's paragraphs,
    shuffled, each paragraph's sentences shuffled (seeded), until the text holds about `tokens` tokens (paragraph
    granularity: it stops at the first paragraph that reaches the count)."""
    heads, body = _sample(language)
    rng = random.Random(seed)
    out: list[str] = []
    total = 0
    k = 0
    while total < tokens:
        k += 1
        order = body[:]
        rng.shuffle(order)
        head = f"Part {k}. {heads[(k - 1) % len(heads)]}" if language == "en" else f"第{k}部 {heads[(k - 1) % len(heads)]}"
        out.append(head)
        total += count(head) + 1
        for p in order[:max(3, len(order) // 2)]:
            para = _vary(p, rng, language)
            out.append(para)
            total += count(para) + 1
            if total >= tokens:
                break
    text = "\n\n".join(out) + "\n"
    return text, count(text), k


# ---- the client: logit_bias and usage on every chat request -------------------------------------------
class Capture(httpx.BaseTransport):
    """An httpx transport for the openai client: adds `extra` (logit_bias) to every POST to
    .../chat/completions, asks streamed ones for their usage, and records each request's
    server-side usage and finish_reason (SSE or JSON) when its response is closed."""

    def __init__(self, extra: dict, prefixes: dict[str, str], inner: httpx.BaseTransport | None = None):
        self._inner = inner or httpx.HTTPTransport()
        self.extra = extra
        self.prefixes = prefixes          # role -> how its user message starts
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self.t0 = time.perf_counter()

    def _role(self, body: dict) -> str:
        if body.get("max_tokens") == 1:
            return "overhead"
        msgs = body.get("messages") or []
        user = next((m.get("content") for m in msgs if m.get("role") == "user"), "") or ""
        for role, pre in self.prefixes.items():
            if isinstance(user, str) and user.startswith(pre):
                return role
        return "other"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
            return self._inner.handle_request(request)
        body = json.loads(request.read() or b"{}")
        body.update(self.extra)
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True}
        content = json.dumps(body).encode()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        new = httpx.Request(request.method, request.url, headers=headers, content=content,
                            extensions=request.extensions)
        rec = {"role": self._role(body), "max_tokens": body.get("max_tokens"), "stream": bool(body.get("stream")),
               "sent_s": round(time.perf_counter() - self.t0, 4)}
        resp = self._inner.handle_request(new)
        rec["status"] = resp.status_code
        return httpx.Response(resp.status_code, headers=resp.headers, stream=_Sniff(resp.stream, rec, self),
                              extensions=resp.extensions, request=request)

    def close(self) -> None:
        self._inner.close()

    def done(self, rec: dict, data: bytes) -> None:
        rec["done_s"] = round(time.perf_counter() - self.t0, 4)
        usage, finish = None, None
        if rec["stream"]:
            for line in data.split(b"\n"):
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                try:
                    ev = json.loads(line[5:])
                except ValueError:
                    continue
                usage = ev.get("usage") or usage
                for ch in ev.get("choices") or []:
                    finish = ch.get("finish_reason") or finish
        else:
            try:
                ev = json.loads(data)
                usage = ev.get("usage")
                finish = ((ev.get("choices") or [{}])[0]).get("finish_reason")
            except (ValueError, AttributeError):
                pass
        if usage:
            rec["prompt_tokens"] = usage.get("prompt_tokens")
            rec["completion_tokens"] = usage.get("completion_tokens")
            rec["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        rec["finish_reason"] = finish
        with self._lock:
            self.records.append(rec)


class _Sniff(httpx.SyncByteStream):
    """The response body as it streams, kept for Capture.done when the response closes."""

    def __init__(self, inner, rec: dict, cap: Capture):
        self.inner, self.rec, self.cap = inner, rec, cap
        self.buf = bytearray()
        self.closed = False

    def __iter__(self):
        for b in self.inner:
            self.buf += b
            yield b

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.inner.close()
        finally:
            self.cap.done(self.rec, bytes(self.buf))


# ---- one run: a server, a summary ----------------------------------------------------------------
@contextlib.contextmanager
def kit_server(cfg: RunConfig):
    from qwenkit import server
    srv = server.start(cfg, port="any", access_log=False, quiet=True, ready_timeout=600)
    try:
        yield srv
    finally:
        srv.stop()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _decode_delta(h0: dict, h1: dict) -> dict:
    """Sequences per llama_decode over the summary, from /health before and after it (its
    mean_sequences is rounded to 3 decimals: the difference is good to about that)."""
    d0, d1 = h0.get("decode") or {}, h1.get("decode") or {}
    steps = (d1.get("steps") or 0) - (d0.get("steps") or 0)
    seqs = (d1.get("mean_sequences") or 0) * (d1.get("steps") or 0) - (d0.get("mean_sequences") or 0) * (d0.get("steps") or 0)
    return {"steps": steps, "mean_sequences": round(seqs / steps, 3) if steps > 0 else None,
            "max_sequences": d1.get("max_sequences"),
            "tokens": (d1.get("tokens") or 0) - (d0.get("tokens") or 0)}


def _phase(calls: list[dict], role: str) -> float | None:
    cs = [c for c in calls if c["role"] == role]
    if not cs:
        return None
    return max(c["started_s"] + c["seconds"] for c in cs) - min(c["started_s"] for c in cs)


def _max_in_flight(calls: list[dict], role: str) -> int:
    ev = sorted([(c["started_s"], 1) for c in calls if c["role"] == role]
                + [(c["started_s"] + c["seconds"], -1) for c in calls if c["role"] == role],
                key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def run_summary(cfg: RunConfig, slots: int, text: str, a, extra: dict, language: str) -> dict:
    """Start the kit's server with `slots` slots, warm it up, summarize `text` once, stop it."""
    import openai
    from qwenkit import summarize as S
    rec: dict[str, Any] = {"slots": slots, "n_ctx_per_slot": cfg.n_ctx}
    t_load = time.monotonic()
    with kit_server(cfg.replace(parallel=slots)) as srv:
        rec["load_s"] = round(time.monotonic() - t_load, 1)
        rec["health_start"] = srv.health()
        prefixes = {"map": S.MAP_PROMPTS[language].split("{text}")[0],
                    "reduce": S.REDUCE_PROMPTS[language].split("{text}")[0],
                    "whole": S.WHOLE_PROMPTS[language].split("{text}")[0]}
        cap = Capture(extra, prefixes)
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key or "not-needed", timeout=900,
                               max_retries=0, http_client=httpx.Client(transport=cap, timeout=900))
        try:
            client.chat.completions.create(  # warm-up
                model=srv.alias, max_tokens=8, temperature=0.0, extra_body=S.NO_THINKING,
                messages=[{"role": "user", "content": f"Warm-up for {slots} slot(s): say hello."}])
            rec["slots_seen_by_health"] = S.server_slots(client)
            cap.records.clear()
            h0 = srv.health()
            progress: list[tuple[float, str]] = []
            la0, cpu0 = os.getloadavg(), _cpu()
            t0 = time.perf_counter()
            cap.t0 = t0
            s = S.summarize(text, client, srv.alias, n_ctx=cfg.n_ctx, language=language, temperature=0.0,
                            max_tokens=a.max_tokens, loop_guard=a.loop_guard,
                            on_progress=lambda m: progress.append((round(time.perf_counter() - t0, 3), m)))
            outer = time.perf_counter() - t0
            cpu1, la1 = _cpu(), os.getloadavg()
            h1 = srv.health()
        finally:
            client.close()
    calls = [{"role": c.role, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
              "seconds": round(c.seconds, 4), "first_token_s": None if c.first_token_s is None else round(c.first_token_s, 4),
              "decode_s": round(c.decode_s, 4), "finish_reason": c.finish_reason,
              "started_s": round(c.started - t0, 4)} for c in s.calls]
    width = next((int(m.group(2)) for _, msg in progress
                  for m in [re.search(r"summarizing (\d+) parts, (\d+) at once", msg)] if m), 1)
    srv_calls = [r for r in cap.records if r["role"] != "overhead"]
    by_role = lambda role: [r for r in srv_calls if r["role"] == role]
    rec.update(
        wall_s=round(s.seconds, 3), wall_outer_s=round(outer, 3),
        map_s=_phase(calls, "map"), reduce_s=_phase(calls, "reduce"),
        map_calls=sum(1 for c in calls if c["role"] == "map"),
        reduce_calls=sum(1 for c in calls if c["role"] == "reduce"),
        whole_calls=sum(1 for c in calls if c["role"] == "whole"),
        map_width=width, map_in_flight_max=_max_in_flight(calls, "map"),
        summary={"seconds": round(s.seconds, 3), "prompt_tokens": s.prompt_tokens,
                 "completion_tokens": s.completion_tokens, "tok_per_s": round(s.tok_per_s, 2),
                 "chunks": s.chunks, "first_token_s": None if s.first_token_s is None else round(s.first_token_s, 3),
                 "truncated": s.truncated, "rounds": s.rounds, "chunk_budget": s.chunk_budget,
                 "chunk_tokens": s.chunk_tokens, "loops": s.loops, "str": str(s)},
        server_usage={"prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in srv_calls),
                      "cached_tokens": sum(r.get("cached_tokens") or 0 for r in srv_calls),
                      "completion_tokens": sum(r.get("completion_tokens") or 0 for r in srv_calls),
                      "map_completion_tokens": sorted({r.get("completion_tokens") for r in by_role("map")}, key=str),
                      "reduce_completion_tokens": [r.get("completion_tokens") for r in by_role("reduce")],
                      "finish_reasons": sorted({str(r.get("finish_reason")) for r in srv_calls}),
                      "requests": len(srv_calls), "requests_missing_usage": sum(1 for r in srv_calls
                                                                                 if r.get("completion_tokens") is None)},
        decode=_decode_delta(h0, h1), health_before=h0, health_after=h1,
        client_cpu_s=round(cpu1 - cpu0, 3), load_before=list(la0), load_after=list(la1),
        calls=calls, requests=sorted(cap.records, key=lambda r: r["sent_s"]), progress=progress,
        text_chars=len(s.text), text_head=s.text[:200])
    return rec


# ---- figures -------------------------------------------------------------------------------------------
def row_of(r: dict) -> dict:
    """The compact figures of one run (what RESULTS.md shows)."""
    su, u, d = r["summary"], r["server_usage"], r["decode"]
    return {"round": r["round"], "slots": r["slots"], "n_ctx_per_slot": r["n_ctx_per_slot"], "wall_s": r["wall_s"],
            "map_s": r["map_s"], "reduce_s": r["reduce_s"], "chunks": su["chunks"], "rounds": su["rounds"],
            "map_calls": r["map_calls"], "reduce_calls": r["reduce_calls"], "map_width": r["map_width"],
            "map_in_flight_max": r["map_in_flight_max"], "slots_seen": r["slots_seen_by_health"],
            "prompt_tokens": u["prompt_tokens"], "cached_tokens": u["cached_tokens"],
            "completion_tokens": u["completion_tokens"], "summary_prompt_tokens": su["prompt_tokens"],
            "summary_completion_tokens": su["completion_tokens"], "map_completion_tokens": u["map_completion_tokens"],
            "finish_reasons": u["finish_reasons"], "decode_mean_sequences": d["mean_sequences"],
            "decode_max_sequences": d["max_sequences"], "decode_tok_per_s": su["tok_per_s"],
            "first_token_s": su["first_token_s"]}


def compare(rows: list[dict], slots: int) -> dict:
    """wall(N slots) / wall(1 slot): per round (both runs done), of the summed walls, and
    whether both did the same work (chunks, calls, server completion tokens)."""
    per = []
    for k in sorted({r["round"] for r in rows}):
        n = next((r for r in rows if r["round"] == k and r["slots"] == slots), None)
        o = next((r for r in rows if r["round"] == k and r["slots"] == 1), None)
        if n and o:
            per.append((n, o))
    if not per:
        return {"rounds": 0, "target": TARGET}
    ratios = [n["wall_s"] / o["wall_s"] for n, o in per]
    wn, wo = sum(n["wall_s"] for n, _ in per), sum(o["wall_s"] for _, o in per)
    same = all(n["chunks"] == o["chunks"] and n["map_calls"] == o["map_calls"] and n["reduce_calls"] == o["reduce_calls"]
               and n["completion_tokens"] == o["completion_tokens"] for n, o in per)
    ratio = wn / wo
    return {"rounds": len(per), "slots": slots, "ratios": [round(x, 4) for x in ratios],
            "ratio": round(ratio, 4), "ratio_median": round(statistics.median(ratios), 4),
            "wall_n_s": round(wn / len(per), 3), "wall_1_s": round(wo / len(per), 3),
            "map_ratio": (round(sum(n["map_s"] for n, _ in per) / sum(o["map_s"] for _, o in per), 4)
                          if all(n["map_s"] and o["map_s"] for n, o in per) else None),
            "equal_work": same, "target": TARGET, "meets_target": ratio <= TARGET}


def table(doc: dict) -> str:
    from results_md import summary_slots_tables
    return summary_slots_tables(doc["summary_slots"])


# ---- the run -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from multiturn import Vocab, eog_bias, gpu_slug, synthetic_model
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU mode: all layers on the GPU, a ~30K-token document, "
                    "8 slots of 8192 tokens, 1000-token answers, the full-size synthetic Qwen3.5 unless --model")
    ap.add_argument("--model", help="GGUF (CPU default: the default model; --gpu default: the synthetic Qwen3.5)")
    ap.add_argument("--model-dir", default=os.environ.get("QWENKIT_GPU_MODEL_DIR", "/tmp/qwenkit-models"))
    ap.add_argument("--tokens", type=int, default=None, help="document size in tokens, about (default 30000 "
                    "with --gpu, 3000 on the CPU)")
    ap.add_argument("--slots", type=int, default=None, help="slots of the parallel server (default 8 with --gpu, "
                    "4 on the CPU); the other has 1")
    ap.add_argument("--n-ctx", type=int, default=None, help="context PER SLOT, both servers, and the summarizer's "
                    "n_ctx (default 8192 with --gpu, the kit's default; 1024 on the CPU: 4 chunks of 3K tokens)")
    ap.add_argument("--max-tokens", type=int, default=None, help="summarize(max_tokens=): the final answer's limit; "
                    "map answers get min(this, n_ctx/4) (default 1000 with --gpu, the summarizer's default; 96 on the CPU)")
    ap.add_argument("--language", default="en", choices=["en", "ja"], help="the sample text and the summarizer's prompts")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (each: both servers, the order alternating)")
    ap.add_argument("--threads", type=int, default=None, help="default 1 on the CPU (a shared 2-core machine), "
                    "all cores with --gpu")
    ap.add_argument("--no-eos-bias", action="store_true", help="let answers stop at an end-of-generation token")
    ap.add_argument("--loop-guard", action="store_true", help="the summarizer's loop guard on (it cuts a repeating "
                    "answer and asks once more at temperature 0.7: the two runs may then do different work)")
    ap.add_argument("--budget", type=float, default=None, help="seconds; no run starts past it, nor a round that "
                    "would end past it (default none)")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/summary_slots_cpu.json, or "
                    "summary_slots_<gpu>.json with --gpu)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    try:
        import openai  # noqa: F401 - the summarizer's client
    except ImportError:
        print("the openai package is missing (on the device: install .carry_extra/*.whl into /tmp/site)",
              file=sys.stderr)
        return 2
    tokens = a.tokens or (30000 if a.gpu else 3000)
    slots = a.slots or (8 if a.gpu else 4)
    n_ctx = a.n_ctx or (8192 if a.gpu else 1024)
    a.max_tokens = a.max_tokens or (1000 if a.gpu else 96)
    threads = a.threads or (default_threads() if a.gpu else 1)
    if a.gpu:
        model = a.model or synthetic_model(a.model_dir)
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_gpu_layers=-1, n_threads=threads)
    else:
        from qwenkit.models import default_model_path
        model = a.model or str(default_model_path())
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_threads=threads)
    out = Path(a.out or HERE / "results" / (f"summary_slots_{gpu_slug()}.json" if a.gpu else "summary_slots_cpu.json"))
    extra = {} if a.no_eos_bias else {"logit_bias": eog_bias(model)}

    vocab = Vocab(model)
    try:
        text, doc_tokens, parts = build_document(vocab.count, a.language, tokens)
    finally:
        vocab.close()
    answer = min(a.max_tokens, max(64, n_ctx // 4))  # as summarize._summarize_once

    meta = bench.machine_info()
    meta.update(model=Path(model).name, model_path=model, threads=threads, suite="summary_slots", reps=a.rounds,
                config=cfg.to_dict(), notes=list(a.note), budget_s=a.budget, eos_bias=bool(extra),
                loop_guard=a.loop_guard, language=a.language,
                document={"tokens": doc_tokens, "chars": len(text), "parts": parts, "target_tokens": tokens,
                          "source": f"qwenkit/data/sample_{a.language}.txt, paragraphs and their sentences shuffled per part (seed 0)"},
                summarize={"n_ctx": n_ctx, "max_tokens": a.max_tokens, "map_answer_tokens": answer,
                           "temperature": 0.0, "loop_guard": a.loop_guard, "parallel": "None (the server's /health)",
                           "client": "openai.OpenAI, max_retries 0, an httpx transport adding logit_bias "
                                     "(end-of-generation tokens -100) and stream_options.include_usage"},
                servers={"n": f"qwenkit.server.start(RunConfig(n_ctx={n_ctx} per slot, parallel={slots}))",
                         "1": f"qwenkit.server.start(RunConfig(n_ctx={n_ctx}, parallel=1))",
                         "note": "one at a time: started, warmed up (one 8-token chat), one summary, stopped"})
    loads: list[dict] = []
    runs: list[dict] = []
    skipped: list[str] = []
    doc: dict[str, Any] = {"meta": meta, "summary_slots": {}, "runs": runs}

    def save() -> None:
        meta["wall_s"] = round(time.monotonic() - t_start, 1)
        meta["load"] = loads
        rows = [row_of(r) for r in runs if "error" not in r]
        doc["summary_slots"] = {"slots": slots, "n_ctx_per_slot": n_ctx, "document_tokens": doc_tokens,
                                "max_tokens": a.max_tokens, "map_answer_tokens": answer, "language": a.language,
                                "eos_bias": bool(extra), "rows": rows, "compare": compare(rows, slots),
                                "skipped": skipped,
                                "errors": [{"round": r["round"], "slots": r["slots"], "error": r["error"]}
                                           for r in runs if "error" in r]}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(out)

    print(f"{cfg.summary()} | document {doc_tokens} tokens ({parts} parts) | slots {slots} vs 1, n_ctx/slot "
          f"{n_ctx}, answers {answer} (map) / {a.max_tokens} (final) | rounds {a.rounds} | out {out}",
          file=sys.stderr, flush=True)
    last_s: dict[int, float] = {}
    for k in range(a.rounds):
        order = [slots, 1] if k % 2 == 0 else [1, slots]
        elapsed = time.monotonic() - t_start
        need = sum(last_s.get(p, 0.0) for p in order)
        if k >= 1 and a.budget is not None and elapsed + need > a.budget:
            skipped.append(f"rounds {k + 1}-{a.rounds}: {elapsed:.0f} s gone, a round takes {need:.0f} s, "
                                  f"budget {a.budget:.0f} s")
            print(f"== {skipped[-1]}", file=sys.stderr, flush=True)
            break
        for p in order:
            elapsed = time.monotonic() - t_start
            if a.budget is not None and elapsed > a.budget:
                skipped.append(f"round {k + 1}, {p} slot(s): {elapsed:.0f} s gone, budget {a.budget:.0f} s")
                print(f"== {skipped[-1]}", file=sys.stderr, flush=True)
                continue
            t_run = time.monotonic()
            try:
                r = run_summary(cfg, p, text, a, extra, a.language)
            except Exception as e:  # noqa: BLE001 - recorded; the other runs go on
                r = {"slots": p, "error": f"{type(e).__name__}: {e}"[:2000]}
            r["round"] = k
            r["seconds"] = round(time.monotonic() - t_run, 1)
            last_s[p] = r["seconds"]
            runs.append(r)
            if "error" in r:
                print(f"  round {k + 1}, {p} slot(s): ERROR {r['error'][:300]}", file=sys.stderr, flush=True)
            else:
                loads.append({"round": k, "slots": p, "before": r["load_before"], "after": r["load_after"]})
                print(f"  round {k + 1}, {p} slot(s): {r['wall_s']:.1f} s (map {r['map_s'] or 0:.1f} s, reduce "
                      f"{r['reduce_s'] or 0:.1f} s), {r['summary']['chunks']} chunks, {r['map_width']} at once, "
                      f"{r['server_usage']['prompt_tokens']} prompt + {r['server_usage']['completion_tokens']} "
                      f"completion tokens, finish {r['server_usage']['finish_reasons']}, decode "
                      f"{r['decode']['mean_sequences']} seq/step (max {r['decode']['max_sequences']}), load "
                      f"{r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}, server load {r['load_s']} s",
                      file=sys.stderr, flush=True)
            save()
    meta["machine_after"] = {"loadavg": list(os.getloadavg())}
    save()
    print(table(doc))
    print(f"\nwrote {out} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
