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
    # --model), a ~30K-token document, 8 slots of 8192 tokens vs 1, 512-token answers (see
    # "The synthetic vocabulary" below: 1000, the summarizer's default, cannot be reduced); the
    # CUDA wheel from scripts/device_build.sh and the openai wheels of .carry_extra in /tmp/site
    # first, then the ONE benchmark command under an outside limit, --stop-at below it (~110 s
    # a round, estimated):
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 timeout 420 python3 benchmarks/summary_slots.py --gpu \
        --model /tmp/qwenkit-models/qwen35moe-full-q4_k_m-random.gguf --max-tokens 512 --rounds 2 \
        --budget 300 --run-timeout 240 --stop-at 390 --out $OUT_DIR/summary_slots_h200.json
    # Then, here: cp <OUT_DIR copied back>/summary_slots_h200.json benchmarks/results/
    # && python benchmarks/results_md.py

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

Watching a run (nothing waits forever): every chat request fails after --request-timeout
seconds of silence (120; a streamed answer sends an event per token) or --request-deadline in all
(900); a run (warm-up and summary) is aborted after --run-timeout seconds from its server's load
(600 with --gpu), and at --stop-at seconds from the start; SIGTERM (timeout(1)) aborts the run in
progress too. While a run goes on, a heartbeat line every --heartbeat seconds (15): /health's
slots busy and queue, decode steps and tokens since the load, the prompt cache's use and
counters, the requests sent / done, the server process's CPU seconds, the GPU's utilization and
memory (--gpu), the summarizer's last progress line (those lines are printed as they come too).
A failed run keeps what was measured in the JSON (its requests, progress, heartbeats, /health and
the server's CPU time at the error, the client's thread stacks when it was aborted), and the last
400 lines of the server's log go next to --out as <stem>.round<k>-<slots>slot.server.log (the
last 40 in the JSON too).

The synthetic vocabulary: the random full-size model answers in its filler tokens (" w123456"),
which count ~6.5 tokens each when tokenized again (the summarizer counts its partial summaries
that way); two 1000-token map answers then need ~13K tokens, more than a reduce prompt may hold
at n_ctx 8192, and summarize() answers the server's 400 by starting the WHOLE summary again with
a smaller plan, up to 5 times (minutes of silent work on an H200). Such a replan stops the run
with an error that gives the measured ratio and a --max-tokens that fits (--allow-replan lets it
go on). 512-token answers fit (two partials ~6.7K of a ~7.6K budget).

Time on an H200, estimated from the committed runs (~4,700 tok/s prefill, ~235 tok/s one
stream, ~5 s a server load): the synthetic Qwen3.5's tokenizer makes the 30K tokens 5 chunks
of ~6.7K tokens at n_ctx 8192 (checked with the sparse full-size GGUF's vocabulary), so ~36K
prompt tokens (~8 s of prefill either way). With 512-token answers (partials of ~3.3K tokens
counted again) the reduce takes three rounds: 5 map + 3 + 2 + 1 reduce answers, 11 x 512 tokens
one at a time (~25 s of decode, plus the sampler's ~1 ms per token and slot for the presence
penalty over 248K candidates) against 4 waves with 8 slots: ~110 s a round with the loads and
warm-ups. The map answer length is the lever: it is min(--max-tokens, n_ctx/4). --budget: no
run starts past it (nor a later round that would end past it); the JSON is written after every
run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
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
        title = heads[(k - 1) % len(heads)]
        head = f"Part {k}. {title}" if language == "en" else f"第{k}部 {title}"
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
class ClientTimeout(httpx.ReadTimeout):
    """A chat request this benchmark gave up on: no byte for --request-timeout seconds, past its
    --request-deadline, or the run was aborted (--run-timeout, --stop-at, SIGTERM)."""


class Capture(httpx.BaseTransport):
    """An httpx transport for the openai client: adds `extra` (logit_bias) to every POST to
    .../chat/completions, asks streamed ones for their usage, and records each request (when
    it is sent; its server-side usage, finish_reason and answer length when its response is
    closed). A request older than `request_deadline` seconds, and every request once `abort`
    was called, fails at its next event with ClientTimeout (summarize() turns that into a
    ServerError naming it), so no request waits forever."""

    def __init__(self, extra: dict, prefixes: dict[str, str], inner: httpx.BaseTransport | None = None, *,
                 request_deadline: float | None = None, read_timeout: float | None = None):
        self._inner = inner or httpx.HTTPTransport()
        self.extra = extra
        self.prefixes = prefixes          # role -> how its user message starts
        self.request_deadline = request_deadline
        self.read_timeout = read_timeout      # the client's, for the error message
        self.records: list[dict] = []
        self.answers: list[tuple[dict, str]] = []  # (record, streamed text) of finished requests
        self.aborted: str | None = None
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

    def abort(self, reason: str) -> None:
        """Every request fails from now on: new ones at once, streaming ones at their next event."""
        if self.aborted is None:
            self.aborted = reason

    def check(self, sent: float | None = None, role: str = "") -> None:
        if self.aborted:
            raise ClientTimeout(self.aborted)
        if sent is not None and self.request_deadline and time.perf_counter() - sent > self.request_deadline:
            reason = f"a {role} request ran past its deadline of {self.request_deadline:g} s (--request-deadline)"
            self.abort(reason)
            raise ClientTimeout(reason)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.answers.clear()

    def counts(self) -> tuple[int, int]:
        """(requests sent, requests done) so far."""
        with self._lock:
            return len(self.records), sum(1 for r in self.records if "done_s" in r)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
            return self._inner.handle_request(request)
        self.check()
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
        with self._lock:
            self.records.append(rec)
        sent = time.perf_counter()
        try:
            resp = self._inner.handle_request(new)
        except httpx.TimeoutException as e:
            self._failed(rec, f"no answer for {self.read_timeout} s (--request-timeout): {e!r}")
            raise ClientTimeout(rec["error"]) from None
        except BaseException as e:
            self._failed(rec, f"{type(e).__name__}: {e}")
            raise
        rec["status"] = resp.status_code
        return httpx.Response(resp.status_code, headers=resp.headers, stream=_Sniff(resp.stream, rec, self, sent),
                              extensions=resp.extensions, request=request)

    def close(self) -> None:
        self._inner.close()

    def _failed(self, rec: dict, error: str) -> None:
        rec["error"] = error[:500]
        rec["done_s"] = round(time.perf_counter() - self.t0, 4)

    def done(self, rec: dict, data: bytes) -> None:
        rec["done_s"] = round(time.perf_counter() - self.t0, 4)
        usage, finish, text = None, None, []
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
                    text.append((ch.get("delta") or {}).get("content") or "")
        else:
            try:
                ev = json.loads(data)
                usage = ev.get("usage")
                ch = (ev.get("choices") or [{}])[0]
                finish = ch.get("finish_reason")
                text.append((ch.get("message") or {}).get("content") or "")
            except (ValueError, AttributeError, IndexError):
                pass
        if usage:
            rec["prompt_tokens"] = usage.get("prompt_tokens")
            rec["completion_tokens"] = usage.get("completion_tokens")
            rec["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        rec["finish_reason"] = finish
        answer = "".join(text)
        rec["answer_chars"] = len(answer)
        with self._lock:
            self.answers.append((rec, answer))


class _Sniff(httpx.SyncByteStream):
    """The response body as it streams, kept for Capture.done when the response closes; every
    piece checks the request's deadline and the run's abort first."""

    def __init__(self, inner, rec: dict, cap: Capture, sent: float | None = None):
        self.inner, self.rec, self.cap = inner, rec, cap
        self.sent = time.perf_counter() if sent is None else sent
        self.buf = bytearray()
        self.closed = False

    def __iter__(self):
        it = iter(self.inner)
        while True:
            try:
                self.cap.check(self.sent, self.rec["role"])
                b = next(it)
            except StopIteration:
                return
            except ClientTimeout as e:
                self.rec["error"] = str(e)[:500]
                raise
            except httpx.TimeoutException as e:
                self.rec["error"] = (f"the server sent nothing for {self.cap.read_timeout} s after "
                                     f"{len(self.buf)} bytes (--request-timeout): {e!r}")
                raise ClientTimeout(self.rec["error"]) from None
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


# ---- watching a run: heartbeat, deadlines, the server's log -------------------------------------------
REPLAN = "the server's context is smaller than n_ctx"   # summarize()'s line before it starts over


class Replanned(RuntimeError):
    """summarize() started the whole summary again with a smaller plan (--allow-replan lets it)."""


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process `pid` so far (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def gpu_now() -> str | None:
    """The GPU's utilization and memory in use (nvidia-smi), or None without one."""
    import subprocess
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                           check=False, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip().replace("\n", "; ") or None


def beat_line(label: str, b: dict) -> str:
    """One heartbeat as a line on stderr."""
    if not b.get("health"):
        srv = f"/health NO ANSWER (server process {'alive' if b.get('server_alive') else 'GONE'})"
    else:
        pc = b.get("prompt_cache") or {}
        srv = (f"slots {b['slots_busy']}/{b['slots_total']} busy, queue {b['queue']}, decode +{b['decode_steps']} "
               f"steps +{b['decode_tokens']} tokens, {b['requests_done']} done | prompt cache "
               f"{pc.get('used_mib')}/{pc.get('budget_mib')} MiB, {pc.get('checkpoints')} ckpt, "
               f"{pc.get('parked')} parked (saved {pc.get('saved')}, restored {pc.get('restored')}, "
               f"parked {pc.get('parked_total')}, evicted {pc.get('evicted')})")
    gpu = f" | gpu {b['gpu']}" if b.get("gpu") else ""
    last = f" | last: {b['last']}" if b.get("last") else ""
    return (f"  [{label} {b['t_s']:.0f} s] {srv} | client {b['sent']} sent, {b['done']} done | server cpu "
            f"{b.get('server_cpu_s')} s{gpu}{last}")


class Heartbeat:
    """Every `every` seconds while a run goes on, one line on stderr (kept in `beats` for the
    JSON): the time since the server loaded, its /health (slots busy, queue, decode steps and
    tokens since the load, the prompt cache), the requests sent / done, the server process's CPU
    seconds, the GPU's utilization (--gpu) and the summarizer's last progress line. A silent
    /health, a CPU clock that stops, decode counters that stop: each tells a different story.
    Past `deadline` (time.monotonic()) it aborts every request (Capture.abort) and keeps a
    stack dump of this process's threads."""

    def __init__(self, srv, cap: Capture, base: dict, progress: list, *, label: str, every: float = 15.0,
                 deadline: float | None = None, deadline_reason: str = "", gpu: bool = False):
        self.srv, self.cap, self.base, self.progress = srv, cap, base, progress
        self.label, self.every, self.gpu = label, every, gpu
        self.deadline, self.deadline_reason = deadline, deadline_reason
        self.beats: list[dict] = []
        self.stacks: str | None = None
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="summary-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        due = self.t0 + self.every
        while not self._stop.wait(min(1.0, self.every)):
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline and not self.cap.aborted:
                self.stacks = thread_stacks()
                self.cap.abort(self.deadline_reason or "the run's deadline passed")
                print(f"  [{self.label} {now - self.t0:.0f} s] ABORT: {self.cap.aborted}", file=sys.stderr, flush=True)
                self.beat()
            elif now >= due:
                self.beat()
            if now >= due:
                due = now + self.every

    def beat(self) -> dict:
        h = self.srv.health(timeout=5.0)
        sent, done = self.cap.counts()
        b: dict[str, Any] = {"t_s": round(time.monotonic() - self.t0, 1), "health": bool(h), "sent": sent, "done": done,
                             "server_cpu_s": proc_cpu_s(self.srv.pid)}
        if h:
            d = _decode_delta(self.base, h)
            b.update(slots_busy=(h.get("slots") or {}).get("busy"), slots_total=(h.get("slots") or {}).get("total"),
                     queue=(h.get("queue") or {}).get("waiting"), decode_steps=d["steps"], decode_tokens=d["tokens"],
                     requests_done=h.get("requests_done"), prompt_cache=h.get("prompt_cache"))
        else:
            b["server_alive"] = self.srv.alive()
        if self.gpu:
            b["gpu"] = gpu_now()
        if self.progress:
            t, msg = self.progress[-1]
            b["last"] = f"{msg} (at {t:.0f} s)"
        self.beats.append(b)
        print(beat_line(self.label, b), file=sys.stderr, flush=True)
        return b


def thread_stacks() -> str:
    """Where every thread of this process is now (a run that timed out: what it waited on)."""
    import traceback
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame)[-8:]))
    return "\n".join(out)


def copy_log_tail(src: str | os.PathLike | None, dest: Path, lines: int = 400) -> list[str]:
    """The last `lines` lines of the server's log into `dest`; returns the last 40 (for the JSON)."""
    if not src:
        return []
    try:
        with open(src, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 512 * 1024))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError as e:
        return [f"(the server log {src} could not be read: {e})"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"# last {len(tail)} lines of {src}\n" + "\n".join(tail) + "\n")
    return tail[-40:]


def retokenized(srv, cap: Capture, role: str = "map") -> dict | None:
    """How many tokens the finished `role` answers count when tokenized again (the server's
    /extras/tokenize/count, as the summarizer counts them) against the tokens generated. A
    random model of the synthetic 248K vocabulary writes filler tokens like " w123456" that
    split into ~6-8 tokens each: its partial summaries then cannot fit the reduce."""
    with cap._lock:
        answers = [(r, t) for r, t in cap.answers if r["role"] == role and r.get("completion_tokens") and t]
    if not answers:
        return None
    gen = again = 0
    for r, t in answers[:8]:
        try:
            res = httpx.post(srv.root_url + "/extras/tokenize/count", json={"input": t}, headers=srv.headers(),
                             timeout=30)
            again += int(res.json()["count"])
            gen += int(r["completion_tokens"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None
    return {"answers": min(len(answers), 8), "generated_tokens": gen, "counted_again": again,
            "ratio": round(again / gen, 2) if gen else None}


def replan_error(msg: str, re_tok: dict | None, n_ctx: int, answer: int) -> str:
    """Why a replan makes the run meaningless, and the fix (`answer`: the map answers' limit)."""
    why = ("its reduce prompt did not fit the server's context (400 context_length_exceeded), so summarize() "
           "started the WHOLE summary again with a smaller plan (up to 5 times: every map phase again), which is "
           "not the summary this benchmark compares")
    if re_tok and re_tok.get("ratio"):
        ratio = re_tok["ratio"]
        fit = max(16, int((n_ctx - 256) / (2 * ratio + 1)))
        return (f"the summarizer re-planned ({msg}): {why}. The map answers' {re_tok['generated_tokens']} generated "
                f"tokens count {re_tok['counted_again']} when tokenized again ({ratio:.1f}x), so two partial summaries "
                f"of {answer} tokens need ~{int(2 * ratio * answer)} tokens of a {n_ctx}-token context. "
                f"Fix: --max-tokens {fit} or less (two answers x {ratio:.1f} must fit), or --allow-replan to let "
                f"it run")
    return f"the summarizer re-planned ({msg}): {why}. Fix: a smaller --max-tokens, or --allow-replan to let it run"


# ---- one run: a server, a summary ----------------------------------------------------------------
def _decode_delta(h0: dict, h1: dict) -> dict:
    """Sequences per llama_decode over the summary, from /health before and after it (its
    mean_sequences is rounded to 3 decimals: the difference is good to about that)."""
    d0, d1 = h0.get("decode") or {}, h1.get("decode") or {}
    steps = (d1.get("steps") or 0) - (d0.get("steps") or 0)
    seqs = ((d1.get("mean_sequences") or 0) * (d1.get("steps") or 0)
            - (d0.get("mean_sequences") or 0) * (d0.get("steps") or 0))
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


def run_summary(cfg: RunConfig, slots: int, text: str, a, extra: dict, language: str,
                rec: dict | None = None, *, stop_at: float | None = None, on_cap=None) -> dict:
    """Start the kit's server with `slots` slots, warm it up, summarize `text` once, stop it.

    `rec` (the caller's dict, filled in as the run goes) keeps what was measured whatever
    happens: the load, the server's log path, every request sent, the progress lines, the
    heartbeats, and on an error the server's /health and CPU time at that moment. Every chat
    request fails after a.request_timeout seconds of silence or a.request_deadline in all; the
    whole run after a.run_timeout seconds from the load, or at `stop_at` (time.monotonic()).
    `on_cap(capture)` hears of the run's Capture (a SIGTERM handler aborts it)."""
    import openai

    from qwenkit import summarize as S
    rec = {} if rec is None else rec
    rec.update(slots=slots, n_ctx_per_slot=cfg.n_ctx)
    label = f"{slots} slot{'s' if slots > 1 else ''}"
    progress: list[tuple[float, str]] = []
    rec["progress"] = progress
    t_load = time.monotonic()
    with bench.kit_server(cfg.replace(parallel=slots), ready_timeout=600) as srv:
        loaded = time.monotonic()
        rec["load_s"] = round(loaded - t_load, 1)
        rec["server_log_path"] = str(srv.log_path)
        print(f"  [{label}] server loaded in {rec['load_s']} s (pid {srv.pid}, log {srv.log_path})",
              file=sys.stderr, flush=True)
        rec["health_start"] = srv.health(timeout=5.0)
        prefixes = {"map": S.MAP_PROMPTS[language].split("{text}")[0],
                    "reduce": S.REDUCE_PROMPTS[language].split("{text}")[0],
                    "whole": S.WHOLE_PROMPTS[language].split("{text}")[0]}
        cap = Capture(extra, prefixes, request_deadline=a.request_deadline, read_timeout=a.request_timeout)
        rec["requests"] = cap.records          # the live list: what was sent stays recorded
        if on_cap is not None:
            on_cap(cap)
        deadline, why = None, ""
        if a.run_timeout:
            deadline = loaded + a.run_timeout
            why = f"run timeout: {a.run_timeout:g} s since the server loaded (--run-timeout)"
        if stop_at is not None and (deadline is None or stop_at < deadline):
            deadline, why = stop_at, f"--stop-at: {a.stop_at:g} s since the benchmark started"
        timeout = httpx.Timeout(a.request_timeout, connect=10.0)
        # an httpx (not httpx2) client: summarize() catches httpx's errors, ClientTimeout among them.
        # openai 3.x runs on httpx2 and annotates these two as httpx2's, yet takes httpx's as well
        # (its own check accepts "httpx.Client or httpx2.Client"); openai 1.x takes only httpx's.
        over_httpx: dict[str, Any] = {"timeout": timeout, "http_client": httpx.Client(transport=cap, timeout=timeout)}
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key or "not-needed", max_retries=0,
                               **over_httpx)
        hb = Heartbeat(srv, cap, rec["health_start"] or {}, progress, label=label, every=a.heartbeat,
                       deadline=deadline, deadline_reason=why, gpu=a.gpu)
        rec["heartbeats"] = hb.beats
        t0 = time.perf_counter()
        h0: dict = {}

        def on_progress(msg: str) -> None:
            t = round(time.perf_counter() - t0, 3)
            progress.append((t, msg))
            print(f"  [{label} +{t:.1f} s] {msg}", file=sys.stderr, flush=True)
            if REPLAN in msg and not a.allow_replan:
                answer = min(a.max_tokens, max(64, cfg.n_ctx // 4))  # the map answers' limit
                raise Replanned(replan_error(msg, retokenized(srv, cap), cfg.n_ctx, answer))

        try:
            with hb:
                client.chat.completions.create(  # warm-up
                    model=srv.alias, max_tokens=8, temperature=0.0, extra_body=S.NO_THINKING,
                    messages=[{"role": "user", "content": f"Warm-up for {slots} slot(s): say hello."}])
                rec["slots_seen_by_health"] = S.server_slots(client)
                cap.clear()
                h0 = srv.health(timeout=5.0)
                la0, cpu0 = os.getloadavg(), bench.cpu_seconds()
                t0 = time.perf_counter()
                cap.t0 = t0
                s = S.summarize(text, client, srv.alias, n_ctx=cfg.n_ctx, language=language, temperature=0.0,
                                max_tokens=a.max_tokens, loop_guard=a.loop_guard, on_progress=on_progress)
                outer = time.perf_counter() - t0
                cpu1, la1 = bench.cpu_seconds(), os.getloadavg()
                h1 = srv.health(timeout=5.0)
            rec["retokenized_map_answers"] = retokenized(srv, cap)
        except BaseException:
            hf = srv.health(timeout=5.0)
            rec.update(health_before=h0, health_at_error=hf, server_alive_at_error=srv.alive(),
                       server_cpu_s_at_error=proc_cpu_s(srv.pid), seconds_at_error=round(time.perf_counter() - t0, 3))
            if h0 and hf:
                rec["decode"] = _decode_delta(h0, hf)
            if cap.aborted:
                rec["aborted"] = cap.aborted
            if hb.stacks:
                rec["client_stacks"] = hb.stacks
            if "retokenized_map_answers" not in rec and hf:
                rec["retokenized_map_answers"] = retokenized(srv, cap)
            raise
        finally:
            client.close()
    calls = [{"role": c.role, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
              "seconds": round(c.seconds, 4),
              "first_token_s": None if c.first_token_s is None else round(c.first_token_s, 4),
              "decode_s": round(c.decode_s, 4), "finish_reason": c.finish_reason,
              "started_s": round(c.started - t0, 4)} for c in s.calls]
    width = next((int(m.group(2)) for _, msg in progress
                  for m in [re.search(r"summarizing (\d+) parts, (\d+) at once", msg)] if m), 1)
    srv_calls = [r for r in cap.records if r["role"] != "overhead"]

    def by_role(role: str) -> list[dict]:
        return [r for r in srv_calls if r["role"] == role]
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
                      "requests": len(srv_calls),
                      "requests_missing_usage": sum(1 for r in srv_calls if r.get("completion_tokens") is None)},
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
    same = all(n[k] == o[k] for n, o in per for k in ("chunks", "map_calls", "reduce_calls", "completion_tokens"))
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
    from multiturn import Vocab
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
                    "map answers get min(this, n_ctx/4) (default 1000 with --gpu, the summarizer's default; 96 on the "
                    "CPU)")
    ap.add_argument("--language", default="en", choices=["en", "ja"],
                    help="the sample text and the summarizer's prompts")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (each: both servers, the order alternating)")
    ap.add_argument("--threads", type=int, default=None, help="default 1 on the CPU (a shared 2-core machine), "
                    "all cores with --gpu")
    ap.add_argument("--no-eos-bias", action="store_true", help="let answers stop at an end-of-generation token")
    ap.add_argument("--loop-guard", action="store_true", help="the summarizer's loop guard on (it cuts a repeating "
                    "answer and asks once more at temperature 0.7: the two runs may then do different work)")
    ap.add_argument("--budget", type=float, default=None, help="seconds; no run starts past it, nor a round that "
                    "would end past it (default none)")
    ap.add_argument("--kv-unified", action=argparse.BooleanOptionalAction, default=None,
                    help="one KV pool shared by all slots (RunConfig.kv_unified; default: the server's, on with a GPU "
                    "build, off on a CPU build)")
    ap.add_argument("--prompt-cache-mib", type=int, default=None, help="the server's prompt cache budget "
                    "(RunConfig.prompt_cache_mib; default: the server's, 2048 with a GPU build, 512 on a CPU build)")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="seconds of silence after which one chat "
                    "request fails (httpx read timeout; a streamed answer sends an event per token) (default 120)")
    ap.add_argument("--request-deadline", type=float, default=900.0, help="seconds one chat request may take in "
                    "all (default 900)")
    ap.add_argument("--run-timeout", type=float, default=None, help="seconds one run (warm-up and summary) may "
                    "take after its server loaded; then every request fails and the run is recorded as an error "
                    "(default 600 with --gpu, none on the CPU)")
    ap.add_argument("--stop-at", type=float, default=None, help="seconds after the start: a run still going is "
                    "aborted, none starts later; set it below an outside time limit so that the JSON and the "
                    "server logs get written (default none)")
    ap.add_argument("--heartbeat", type=float, default=15.0, help="seconds between status lines while a run goes "
                    "on (default 15)")
    ap.add_argument("--allow-replan", action="store_true", help="let summarize() start over with a smaller plan when "
                    "a reduce prompt does not fit (default: the run stops with an error that says why)")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/summary_slots_cpu.json, or "
                    "summary_slots_<gpu>.json with --gpu)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    try:
        import openai  # noqa: F401 - the summarizer's client
    except ImportError:
        print("the openai package is missing (on a machine without internet: install its wheel and "
              "httpx2, httpcore2, jiter, distro, sniffio, truststore into /tmp/site)", file=sys.stderr)
        return 2
    tokens = a.tokens or (30000 if a.gpu else 3000)
    slots = a.slots or (8 if a.gpu else 4)
    n_ctx = a.n_ctx or (8192 if a.gpu else 1024)
    a.max_tokens = a.max_tokens or (1000 if a.gpu else 96)
    threads = a.threads or (default_threads() if a.gpu else 1)
    if a.run_timeout is None and a.gpu:
        a.run_timeout = 600.0
    server_opts = {"kv_unified": a.kv_unified, "prompt_cache_mib": a.prompt_cache_mib}
    if a.gpu:
        model = a.model or bench.synthetic_model(a.model_dir)
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_gpu_layers=-1, n_threads=threads, **server_opts)
    else:
        from qwenkit.models import default_model_path
        model = a.model or str(default_model_path())
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_threads=threads, **server_opts)
    out = Path(a.out or HERE / "results" / (f"summary_slots_{bench.gpu_slug()}.json" if a.gpu
                                            else "summary_slots_cpu.json"))
    extra = {} if a.no_eos_bias else {"logit_bias": bench.eog_bias(model)}

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
                watch={"request_timeout_s": a.request_timeout, "request_deadline_s": a.request_deadline,
                       "run_timeout_s": a.run_timeout, "stop_at_s": a.stop_at, "heartbeat_s": a.heartbeat,
                       "allow_replan": a.allow_replan},
                document={"tokens": doc_tokens, "chars": len(text), "parts": parts, "target_tokens": tokens,
                          "source": f"qwenkit/data/sample_{a.language}.txt, paragraphs and their sentences "
                                    "shuffled per part (seed 0)"},
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
    current: dict[str, Capture] = {}
    stop_at = None if a.stop_at is None else t_start + a.stop_at

    def on_term(signum, _frame):  # an outside time limit (timeout(1)): abort, record, write, then exit
        if "cap" in current:
            current["cap"].abort(f"terminated by signal {signum}")
        raise Terminated(f"terminated by signal {signum}")

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    last_s: dict[int, float] = {}
    try:
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
                if a.budget is not None and elapsed > a.budget or stop_at is not None and time.monotonic() >= stop_at:
                    over_budget = a.budget is not None and elapsed > a.budget
                    limit = f"budget {a.budget:.0f} s" if over_budget else f"--stop-at {a.stop_at:g} s"
                    skipped.append(f"round {k + 1}, {p} slot(s): {elapsed:.0f} s gone, {limit}")
                    print(f"== {skipped[-1]}", file=sys.stderr, flush=True)
                    continue
                print(f"== round {k + 1}, {p} slot(s): starting the server ({elapsed:.0f} s gone)", file=sys.stderr,
                      flush=True)
                t_run = time.monotonic()
                r: dict[str, Any] = {"round": k, "slots": p}
                runs.append(r)
                try:
                    run_summary(cfg, p, text, a, extra, a.language, r, stop_at=stop_at,
                                on_cap=lambda c: current.__setitem__("cap", c))
                except BaseException as e:  # recorded with what was measured; the other runs go on
                    record_error(r, e, out, k, p)
                    if not isinstance(e, Exception):
                        r["seconds"] = round(time.monotonic() - t_run, 1)
                        print(f"  round {k + 1}, {p} slot(s): STOPPED {r['error'][:300]}", file=sys.stderr, flush=True)
                        raise
                finally:
                    current.pop("cap", None)
                r["seconds"] = round(time.monotonic() - t_run, 1)
                last_s[p] = r["seconds"]
                if "error" in r:
                    print(f"  round {k + 1}, {p} slot(s): ERROR {r['error'][:600]}\n  (server log tail: "
                          f"{r.get('server_log_copy')})", file=sys.stderr, flush=True)
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
    except (Terminated, KeyboardInterrupt) as e:
        meta["stopped"] = f"{type(e).__name__}: {e}"
        save()
        print(f"\nSTOPPED ({meta['stopped']}); wrote {out} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    meta["machine_after"] = {"loadavg": list(os.getloadavg())}
    save()
    print(table(doc))
    print(f"\nwrote {out} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
    return 0


class Terminated(BaseException):
    """SIGTERM while the benchmark runs (an outside time limit)."""


def record_error(r: dict, e: BaseException, out: Path, k: int, slots: int) -> None:
    """A failed run's error in its record, with the last lines of the server's log copied next
    to `out` (<stem>.round<k>-<slots>slot.server.log) and the last 40 kept in the record."""
    err = f"{type(e).__name__}: {e}"
    if r.get("aborted") and r["aborted"] not in err:
        err = f"aborted ({r['aborted']}): {err}"
    r["error"] = err[:2000]
    log = r.get("server_log_path") or getattr(e, "log_path", None)  # a server that failed to start: its error's
    if log:
        r["server_log_path"] = str(log)
        dest = out.parent / f"{out.stem}.round{k + 1}-{slots}slot.server.log"
        r["server_log_tail"] = copy_log_tail(log, dest)
        r["server_log_copy"] = dest.name


if __name__ == "__main__":
    sys.exit(main())
