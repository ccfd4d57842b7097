"""A lean generation loop for a loaded `llama_cpp.Llama`: llama.cpp's own decode and sampler
through the low-level API, with O(1) Python work per token.

Why: llama-cpp-python's per-token path costs more than the model on small or fast models.
`Llama._create_completion` detokenizes ALL completion tokens again after every token (O(n^2)
ctypes calls), scans the whole text for stop strings, re-detokenizes for streaming, builds a
Python sampler object per request with a penalties stage even when penalties are off, and
`Llama.eval` copies the batch token by token in Python. None of it is needed for the common
request (no logprobs, no grammar, no custom logits processors).

Here, per token: one `llama_decode` of a 1-token batch (a reused ctypes array), a greedy
argmax on llama.cpp's logits buffer (numpy, no copy) or llama.cpp's native sampler chain
(top-k/top-p/min-p/temperature/penalties/logit bias, all in C), one `llama_token_to_piece`
into a reused buffer, an incremental UTF-8 decoder, and a stop-string check that looks only
at the new text plus a bounded tail.

    from qwenkit import fastgen
    fg = fastgen.FastGen(llm)                        # llm: a loaded Llama / QwenkitLlama
    for text in fg.stream_text(prompt_tokens, max_tokens=128):   # greedy by default
        print(text, end="")
    out = fg.create_completion("Once upon a time", max_tokens=64, temperature=0.7)

    fastgen.install(llm)   # llm.create_completion (and so create_chat_completion and
                           # llama_cpp.server) takes this path; unsupported options
                           # (logprobs, grammar, logits_processor, echo, suffix, mirostat,
                           # stopping_criteria, a prompt cache) fall back to the original.

The Llama object's own bookkeeping (`input_ids`, `n_tokens`) is kept up to date, so its own
prefix cache and `Llama.generate` keep working between fast and slow calls. Everything below
Llama's public API (its private attributes, the C API) goes through qwenkit.llama_api.

`Sampler` (llama.cpp's native chain built from sampling settings, or an argmax), `Detokenizer`
and `StopScanner` serve the kit's server too (qwenkit.serving.scheduler).
"""
from __future__ import annotations

import codecs
import ctypes
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Detokenizer",
    "FastGen",
    "Sampler",
    "StopScanner",
    "fast_path_supports",
    "install",
    "is_installed",
    "uninstall",
]


def _lc():
    from qwenkit.llama_api import C  # lazily: importing qwenkit must not need the compiled library
    return C


# ---- sampling ----------------------------------------------------------------------------------
class Sampler:
    """Token selection for one request (one sequence).

    Plain greedy (temperature 0, no logit bias, penalties, grammar or DRY): a numpy argmax over
    llama.cpp's logits buffer, no copy, no chain. Otherwise llama.cpp's native chain in
    llama-server's order: grammar, logit bias, penalties (only when set), DRY (only when set),
    then greedy (temperature 0), dist only (temperature < 0, as llama-cpp-python), or top-k,
    typical (only when != 1), top-p, min-p, temperature, dist(seed).

    `Sampler(llm, ...)` for a loaded Llama (its vocabulary size; penalties look back
    `llm.last_n_tokens_size` tokens unless penalty_last_n says otherwise), or
    `Sampler(n_vocab=N, vocab=v, ...)` for a context the caller owns (the server's)."""

    def __init__(self, llm=None, *, n_vocab: int | None = None, vocab=None, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                 repeat_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 penalty_last_n: int | None = None, seed: int | None = None,
                 logit_bias: dict[int, float] | None = None, grammar: str | None = None,
                 dry_multiplier: float = 0.0, dry_base: float = 1.75, dry_allowed_length: int = 2,
                 dry_penalty_last_n: int = -1, dry_sequence_breakers: Sequence[str] = ()):
        lc = _lc()
        self._lc = lc
        self.n_vocab = int(llm.n_vocab() if n_vocab is None else n_vocab)
        self.temperature = float(temperature)
        penalties = (repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0)
        self.argmax = (self.temperature == 0.0 and not penalties and not logit_bias and not grammar
                       and not dry_multiplier)
        self.chain = None
        self._history: list = []   # the stages that look back at earlier tokens (penalties, DRY)
        self._view: np.ndarray | None = None
        self._view_addr: int | None = 0
        if self.argmax:
            return
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())

        def add(s):
            lc.llama_sampler_chain_add(chain, s)

        if grammar:
            g = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not g:
                lc.llama_sampler_free(chain)
                raise ValueError("the grammar does not parse")
            add(g)
        if logit_bias:
            arr = (lc.llama_logit_bias * len(logit_bias))()
            for i, (tok, bias) in enumerate(logit_bias.items()):
                arr[i].token, arr[i].bias = int(tok), float(bias)
            add(lc.llama_sampler_init_logit_bias(self.n_vocab, len(logit_bias), arr))
        if penalties:
            last_n = int(penalty_last_n if penalty_last_n is not None else getattr(llm, "last_n_tokens_size", 64))
            self._history.append(lc.llama_sampler_init_penalties(
                self.n_vocab, last_n, float(repeat_penalty), float(frequency_penalty), float(presence_penalty)))
            add(self._history[-1])
        if dry_multiplier > 0:
            br = list(dry_sequence_breakers)
            self._breakers = (ctypes.c_char_p * len(br))(*[b.encode() for b in br])  # kept alive
            self._history.append(lc.llama_sampler_init_dry(vocab, float(dry_multiplier), float(dry_base),
                                                           int(dry_allowed_length), int(dry_penalty_last_n),
                                                           self._breakers, len(br)))
            add(self._history[-1])
        if self.temperature < 0.0:
            add(lc.llama_sampler_init_dist(_seed32(seed)))
        elif self.temperature == 0.0:
            add(lc.llama_sampler_init_greedy())
        else:
            add(lc.llama_sampler_init_top_k(int(top_k)))
            if typical_p != 1.0:
                add(lc.llama_sampler_init_typical(float(typical_p), 1))
            add(lc.llama_sampler_init_top_p(float(top_p), 1))
            add(lc.llama_sampler_init_min_p(float(min_p), 1))
            add(lc.llama_sampler_init_temp(self.temperature))
            add(lc.llama_sampler_init_dist(_seed32(seed)))
        self.chain = chain

    def sample(self, ctx, i: int = -1) -> int:
        """The next token from the logits of batch row i (-1: the last one), accepted into the chain."""
        if self.argmax:
            ptr = self._lc.llama_get_logits_ith(ctx, i)
            addr = ctypes.cast(ptr, ctypes.c_void_p).value
            view = self._view
            if view is None or addr != self._view_addr:  # llama.cpp may move its output buffer
                view = self._view = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
                self._view_addr = addr
            return int(view.argmax())
        return int(self._lc.llama_sampler_sample(self.chain, ctx, i))

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        """Feed prompt tokens to the stages with a history (penalties and DRY look at them, as in
        llama.cpp). Not to the whole chain: a grammar stage would take them for its own output
        and abort the process when they do not fit (llama.cpp's common_sampler keeps them apart too)."""
        accept = self._lc.llama_sampler_accept
        for stage in self._history:   # owned by the chain, alive while it is
            for t in tokens:
                accept(stage, int(t))

    def close(self) -> None:
        if self.chain is not None:
            self._history = []
            self._lc.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - best effort
            pass


def _seed32(seed: int | None) -> int:
    return int(seed if seed is not None else random.getrandbits(32)) & 0xFFFFFFFF


# ---- text ----------------------------------------------------------------------------------------
class Detokenizer:
    """Incremental token -> text: one token_to_piece per token, an incremental UTF-8 decoder
    (incomplete multi-byte characters wait for the next token), llama-cpp-python's rule of
    dropping the leading space after a BOS."""

    def __init__(self, vocab, special: bool = False):
        self._lc = _lc()
        self.vocab = vocab
        self.special = special
        self.size = 256
        self.buf = ctypes.create_string_buffer(self.size)
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def piece(self, token: int) -> bytes:
        n = self._lc.llama_token_to_piece(self.vocab, token, self.buf, self.size, 0, self.special)
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            self.size = -n + 16
            self.buf = ctypes.create_string_buffer(self.size)
            n = self._lc.llama_token_to_piece(self.vocab, token, self.buf, self.size, 0, self.special)
        return self.buf.raw[:n]

    def text(self, token: int) -> str:
        return self.dec.decode(self.piece(token))

    def flush(self) -> str:
        return self.dec.decode(b"", final=True)


class StopScanner:
    """Stop strings checked over the new text plus a tail shorter than the longest stop; text
    that could be the start of a stop string is held back until it cannot be."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.hit = False

    def push(self, text: str) -> str:
        """Add text; return what may be emitted now (everything before a stop, once found)."""
        if not self.stops:
            return text
        self.pending += text
        first = -1
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0 and (first < 0 or i < first):
                first = i
        if first >= 0:
            out, self.pending, self.hit = self.pending[:first], "", True
            return out
        hold = 0  # longest suffix of pending that is a prefix of a stop
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        if hold:
            out, self.pending = self.pending[:-hold], self.pending[-hold:]
        else:
            out, self.pending = self.pending, ""
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


# ---- the loop ------------------------------------------------------------------------------------
class FastGen:
    """The lean loop over one loaded Llama. Not thread-safe (neither is the Llama)."""

    def __init__(self, llm):
        from qwenkit import llama_api
        lc = _lc()
        self._lc = lc
        self._api = llama_api
        self.llm = llm
        self.ctx = llm.ctx
        self.vocab = llama_api.vocab(llm)
        self.n_vocab = int(llm.n_vocab())
        self.n_ctx = int(llm.n_ctx())
        self.n_batch = int(lc.llama_n_batch(self.ctx))
        self.mem = lc.llama_get_memory(self.ctx)
        self._one = (lc.llama_token * 1)()
        self.last_timings: dict[str, float] = {}

    # -- low level --
    def clear(self) -> None:
        """Empty the KV cache / recurrent state (and the Llama's bookkeeping)."""
        self._lc.llama_memory_clear(self.mem, True)
        self._api.set_evaluated(self.llm, 0)

    def _decode(self, tokens: Sequence[int]) -> None:
        lc = self._lc
        n0 = self._api.n_evaluated(self.llm)
        if len(tokens) == 1:
            self._one[0] = tokens[0]
            arr, n = self._one, 1
        else:
            arr, n = (lc.llama_token * len(tokens))(*tokens), len(tokens)
        for i in range(0, n, self.n_batch):
            m = min(self.n_batch, n - i)
            ptr = arr if i == 0 else ctypes.cast(ctypes.byref(arr, i * ctypes.sizeof(lc.llama_token)),
                                                   ctypes.POINTER(lc.llama_token))
            rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(ptr, m))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        self._api.record_evaluated(self.llm, n0, tokens)

    def prefill(self, tokens: Sequence[int], reuse_prefix: bool = True) -> int:
        """Make the context hold exactly `tokens` with fresh logits for the last one. Reuses the
        longest common prefix with what it already holds (as Llama.generate does; recurrent and
        hybrid models, whose state cannot be cut back, start over). Returns tokens decoded."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        llm = self.llm
        keep = 0
        if reuse_prefix and self._api.n_evaluated(llm) > 0:
            held = self._api.evaluated_tokens(llm)
            lim = min(len(held), len(tokens))
            eq = np.asarray(held[:lim]) == np.asarray(tokens[:lim], dtype=held.dtype)
            keep = int(lim if eq.all() else np.argmin(eq))
            keep = min(keep, len(tokens) - 1)  # the last token is decoded again for its logits
            if keep > 0 and not self._lc.llama_memory_seq_rm(self.mem, -1, keep, -1):
                keep = 0
        if keep == 0:
            self.clear()
        else:
            self._api.set_evaluated(llm, keep)
        self._decode(tokens[keep:])
        return len(tokens) - keep

    # -- token generator --
    def tokens(self, prompt: Sequence[int], max_tokens: int, sampler: Sampler | None = None, *,
               stop_at_eog: bool = True, reuse_prefix: bool = True) -> Iterator[int]:
        """Generated token ids (the end-of-generation token is not yielded). The context grows
        by the yielded tokens; generation ends at max_tokens, EOG or a full context."""
        lc, ctx, vocab = self._lc, self.ctx, self.vocab
        own = sampler is None
        sampler = sampler or Sampler(self.llm)
        try:
            t0 = time.perf_counter()
            self.prefill(prompt, reuse_prefix=reuse_prefix)
            t1 = time.perf_counter()
            self.last_timings = {"prompt_s": t1 - t0, "n_prompt": len(prompt), "n_gen": 0}
            room = self.n_ctx - self._api.n_evaluated(self.llm)
            n = 0
            while n < max_tokens:
                tok = sampler.sample(ctx)
                if stop_at_eog and lc.llama_vocab_is_eog(vocab, tok):
                    self.last_timings["eog"] = True
                    break
                n += 1
                self.last_timings["n_gen"] = n
                yield tok
                if n >= max_tokens or n >= room:
                    break
                self._decode((tok,))
            self.last_timings["gen_s"] = time.perf_counter() - t1
        finally:
            if own:
                sampler.close()

    def stream_text(self, prompt: Sequence[int], max_tokens: int, sampler: Sampler | None = None,
                    stop: Sequence[str] = (), **kw: Any) -> Iterator[str]:
        """Text pieces as they become final (stop strings removed, incomplete UTF-8 held)."""
        for text, _tok in self._pieces(prompt, max_tokens, sampler, stop, **kw):
            if text:
                yield text

    def _pieces(self, prompt, max_tokens, sampler, stop, **kw):
        det = Detokenizer(self.vocab)
        scan = StopScanner(stop)
        bos = self.llm.token_bos()
        first = True
        self.finish_reason = "length"
        for tok in self.tokens(prompt, max_tokens, sampler, **kw):
            text = det.text(tok)
            if first:
                first = False
                if tok == bos and text.startswith(" "):
                    text = text[1:]
            out = scan.push(text)
            yield out, tok
            if scan.hit:
                self.finish_reason = "stop"
                return
        if self.last_timings.get("eog"):
            self.finish_reason = "stop"
        tail = scan.push(det.flush())
        if scan.hit:
            self.finish_reason = "stop"
        yield tail + ("" if scan.hit else scan.flush()), None

    # -- llama-cpp-python compatible completion --
    def prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        """Tokenize exactly as Llama._create_completion does (BOS/CLS, EOS/SEP rules, special)."""
        llm = self.llm
        if isinstance(prompt, list):
            return list(prompt)
        model = self._api.internal_model(llm)
        bos, cls, sep = llm.token_bos(), model.token_cls(), model.token_sep()
        bos_tokens = [cls if cls != -1 else bos]
        eos_tokens = [sep if sep != -1 else llm.token_eos()]
        if not model.add_bos_token() or bos_tokens[:1] == [-1]:
            bos_tokens = []
        if not model.add_eos_token() and sep == -1:
            eos_tokens = []
        body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return bos_tokens + body + eos_tokens

    def create_completion(self, prompt: str | list[int], max_tokens: int | None = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                          typical_p: float = 1.0, stop: str | list[str] | None = None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, model: str | None = None,
                          logit_bias: dict | None = None, **_ignored: Any):
        """`Llama.create_completion` for the options this path supports, with the same
        response and stream-chunk shapes (and the same context-overflow error text)."""
        llm = self.llm
        prompt_tokens = self.prompt_tokens(prompt)
        if len(prompt_tokens) >= self.n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {self.n_ctx}")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = self.n_ctx - len(prompt_tokens)
        max_tokens = min(max_tokens, self.n_ctx - len(prompt_tokens))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if seed is not None:
            llm.set_seed(seed)
        else:
            # llama-cpp-python's own rule for the next seed (a sampling seed, not a secret)
            llm.set_seed(random.Random(self._api.seed(llm)).randint(0, 2**32))  # noqa: S311
        bias = {int(k): float(v) for k, v in logit_bias.items()} if logit_bias else None
        sampler = Sampler(llm, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          typical_p=typical_p, repeat_penalty=repeat_penalty,
                          frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                          seed=self._api.seed(llm), logit_bias=bias)
        cid, created = f"cmpl-{uuid.uuid4()}", int(time.time())
        name = model if model is not None else llm.model_path
        gen = self._pieces(prompt_tokens, max_tokens, sampler, stops)

        def chunk(text, finish):
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if stream:
            def chunks():
                try:
                    for text, _tok in gen:
                        if text:
                            yield chunk(text, None)
                    yield chunk("", self.finish_reason)
                finally:
                    gen.close()
                    sampler.close()
            return chunks()
        try:
            parts, n_gen = [], 0
            for text, tok in gen:
                parts.append(text)
                n_gen += tok is not None
        finally:
            sampler.close()
        out = chunk("".join(parts), self.finish_reason)
        out["usage"] = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n_gen,
                        "total_tokens": len(prompt_tokens) + n_gen}
        return out


# ---- drop-in for Llama.create_completion ---------------------------------------------------------
_FALLBACK_IF_SET = ("suffix", "logprobs", "stopping_criteria", "logits_processor", "grammar")


def fast_path_supports(llm, kwargs: dict) -> bool:
    """True when a create_completion call can take the fast path (else: the original)."""
    if any(kwargs.get(k) is not None for k in _FALLBACK_IF_SET):
        return False
    if kwargs.get("echo") or kwargs.get("mirostat_mode", 0):
        return False
    if getattr(llm, "cache", None) is not None or getattr(llm, "draft_model", None) is not None:
        return False
    from qwenkit.llama_api import logits_all
    if logits_all(llm):
        return False  # the original fills llm.scores for callers that read it
    p = kwargs.get("prompt", "")
    return bool(p)


def install(llm) -> Any:
    """Route `llm.create_completion` (which create_chat_completion and llama_cpp.server call)
    through the fast path; anything it does not support goes to the original method. Returns llm."""
    if is_installed(llm):
        return llm
    original = llm.create_completion
    fg = FastGen(llm)

    def create_completion(prompt, *args, **kwargs):
        if args:  # positional use beyond the prompt: leave it to the original signature
            return original(prompt, *args, **kwargs)
        kw = dict(kwargs, prompt=prompt)
        if not fast_path_supports(llm, kw):
            return original(prompt, **kwargs)
        return fg.create_completion(**kw)

    create_completion.__qwenkit_fast__ = original  # type: ignore[attr-defined]
    create_completion.__doc__ = original.__doc__
    llm.create_completion = create_completion
    llm._qwenkit_fastgen = fg
    return llm


def is_installed(llm) -> bool:
    return hasattr(llm.__dict__.get("create_completion"), "__qwenkit_fast__")


def uninstall(llm) -> None:
    f = llm.__dict__.get("create_completion")
    if f is not None and hasattr(f, "__qwenkit_fast__"):
        del llm.__dict__["create_completion"]
        llm.__dict__.pop("_qwenkit_fastgen", None)
