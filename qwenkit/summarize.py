"""Summarize long documents through any OpenAI-compatible server (the kit's own, by default).

    from qwenkit import summarize
    s = summarize.summarize(text, srv.client(), srv.alias, n_ctx=8192, on_token=print_piece)
    print(s.text); print(s)          # the summary, then a stats line

A document that does not fit the context is split at paragraph boundaries, then sentence
boundaries (Japanese 。！？ included), then, for a sentence longer than a chunk, at token
boundaries; every chunk is counted with the model's own tokenizer (the server's
`/extras/tokenize`) and fits n_ctx together with the prompt and the answer. Each chunk is
summarized (map), the partial summaries are combined (reduce), repeated while they do not fit.
The map requests go out as many at once as the server has slots (its `/health`), and every map
prompt starts with the same instructions (the chunk, then "part i of n"), so the server's prompt
cache prefills that prefix once.

Thinking models (Qwen3.5 thinks first by default) get `chat_template_kwargs={"enable_thinking":
false}`, and a `<think>...</think>` block that still comes is removed, in the stream too.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from qwenkit.errors import ContextOverflowError, DocumentError, ServerError
from qwenkit.loopguard import LoopGuard

if TYPE_CHECKING:
    import httpx

__all__ = ["MAP_PROMPTS", "MARGIN", "MAX_ROUNDS", "NO_THINKING", "PRESENCE_PENALTY", "REDUCE_PROMPTS",
           "RETRY_BELOW_WORDS", "RETRY_TEMPERATURE", "SYSTEM_PROMPTS", "WHOLE_PROMPTS", "Call", "DocumentError",
           "Summary", "ThinkFilter", "TokenCounter", "read_document", "server_slots", "split_spans", "strip_thinking",
           "summarize"]

SYSTEM_PROMPTS = {
    "ja": ("あなたは技術文書の要約を担当するアシスタントです。与えられた文書を日本語で簡潔に要約してください。"
           "数値、固有名詞、手順、設定値などの技術的な詳細は省略せずに残してください。"),
    "en": ("You are an assistant that summarizes technical documents. Summarize the given document "
           "concisely in English. Keep technical details such as numbers, names, steps and settings."),
}
# The chunk comes before "part i of n": every map request starts with the same system prompt and
# instructions, a prefix the server's prompt cache prefills once for all of them.
MAP_PROMPTS = {
    "ja": ("次の文書は長い文書の一部です。この部分を要約してください。\n\n{text}\n\n"
           "（以上は全{n}部のうち第{i}部です。）"),
    "en": ("The following is one part of a longer document. Summarize this part.\n\n{text}\n\n"
           "(This was part {i} of {n}.)"),
}
REDUCE_PROMPTS = {
    "ja": "次は一つの文書の各部分の要約です。これらを一つの要約にまとめてください。\n\n{text}",
    "en": "These are summaries of consecutive parts of one document. Combine them into one summary.\n\n{text}",
}
WHOLE_PROMPTS = {
    "ja": "次の文書を要約してください。\n\n{text}",
    "en": "Summarize the following document.\n\n{text}",
}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
# Qwen3.5-35B-A3B's model card, non-thinking general use: presence_penalty 1.5, repetition_penalty
# 1.0. On the small default model (English sample) no penalty looped on one sentence (12-16 %
# distinct words); with 1.5 runs varied from 50-79 % distinct to a loop again (a 135M model).
PRESENCE_PENALTY = 1.5
# An answer the loop guard stopped before this many words is asked for once more, warmer
# (a small model that loops early often writes a usable answer on a second, sampled try).
RETRY_BELOW_WORDS = 40
RETRY_TEMPERATURE = 0.7
MARGIN = 16            # tokens of slack per request (token merges at chunk joins, BOS)
MAX_ROUNDS = 6


_CUT_FIX = ("check that the server still runs (ServerProcess.alive(), .check(), .log_tail()); "
            "start it again if it died, then repeat the request")


# ---- results -----------------------------------------------------------------------------------
@dataclass
class Call:
    """One request: its prompt and answer sizes and timings."""
    role: str                    # "whole", "map", "reduce"
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_s: float | None
    decode_s: float
    finish_reason: str | None    # the server's; "loop" when the loop guard stopped the answer
    notice: str = ""             # the loop guard's one line, when it stopped this answer
    started: float = 0.0         # time.perf_counter() when the request was sent


@dataclass
class Summary:
    text: str
    seconds: float                       # wall time of the whole summary
    prompt_tokens: int                   # all requests together
    completion_tokens: int
    tok_per_s: float                     # decode speed: tokens after the first / time after the first
    chunks: int                          # parts the document was split into (1: it fit whole)
    first_token_s: float | None = None   # from the start until the final answer's first token
    truncated: bool = False              # some answer was cut by max_tokens
    rounds: int = 1                      # map + reduce rounds
    chunk_budget: int = 0                # tokens a chunk may hold
    chunk_tokens: list[int] = field(default_factory=list)
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)  # char offsets into the text
    calls: list[Call] = field(default_factory=list)

    @property
    def loops(self) -> int:
        """Answers the loop guard stopped (their repeats are left out of the text)."""
        return sum(1 for c in self.calls if c.finish_reason == "loop")

    def __str__(self) -> str:
        ft = f", first token {self.first_token_s:.1f} s" if self.first_token_s is not None else ""
        parts = f", {self.chunks} chunks, {self.rounds} rounds" if self.chunks > 1 else ""
        cut = ", CUT by max_tokens" if self.truncated else ""
        loops = f", {self.loops} answer(s) stopped by the loop guard" if self.loops else ""
        return (f"{self.seconds:.1f} s{ft}; {self.prompt_tokens} prompt + {self.completion_tokens} "
                f"completion tokens; decode {self.tok_per_s:.1f} tok/s{parts}{cut}{loops}")


# ---- token counting with the model's own tokenizer ----------------------------------------------
class TokenCounter:
    """Counts tokens through the server's `/extras/tokenize/count` (llama_cpp.server), so the
    model's own tokenizer decides; falls back to a conservative estimate elsewhere."""

    def __init__(self, client, model: str | None = None):
        self.model = model
        base = str(client.base_url).rstrip("/")
        self.root = base[:-3] if base.endswith("/v1") else base
        key = getattr(client, "api_key", None)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.exact = True
        self._http: httpx.Client | None = None
        self._bos: int | None = None
        self._count = lru_cache(maxsize=4096)(self._count_uncached)

    def _count_uncached(self, text: str) -> int:
        import httpx
        if self.exact:
            if self._http is None:
                self._http = httpx.Client(timeout=60, headers=self.headers)  # keep-alive: many small requests
            try:
                r = self._http.post(self.root + "/extras/tokenize/count", json={"input": text, "model": self.model})
                if r.status_code == 200:
                    return int(r.json()["count"])
                if r.status_code in (404, 405):
                    self.exact = False
                else:
                    raise ServerError(f"the server answered {r.status_code} to a tokenize request: {r.text[:200]}",
                                      "check the server log")
            except httpx.ConnectError as e:
                raise ServerError(f"no server answers at {self.root} ({e})",
                                  "start one: python -m qwenkit serve (or qwenkit.server.start(cfg))") from None
        # a conservative estimate: about 2.5 UTF-8 bytes per token (Japanese: 1.2 tokens per char)
        return max(1, int(len(text.encode("utf-8")) / 2.5) + 1)

    @property
    def bos(self) -> int:
        """Tokens the endpoint adds to any text (a BOS token)."""
        if self._bos is None:
            self._bos = self._count("") if self.exact else 0
        return self._bos

    def __call__(self, text: str) -> int:
        n = self._count(text)
        return max(0, n - self.bos) if self.exact else n


# ---- splitting ----------------------------------------------------------------------------------
_PARA = re.compile(r"\n[ \t\u3000]*\n\s*")
_SENT = re.compile(r"(?<=[。！？!?])\s*|(?<=[.;:])\s+|\n")


def _pieces(text: str, start: int, end: int, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Split text[start:end] after each match (the separator stays with the piece before it)."""
    out, s = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() <= s or m.end() >= end:
            continue
        out.append((s, m.end()))
        s = m.end()
    out.append((s, end))
    return [p for p in out if p[1] > p[0]]


def _hard_split(text: str, start: int, end: int, budget: int, count) -> list[tuple[int, int]]:
    """A run with no usable boundary: cut by characters, checked with the tokenizer."""
    out, s = [], start
    while s < end:
        lo, hi = s + 1, end
        while lo < hi:  # the longest prefix within the budget
            mid = (lo + hi + 1) // 2
            if count(text[s:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        out.append((s, lo))
        s = lo
    return out


def split_spans(text: str, budget: int, count: Callable[[str], int]) -> list[tuple[int, int]]:
    """Chunks of `text` as (start, end) character spans, each at most `budget` tokens by `count`,
    cut at paragraph, then sentence, then token boundaries; consecutive, covering all of the text."""
    if budget < 8:
        raise ContextOverflowError(f"a chunk budget of {budget} tokens is too small", "use a larger n_ctx")
    units: list[tuple[int, int]] = []

    def add(s: int, e: int, level: int) -> None:
        if count(text[s:e]) <= budget:
            units.append((s, e))
        elif level == 0:
            for a, b in _pieces(text, s, e, _SENT):
                add(a, b, 1)
        else:
            units.extend(_hard_split(text, s, e, budget, count))

    for s, e in _pieces(text, 0, len(text), _PARA):
        add(s, e, 0)
    # pack consecutive units while the real count of the packed text stays within the budget
    chunks: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None     # the chunk being packed, (start, end), and its count
    cur_n = 0
    for s, e in units:
        n = count(text[s:e])
        if cur is not None and cur_n + n + 1 <= budget and count(text[cur[0]:e]) <= budget:
            cur, cur_n = (cur[0], e), count(text[cur[0]:e])
        else:
            if cur is not None:
                chunks.append(cur)
            cur, cur_n = (s, e), n
    if cur is not None:
        chunks.append(cur)
    return chunks


# ---- <think> removal ----------------------------------------------------------------------------
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


def strip_thinking(text: str) -> str:
    """Remove <think>...</think> blocks (and an unclosed one at the end)."""
    return _THINK.sub("", text).lstrip() if "<think>" in text else text


class ThinkFilter:
    """Streaming version of strip_thinking: feed pieces, get back what may be shown."""
    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self):
        self.buf, self.inside, self.started = "", False, False

    def feed(self, piece: str) -> str:
        self.buf += piece
        out = []
        while self.buf:
            if self.inside:
                i = self.buf.find(self.CLOSE)
                if i < 0:
                    self.buf = self.buf[-(len(self.CLOSE) - 1):]
                    break
                self.buf, self.inside = self.buf[i + len(self.CLOSE):], False
                continue
            i = self.buf.find(self.OPEN)
            if i >= 0:
                out.append(self.buf[:i])
                self.buf, self.inside = self.buf[i + len(self.OPEN):], True
                continue
            keep = next((k for k in range(len(self.OPEN) - 1, 0, -1) if self.buf.endswith(self.OPEN[:k])), 0)
            out.append(self.buf[:len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep:]
            break
        text = "".join(out)
        if not self.started:  # drop the blank lines a removed block leaves at the start
            text = text.lstrip()
            self.started = bool(text)
        return text

    def flush(self) -> str:
        rest = "" if self.inside else self.buf
        self.buf = ""
        return rest


# ---- documents ----------------------------------------------------------------------------------
def read_document(path: str | Path) -> str:
    """Text of a document file, with a clear error for a missing, binary or empty one."""
    p = Path(path)
    if not p.is_file():
        raise DocumentError(f"{p} does not exist or is not a file", "check the path")
    data = p.read_bytes()
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{p} is not a text file (it holds binary data)",
                            "convert it to plain text first (e.g. pdftotext for a PDF)")
    for enc in ("utf-8-sig", "cp932"):
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise DocumentError(f"{p} is neither UTF-8 nor Shift_JIS text", "save it as UTF-8")
    if not text.strip():
        raise DocumentError(f"{p} is empty", "give a document with some text")
    return text


# ---- the requests -------------------------------------------------------------------------------
def _is_context_error(e: Exception) -> bool:
    """A 400 context_length_exceeded, or the same error sent inside a stream."""
    import openai
    if not isinstance(e, openai.APIError):
        return False
    if getattr(e, "code", None) == "context_length_exceeded":
        return True
    body = getattr(e, "body", None)
    if isinstance(body, dict) and (body.get("code") == "context_length_exceeded"
                                   or (body.get("error") or {}).get("code") == "context_length_exceeded"):
        return True
    return isinstance(e, openai.BadRequestError) and "context" in str(e).lower() and (
        "exceed" in str(e).lower() or "maximum" in str(e).lower())


class _Runner:
    def __init__(self, client, model, *, system, temperature, count, overhead, on_progress,
                 presence_penalty: float, language: str = "en", loop_guard: bool = True,
                 frequency_penalty: float = 0.0, seed: int | None = None):
        self.client, self.model, self.system = client, model, system
        self.temperature, self.count, self.overhead = temperature, count, overhead
        self.presence_penalty = presence_penalty
        self.language, self.loop_guard = language, loop_guard
        # sent only when set, so a server without them is asked exactly what it was before
        self.extra = {k: v for k, v in (("frequency_penalty", frequency_penalty), ("seed", seed)) if v}
        self.seed = seed
        self.on_progress = on_progress
        self.calls: list[Call] = []
        self.parallel = 1           # requests sent at once by _ask_all

    def prompt_tokens(self, user: str) -> int:
        return self.count(self.system) + self.count(user) + self.overhead

    def ask(self, user: str, max_tokens: int, role: str, on_token=None) -> tuple[str, Call, float | None]:
        """One streamed request (see _ask_stream); an answer the loop guard stopped early is
        asked for once more with RETRY_TEMPERATURE, and the longer of the two is kept."""
        text, call, first = self._ask_stream(user, max_tokens, role, on_token, self.temperature, None)
        if call.finish_reason != "loop" or len(text.split()) >= RETRY_BELOW_WORDS:
            return text, call, first
        self.on_progress(f"the loop guard kept only {len(text.split())} words: asking once more "
                         f"with temperature {RETRY_TEMPERATURE}")
        if on_token:
            on_token("\n\n")
        text2, call2, first2 = self._ask_stream(user, max_tokens, role, on_token, RETRY_TEMPERATURE,
                                                (self.seed or 0) + 1)
        return (text2, call2, first2) if len(text2.split()) > len(text.split()) else (text, call, first)

    def _ask_stream(self, user: str, max_tokens: int, role: str, on_token, temperature: float,
                    seed: int | None) -> tuple[str, Call, float | None]:
        """One streamed chat request; returns (answer without thinking, call stats, first-token time).
        A stream that ends without a finish_reason raises ServerError (it was cut, not finished).
        An answer that starts repeating itself is stopped by the loop guard: the stream is closed
        (the server stops generating), the repeat is left out and the notice goes to on_progress."""
        import httpx
        import openai
        t0 = time.perf_counter()
        first = last = None
        raw, finish = [], None
        flt = ThinkFilter()
        guard = LoopGuard.for_language(self.language) if self.loop_guard else None
        try:
            extra = dict(self.extra, **({"seed": seed} if seed is not None else {}))
            stream = self.client.chat.completions.create(
                model=self.model, temperature=temperature, max_tokens=max_tokens, stream=True,
                presence_penalty=self.presence_penalty, **extra,
                messages=[{"role": "system", "content": self.system}, {"role": "user", "content": user}],
                extra_body=NO_THINKING)
            for chunk in stream:
                if not chunk.choices:
                    continue
                ch = chunk.choices[0]
                piece = getattr(ch.delta, "content", None) or ""
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    raw.append(piece)
                    shown = flt.feed(piece)
                    if guard is not None:
                        shown = guard.feed(shown) if shown else ""
                    if on_token and shown:
                        on_token(shown)
                    if guard is not None and guard.looped:
                        stream.close()   # cancels the request: the server stops generating
                        finish = "loop"
                        break
                if ch.finish_reason:
                    finish = ch.finish_reason
        except openai.APIConnectionError as e:
            if raw:  # it answered, then the connection broke
                raise ServerError(f"the answer from {self.client.base_url} broke off after {len(raw)} pieces "
                                  f"({e.__cause__ or e})", _CUT_FIX) from None
            raise ServerError(f"no server answers at {self.client.base_url} ({e.__cause__ or e})",
                              "start one: python -m qwenkit serve (or qwenkit.server.start(cfg))") from None
        except openai.APIError as e:
            if _is_context_error(e):
                raise
            status = getattr(e, "status_code", None)
            raise ServerError(f"the server answered an error{f' ({status})' if status else ''}: {e.message}",
                              "read the server log (ServerProcess.log_tail())") from None
        except httpx.HTTPError as e:  # the connection broke while the answer streamed
            raise ServerError(f"the answer from {self.client.base_url} broke off after {len(raw)} pieces "
                              f"({type(e).__name__}: {e})", _CUT_FIX) from None
        if raw and finish is None:
            # a stream that stops without a finish_reason was cut (server killed, restarted or
            # out of memory, or a new request ended it): an error, never a short answer
            raise ServerError(f"the answer from {self.client.base_url} ended without a finish_reason "
                              f"after {len(raw)} pieces: the server stopped in the middle of it", _CUT_FIX)
        if not raw and finish is None:
            # a stream that ended with nothing: some servers lose an error inside a stream; ask
            # once more without streaming, which returns the error (or the answer) properly
            return self._ask_plain(user, max_tokens, role, on_token, t0)
        text = "".join(raw)
        notice = ""
        if finish == "loop" and guard is not None:
            answer = guard.text
            notice = guard.notice
            self.on_progress(notice)
        else:
            tail = flt.flush()
            if guard is not None:  # an answer cut by max_tokens ends at its last whole sentence
                tail = (guard.feed(tail) if tail else "") + guard.flush(whole_sentences=finish == "length")
            if on_token and tail:
                on_token(tail)
            answer = guard.text if guard is not None else strip_thinking(text)
        n_out = self.count(text) if text else 0
        n_out = max(n_out, 1) if text else 0
        end = time.perf_counter()
        call = Call(role=role, prompt_tokens=self.prompt_tokens(user), completion_tokens=n_out,
                    seconds=end - t0, first_token_s=(first - t0) if first else None,
                    decode_s=(last - first) if first and last else 0.0, finish_reason=finish,
                    notice=notice, started=t0)
        self.calls.append(call)
        return answer.strip(), call, first


    def _ask_plain(self, user, max_tokens, role, on_token, t0):
        import openai
        try:  # this call is already the second asking: no client retry on top (at most 3 submissions)
            r = self.client.with_options(max_retries=0).chat.completions.create(
                model=self.model, temperature=self.temperature, max_tokens=max_tokens,
                presence_penalty=self.presence_penalty, **self.extra,
                messages=[{"role": "system", "content": self.system}, {"role": "user", "content": user}],
                extra_body=NO_THINKING)
        except openai.APIError as e:
            if _is_context_error(e):
                raise
            raise ServerError(f"the server answered an error: {e.message}",
                              "read the server log (ServerProcess.log_tail())") from None
        end = time.perf_counter()
        raw = r.choices[0].message.content or "" if r.choices else ""
        text = strip_thinking(raw).strip()
        looped = ""
        if self.loop_guard and text:  # a whole answer at once: the guard can only cut it after the fact
            guard = LoopGuard.for_language(self.language)
            guard.feed(text)
            guard.flush()
            if guard.loop is not None:   # it looped
                text = guard.text
                looped = (f"loop guard: the answer repeated itself (\"{guard.loop.ngram[:60]}\" again); "
                          f"the repeat is left out")
                self.on_progress(looped)
        if on_token and text:
            on_token(text)
        usage = getattr(r, "usage", None)
        call = Call(role=role, prompt_tokens=getattr(usage, "prompt_tokens", None) or self.prompt_tokens(user),
                    completion_tokens=getattr(usage, "completion_tokens", None) or (self.count(raw) if raw else 0),
                    seconds=end - t0, first_token_s=None, decode_s=0.0,
                    finish_reason="loop" if looped else (r.choices[0].finish_reason if r.choices else None),
                    notice=looped, started=t0)
        self.calls.append(call)
        return text, call, end


def server_slots(client, timeout: float = 5.0) -> int:
    """Sequence slots of the server behind `client` (the kit's `GET /health` -> slots.total);
    1 for a server without /health or without slots in it."""
    import httpx
    base = str(client.base_url).rstrip("/")
    root = base[:-3] if base.endswith("/v1") else base
    key = getattr(client, "api_key", None)
    try:
        r = httpx.get(root + "/health", timeout=timeout,
                      headers={"Authorization": f"Bearer {key}"} if key else {})
        total = int(r.json()["slots"]["total"]) if r.status_code == 200 else 1
    except Exception:  # noqa: BLE001 - no /health, not JSON, no slots: one request at a time
        return 1
    return max(1, total)


def _ask_all(run: "_Runner", users: list[str], max_tokens: int, role: str, starting: list[str],
             say) -> list[str]:
    """Ask for each prompt in `users`, run.parallel at a time, and return the answers in order.

    Each request keeps its loop guard, retry and errors (run.ask); its progress lines (the
    `starting` line, the loop guard's) reach `say` on the calling thread, and its Call records
    join run.calls in the order of `users`. On an error the requests not yet sent are dropped,
    those in flight finish, and the error of the earliest failed prompt is raised."""
    width = min(run.parallel, len(users))
    if width <= 1:
        out = []
        for line, user in zip(starting, users, strict=True):
            say(line)
            out.append(run.ask(user, max_tokens, role)[0])
        return out
    lines: queue.Queue = queue.Queue()
    stop = threading.Event()
    calls: list[list[Call]] = [[] for _ in users]

    def one(k: int) -> str:
        if stop.is_set():
            raise _Skipped()
        lines.put(starting[k])
        sub = _Runner.__new__(_Runner)          # the same settings; its own calls and progress sink
        sub.__dict__.update(run.__dict__, calls=calls[k], on_progress=lines.put)
        try:
            return sub.ask(users[k], max_tokens, role)[0]
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(width, thread_name_prefix="summarize") as pool:
        futures = [pool.submit(one, k) for k in range(len(users))]
        try:
            while True:
                done = all(f.done() for f in futures)
                try:
                    while True:
                        say(lines.get(timeout=0 if done else 0.05))
                except queue.Empty:
                    pass
                if done:
                    break
        except BaseException:   # Ctrl-C or a progress callback that raised: send nothing more
            stop.set()
            raise
    for c in calls:
        run.calls.extend(c)
    errors = [e for f in futures if (e := f.exception()) is not None and not isinstance(e, _Skipped)]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


class _Skipped(Exception):
    """A request not sent because an earlier one failed."""


def _template_overhead(client, model, system: str, count) -> int:
    """Tokens the chat template adds around a system and a user message (measured once)."""
    import openai
    try:
        r = client.chat.completions.create(
            model=model, max_tokens=1, temperature=0.0, extra_body=NO_THINKING,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "x"}])
    except openai.APIConnectionError as e:
        raise ServerError(f"no server answers at {client.base_url} ({e.__cause__ or e})",
                          "start one: python -m qwenkit serve (or qwenkit.server.start(cfg))") from None
    except openai.APIStatusError as e:
        raise ServerError(f"the server answered an error ({e.status_code}): {e.message}",
                          "read the server log (ServerProcess.log_tail())") from None
    used = getattr(getattr(r, "usage", None), "prompt_tokens", None)
    if not used:
        return 64
    return max(0, used - count(system) - count("x")) + 4


def summarize(text: str, client, model: str, *, n_ctx: int, language: str = "ja",
              system_prompt: str | None = None, temperature: float = 0.2, max_tokens: int = 1000,
              presence_penalty: float = PRESENCE_PENALTY, frequency_penalty: float = 0.0,
              seed: int | None = None, loop_guard: bool = True, parallel: int | None = None,
              on_token: Callable[[str], None] | None = None,
              on_progress: Callable[[str], None] | None = None) -> Summary:
    """Summarize `text` through `client` (openai.OpenAI) and `model`, fitting n_ctx.

    presence_penalty: 1.5 by default, Qwen3.5's model card value for non-thinking use ("to
    reduce endless repetitions"); the server itself applies no repeat penalty (llama.cpp's default).

    loop_guard: stop an answer that starts repeating itself (qwenkit.loopguard): the request is
    cancelled, the repeat left out, and on_progress hears one line about it.

    parallel: how many map (and group-reduce) requests are sent at once; None asks the server's
    `/health` for its slots once (1 for a server without it). Partial summaries keep the
    document's order whatever order the answers finish in.

    on_token(piece) receives the final summary as it streams (thinking removed; with the loop
    guard, a few words behind the model, so that a repeat is never shown);
    on_progress(message) hears about the map and reduce steps and the loop guard."""
    if not isinstance(text, str):
        raise DocumentError(f"text must be a str, got {type(text).__name__}",
                            "read files with summarize.read_document(path)")
    if not text.strip():
        raise DocumentError("the document is empty", "give a document with some text")
    if language not in SYSTEM_PROMPTS:
        raise DocumentError(f"unknown language {language!r}", f"use one of {', '.join(SYSTEM_PROMPTS)}")
    if n_ctx < 128:
        raise ContextOverflowError(f"n_ctx={n_ctx} is too small to summarize anything", "use n_ctx >= 512")
    system = system_prompt or SYSTEM_PROMPTS[language]
    say = on_progress or (lambda _msg: None)
    t0 = time.perf_counter()
    count = TokenCounter(client, model)
    overhead = _template_overhead(client, model, system, count)
    run = _Runner(client, model, system=system, temperature=temperature, count=count,
                  overhead=overhead, on_progress=say, presence_penalty=presence_penalty,
                  language=language, loop_guard=loop_guard, frequency_penalty=frequency_penalty,
                  seed=seed)
    run.parallel = max(1, parallel) if parallel is not None else server_slots(client)
    plan_ctx = n_ctx
    for _attempt in range(5):
        try:
            return _summarize_once(text, run, language, plan_ctx, max_tokens, on_token, say, t0)
        except Exception as e:
            if not _is_context_error(e):
                raise
            real = _context_from_error(e)
            if real is not None and real >= plan_ctx:
                # the server holds what was planned: the plan itself made a prompt too long, and
                # a smaller plan would only ask for every part again
                raise ContextOverflowError(
                    f"a prompt did not fit the server's context of {real} tokens although the plan was for "
                    f"n_ctx={plan_ctx} ({e})", "use a smaller max_tokens, or report this") from None
            smaller = real if real and real < plan_ctx else int(plan_ctx * 0.7)
            say(f"the server's context is smaller than n_ctx={plan_ctx}: planning for {smaller}")
            plan_ctx = smaller
            if plan_ctx < 128:
                break
    raise ContextOverflowError(f"the server keeps refusing prompts as too long (n_ctx={n_ctx} given)",
                               "pass the server's real n_ctx (ServerProcess.n_ctx)")


def _context_from_error(e: Exception) -> int | None:
    """The server's context from its error: OpenAI's wording, or the kit's own server's."""
    m = re.search(r"maximum context length is (\d+)|a slot's context holds (\d+)", str(e))
    return int(m.group(1) or m.group(2)) if m else None


def _summarize_once(text: str, run: "_Runner", language: str, n_ctx: int, max_tokens: int,
                    on_token, say, t0: float) -> Summary:
    count = run.count
    first_call = len(run.calls)
    answer = min(max_tokens, max(64, n_ctx // 4))          # room kept for each answer
    fixed = count(run.system) + run.overhead + MARGIN

    def budget_for(template: str) -> int:
        return n_ctx - fixed - count(template.format(i=99, n=99, text="")) - answer

    def final_max(user: str) -> int:
        return max(1, min(max_tokens, n_ctx - run.prompt_tokens(user) - MARGIN))

    whole_budget = budget_for(WHOLE_PROMPTS[language])
    chunk_budget = budget_for(MAP_PROMPTS[language])
    if chunk_budget < 32:
        raise ContextOverflowError(
            f"n_ctx={n_ctx} leaves {chunk_budget} tokens for the document after the prompt "
            f"({fixed} tokens) and the answer ({answer})", "use a larger n_ctx or a smaller max_tokens")

    rounds = 1
    if count(text) <= whole_budget:
        budget, spans = whole_budget, [(0, len(text))]
        say("the document fits in one request")
        user = WHOLE_PROMPTS[language].format(text=text.strip())
        final, _, first_token_at = run.ask(user, final_max(user), "whole", on_token)
    else:
        budget = chunk_budget
        spans = split_spans(text, chunk_budget, count)
        partials = _map(run, text, spans, language, answer, say)
        final, first_token_at, rounds = _reduce(run, partials, language, chunk_budget, answer,
                                                final_max, on_token, say)
    end = time.perf_counter()
    calls = run.calls
    decode_tokens = sum(max(0, c.completion_tokens - 1) for c in calls if c.decode_s > 0)
    decode_s = sum(c.decode_s for c in calls)
    return Summary(
        text=final, seconds=end - t0,
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        tok_per_s=decode_tokens / decode_s if decode_s > 0 else 0.0,
        chunks=len(spans), first_token_s=(first_token_at - t0) if first_token_at else None,
        truncated=any(c.finish_reason == "length" for c in calls[first_call:]), rounds=rounds,
        chunk_budget=budget, chunk_tokens=[count(text[s:e]) for s, e in spans],
        chunk_spans=spans, calls=calls)


def _map(run: _Runner, text: str, spans, language: str, answer: int, say) -> list[str]:
    todo = [text[s:e].strip() for s, e in spans]
    n = len(todo)
    if run.parallel > 1 and n > 1:
        say(f"summarizing {n} parts, {min(run.parallel, n)} at once")
    users = [MAP_PROMPTS[language].format(i=i, n=n, text=piece) for i, piece in enumerate(todo, 1)]
    return _ask_all(run, users, answer, "map", [f"summarizing part {i}/{n}" for i in range(1, n + 1)], say)


def _reduce(run: _Runner, partials: list[str], language: str, chunk_budget: int, answer: int,
            final_max, on_token, say) -> tuple[str, float | None, int]:
    rounds = 1
    items = [p for p in partials if p] or partials
    template = REDUCE_PROMPTS[language]
    while True:
        joined = _join(items)
        if run.count(joined) <= chunk_budget or len(items) == 1 or rounds >= MAX_ROUNDS:
            if run.count(joined) > chunk_budget:  # the last round, or one partial too long: cut to fit
                share = max(8, chunk_budget // len(items) - 8)
                items = _clip_all(items, share, run.count, say)
                joined = _join(items)
            rounds += 1
            say(f"combining {len(items)} partial summaries")
            user = template.format(text=joined)
            final, _, first = run.ask(user, final_max(user), "reduce", on_token)
            return final, first, rounds
        # too long to combine at once: combine groups, then go round again
        groups = _group(items, chunk_budget, run.count)
        if len(groups) >= len(items):  # no progress possible by grouping: halve instead
            # every partial fills half the budget or more (an answer can count more tokens when
            # tokenized again than were generated): cut each so that two fit one request
            half = max(8, chunk_budget // 2 - 8)
            items = _clip_all(items, half, run.count, say)
            groups = [items[k:k + 2] for k in range(0, len(items), 2)]
        rounds += 1
        say(f"round {rounds}: combining {len(items)} summaries in {len(groups)} groups")
        items = _ask_all(run, [template.format(text=_join(g)) for g in groups], answer, "reduce",
                         [f"combining group {k}/{len(groups)}" for k in range(1, len(groups) + 1)], say)


def _clip_all(items: list[str], budget: int, count, say) -> list[str]:
    """Each partial cut to `budget` tokens; says how many were cut (a summary loses their ends)."""
    out = [_clip(t, budget, count) for t in items]
    cut = sum(a != b for a, b in zip(items, out, strict=True))
    if cut:
        say(f"{cut} partial summar{'y' if cut == 1 else 'ies'} longer than {budget} tokens cut to fit the context")
    return out


def _clip(text: str, budget: int, count) -> str:
    """`text` cut at its last paragraph, sentence or token boundary within `budget` tokens."""
    if count(text) <= budget:
        return text
    s, e = split_spans(text, budget, count)[0]
    return text[s:e].rstrip()


def _join(items: Iterable[str]) -> str:
    return "\n\n".join(f"[{k}] {t}" for k, t in enumerate(items, 1))


def _group(items: list[str], budget: int, count) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for t in items:
        if groups[-1] and count(_join(groups[-1] + [t])) > budget:
            groups.append([])
        groups[-1].append(t)
    return groups
