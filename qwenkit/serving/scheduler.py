"""Continuous batching over one llama.cpp context: N sequence slots, a bounded queue.

One thread owns the context. Each step is ONE `llama_decode` whose batch holds the next
token of every generating slot plus a chunk of a waiting prompt (as much as the batch has
room for), so a long prompt delays the running streams by at most one chunk, and a new
request starts while others stream. After the decode every slot whose logits came out
samples from its own row with its own sampler, stop strings and limits.

The scheduler knows nothing of HTTP: a request carries a `sink` (any callable taking one
event), and the same scheduler serves in-kernel batch calls (`generate_many`).

Events a sink receives, in order: ("text", str) and, when asked, ("logprobs", dict) any
number of times, then exactly one of
("end", Result) or ("error", SchedulerError). A cancelled request gets ("end", Result) with
finish_reason "cancelled" if it had started, and nothing more.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from qwenkit.errors import QueueFull, SchedulerError
from qwenkit.fastgen import Detokenizer, StopScanner
from qwenkit.serving.prompt_cache import MIN_COPY_TOKENS, PromptCache, common_prefix
from qwenkit.serving.sampling import SamplingParams, SlotSampler
from qwenkit.units import MiB

__all__ = ["DEFAULT_CACHE_BYTES", "QueueFull", "Request", "Result", "Scheduler", "SchedulerError"]

DEFAULT_CACHE_BYTES = 512 * MiB
_SHUTTING_DOWN_FIX = "retry in a few seconds, once the server has started again"
_MODEL_FAILED_FIX = "restart the server; its log says why the model failed"


@dataclass
class Result:
    finish_reason: str                 # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int                 # prompt tokens reused from the slot's previous request
    ttft_s: float | None = None        # submit -> first token
    total_s: float = 0.0
    tokens: list[int] = field(default_factory=list)  # the generated token ids (EOG not included)


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    sink: Callable[[tuple], None] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    top_logprobs: int = 0              # > 0: ("logprobs", info) events for each generated token
    # a conversation likely to come back (a chat): checkpoint its prompt and park it in host RAM
    # when another takes its slot. One-off prompts (/v1/completions) skip both: each costs a
    # copy of the recurrent state (63 MiB on Qwen3.5) that nothing would use
    conversation: bool = True
    # prompt positions where its user messages begin (ServedModel.turn_starts): more
    # checkpoints for a recurrent model, where another request is likely to part from this one
    marks: Sequence[int] = ()
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """From any thread: the scheduler drops it at its next step and frees the slot."""
        self.cancelled = True


@dataclass(eq=False)
class _Run:
    """The request a slot serves and what decodes it: made together in `_start`, dropped
    together in `_release`, so one None check tells that all four are there."""
    req: Request
    sampler: SlotSampler
    detok: Detokenizer
    scan: StopScanner


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.run: _Run | None = None       # None while the slot is idle
        self.cached: list[int] = []        # tokens decoded into this sequence, in order
        self.todo: list[int] = []          # prompt tokens still to decode
        self.next_token: int | None = None  # sampled, to decode in the next step
        self.n_gen = 0
        self.gen: list[int] = []
        self.n_cached = 0
        self.batch_i = -1
        self.t_first: float | None = None
        self.order = 0
        self.plan: list[int] = []          # prompt positions where a checkpoint is taken
        self.prefilled = 0                 # cached[:prefilled] were decoded as a prompt
        self.conversation = False          # the state belongs to a chat worth parking
        # (leader slot, its request, tokens): this prompt's first `tokens` are being prefilled
        # by the leader; they are copied from it once there, instead of prefilled twice
        self.wait: tuple[_Slot, Request, int] | None = None

    @property
    def busy(self) -> bool:
        return self.run is not None


class Scheduler:
    """`Scheduler(model, queue_limit=4 * model.slots)`; `submit(Request)`; `close()`."""

    def __init__(self, model, *, queue_limit: int | None = None, chunk: int | None = None,
                 cache_bytes: int | None = None, reuse: bool = True):
        from qwenkit.llama_api import C as lc
        self._lc = lc
        self.model = model
        self.slots = [_Slot(i) for i in range(model.slots)]
        self.queue_limit = 4 * model.slots if queue_limit is None else int(queue_limit)
        self.chunk = int(chunk or model.n_batch)
        self._waiting: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._order = itertools.count()
        self._batch = lc.llama_batch_init(model.n_batch, 0, 1)
        self._n_batch = model.n_batch
        self.cache = PromptCache(model, DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
        self.reuse = reuse   # False: every prompt is prefilled from its first token (a reference)
        # counters for /health and the status file
        self.steps = 0
        self.seqs_decoded = 0            # sum over steps of the sequences in the batch
        self.max_seqs = 0
        self.tokens_decoded = 0
        self.requests_done = 0
        self.failed: BaseException | None = None
        self._starting: Request | None = None   # between the queue and a slot (for errors)
        self._thread = threading.Thread(target=self._run, name="qwenkit-scheduler", daemon=True)
        self._thread.start()

    # ---- public ----
    def submit(self, req: Request) -> Request:
        self.submit_all([req])
        return req

    def submit_all(self, reqs: Sequence[Request]) -> None:
        """Queue requests together (the n choices of one call): all or none, and the loop takes
        them in one step, so they start side by side whatever the timing."""
        for req in reqs:
            self._check(req)
        with self._cv:
            if self._closing:
                raise SchedulerError("the server is shutting down", _SHUTTING_DOWN_FIX, status=503,
                                     code="shutting_down", retry_after=5)
            if self.failed is not None:
                raise SchedulerError("the model failed (see the server log)", _MODEL_FAILED_FIX, status=500,
                                     code="model_failed")
            if len(self._waiting) + len(reqs) > max(self.queue_limit, len(reqs)):  # n > limit: alone
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests "
                                "wait already", "retry in a few seconds, or serve with more slots (parallel) "
                                "or a longer queue (queue_limit)", status=503, code="queue_full", retry_after=5)
            self._waiting.extend(reqs)
            self._cv.notify()

    def _check(self, req: Request) -> None:
        n = len(req.prompt)
        if n == 0:
            raise SchedulerError("the prompt is empty", "send at least one token", status=400, code="empty_prompt")
        if n >= self.model.n_ctx_slot:
            raise SchedulerError(
                f"the prompt has {n} tokens; a slot's context holds {self.model.n_ctx_slot} "
                "(prompt and answer together)",
                "shorten the prompt, or serve with a larger n_ctx (the context of each slot)",
                status=400, code="context_length_exceeded")
        if req.max_tokens < 1:
            raise SchedulerError(f"max_tokens={req.max_tokens} must be at least 1", "ask for 1 or more tokens",
                                 status=400, code="invalid_value")

    def cancel(self, req: Request) -> None:
        req.cancel()
        with self._cv:
            self._cv.notify()

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stats(self) -> dict[str, Any]:
        steps = self.steps or 1
        return {"slots": {"total": len(self.slots), "busy": self.busy, "idle": len(self.slots) - self.busy},
                "queue": {"waiting": self.waiting, "limit": self.queue_limit},
                "decode": {"steps": self.steps, "mean_sequences": round(self.seqs_decoded / steps, 3),
                           "max_sequences": self.max_seqs, "tokens": self.tokens_decoded},
                "prompt_cache": self.cache.stats(),
                "requests_done": self.requests_done}

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive() and self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None

    # ---- in-kernel use ----
    def generate_many(self, prompts: Sequence[list[int]], max_tokens: int,
                      sampling: SamplingParams | None = None, stop: Sequence[str] = ()) -> list[tuple[str, Result]]:
        """Run several prompts at once (as many in parallel as there are slots); returns
        (text, Result) per prompt, in order. Blocks; raises the first request's error."""
        done = threading.Semaphore(0)
        outs: list[dict] = [{"text": [], "end": None, "err": None} for _ in prompts]

        def sink_for(o):
            def sink(ev):
                if ev[0] == "text":
                    o["text"].append(ev[1])
                else:
                    o["end" if ev[0] == "end" else "err"] = ev[1]
                    done.release()
            return sink

        sp = sampling or SamplingParams(temperature=0.0)
        pending = list(enumerate(prompts))
        in_flight = 0
        while pending or in_flight:
            while pending:
                i, p = pending[0]
                try:
                    self.submit(Request(list(p), max_tokens, sp, stop, sink_for(outs[i])))
                except QueueFull:
                    break
                pending.pop(0)
                in_flight += 1
            done.acquire()
            in_flight -= 1
        for o in outs:
            if o["err"] is not None:
                raise o["err"]
        return [("".join(o["text"]), o["end"]) for o in outs]

    # ---- the loop ----
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self._waiting and not any(s.busy for s in self.slots):
                        self._cv.wait()
                    if self._closing:
                        break
                self._drop_cancelled()
                self._admit()
                self._step()
        except BaseException as e:  # noqa: BLE001 - every request learns of it
            self.failed = e
            import traceback
            traceback.print_exc()
            err = SchedulerError(f"the model failed: {type(e).__name__} (see the server log)", _MODEL_FAILED_FIX,
                                 status=500, code="model_failed")
            if self._starting is not None:  # taken from the queue, not yet in a slot
                self._emit(self._starting, ("error", err))
            for s in self.slots:
                if s.run is not None:
                    self._emit(s.run.req, ("error", err))
                    self._release(s)
        finally:
            with self._cv:
                pending = list(self._waiting)
                self._waiting.clear()
            err = SchedulerError("the server is shutting down", _SHUTTING_DOWN_FIX, status=503, code="shutting_down",
                                 retry_after=5)
            for r in pending:
                self._emit(r, ("error", err))
            for s in self.slots:
                if s.run is not None:
                    self._emit(s.run.req, ("error", err))
                    self._release(s)

    @staticmethod
    def _emit(req: Request, event: tuple) -> None:
        if req.sink is not None:
            try:
                req.sink(event)
            except Exception:  # noqa: BLE001 - a broken consumer must not stop the scheduler
                import traceback
                traceback.print_exc()
                req.cancelled = True

    def _drop_cancelled(self) -> None:
        with self._cv:
            if any(r.cancelled for r in self._waiting):
                self._waiting = collections.deque(r for r in self._waiting if not r.cancelled)
        for s in self.slots:
            if s.run is not None and s.run.req.cancelled:
                self._finish(s, s.run, "cancelled")

    def _admit(self) -> None:
        free = [s for s in self.slots if not s.busy]
        while free:
            with self._cv:
                if not self._waiting:
                    return
                req = self._waiting.popleft()
            self._starting = req
            self._start(free, req)
            self._starting = None

    def _start(self, free: list[_Slot], req: Request) -> None:
        """Put req into the free slot that can reuse most of its prompt (its own state, a
        checkpoint, or a conversation parked in host RAM)."""
        cache, prompt = self.cache, req.prompt
        reuse = {s.seq: cache.reusable(s.cached, s.seq, prompt, s.prefilled) if self.reuse else 0 for s in free}
        slot = max(free, key=lambda s: (reuse[s.seq], -len(s.cached)))
        empty = [s for s in free if not s.cached]
        if empty and slot.cached and reuse[slot.seq] < min(slot.prefilled, len(slot.cached)) - 8:
            # the request does not continue that slot's chat, it only shares a prefix with it (a
            # system prompt): an empty slot costs that prefix once and displaces nobody
            slot = empty[0]
        keep = reuse[slot.seq]
        parked, parked_keep = cache.best_parked(prompt) if self.reuse else (None, 0)
        unparked = False
        if parked is not None and parked_keep > keep:
            unparked = True
            slot = min(free, key=lambda s: reuse[s.seq])   # the slot whose state helps least
            # take it out of the cache first: parking the slot's own chat may evict to fit the
            # budget, and the least recently used entry can be this one
            cache.take(parked)
            self._park_if_other(slot, reuse[slot.seq])
            ok = cache.unpark(parked, slot.seq)
            slot.cached, slot.prefilled = (list(parked.tokens), parked.prefilled) if ok else ([], 0)
            keep = cache.reusable(slot.cached, slot.seq, prompt, slot.prefilled)
        else:
            self._park_if_other(slot, keep)
        free.remove(slot)
        # another slot holds more of this prompt (a shared system prompt): copy, not prefill; never
        # over a conversation just brought back from host RAM (it left the cache for this slot)
        donor, got = self._donor(slot, prompt) if self.reuse and not unparked else (None, 0)
        if donor is not None and got >= keep + MIN_COPY_TOKENS:
            keep = self._copy_into(slot, donor, got)
        else:
            keep = cache.rewind(slot.seq, slot.cached, keep)
            slot.cached = slot.cached[:keep]
        slot.plan = cache.checkpoint_positions(keep, len(prompt), req.marks) if req.conversation else []
        slot.conversation = req.conversation
        slot.prefilled = len(prompt)  # once its prefill is done (a cancelled one is cut below)
        slot.todo = list(req.prompt[keep:])
        slot.n_cached = keep
        slot.next_token = None
        sampler = SlotSampler(self.model.n_vocab, req.sampling, self.model.vocab)
        sampler.accept_prompt(req.prompt)
        slot.run = _Run(req, sampler, Detokenizer(self.model.vocab), StopScanner(list(req.stop)))
        slot.n_gen = 0
        slot.gen = []
        slot.t_first = None
        slot.order = next(self._order)
        slot.wait = None
        lead, shared = self._leader(slot, prompt, keep) if self.reuse else (None, 0)
        if lead is not None and lead.run is not None:
            slot.wait, slot.todo = (lead, lead.run.req, shared), []
            if cache.recurrent and shared not in lead.plan:   # the copy needs the state there
                lead.plan = sorted({*lead.plan, shared})

    def _donor(self, slot: _Slot, prompt: list[int]) -> tuple[_Slot | None, int]:
        """The other slot (busy or idle) from which most of `prompt` can be copied."""
        best, got = None, 0
        for s in self.slots:
            if s is not slot and s.cached:
                n = self.cache.reusable(s.cached, s.seq, prompt, s.prefilled)
                if n > got:
                    best, got = s, n
        return best, got

    def _leader(self, slot: _Slot, prompt: list[int], keep: int) -> tuple[_Slot | None, int]:
        """A slot still prefilling a prompt that shares a long prefix with `prompt` (requests
        sent at once: the n chats of one assistant, a summary's map requests): this one waits
        for that prefix and copies it rather than prefill it beside the leader."""
        if self.cache.recurrent and self.cache.budget <= 0:
            return None, 0
        best, got = None, 0
        for s in self.slots:
            if s is slot or s.run is None or not s.todo or s.wait is not None:
                continue
            shared = min(common_prefix(s.run.req.prompt, prompt), len(prompt) - 1)
            if shared > len(s.cached) and shared >= keep + MIN_COPY_TOKENS and shared > got:
                best, got = s, shared
        return best, got

    def _resolve_waits(self) -> None:
        """Slots waiting for a leader's prefix: copy it once the leader holds it (or has
        stopped: then take what it holds, or prefill from the slot's own state)."""
        for s in self.slots:
            if s.wait is None or s.run is None:
                continue
            lead, req, shared = s.wait
            if lead.run is not None and lead.run.req is req and len(lead.cached) < shared:
                continue
            s.wait = None
            got = self.cache.reusable(lead.cached, lead.seq, s.run.req.prompt, lead.prefilled) if lead.cached else 0
            if got >= len(s.cached) + MIN_COPY_TOKENS:
                s.n_cached = self._copy_into(s, lead, got)
            s.todo = list(s.run.req.prompt[len(s.cached):])

    def _copy_into(self, slot: _Slot, donor: _Slot, n: int) -> int:
        """Make `slot` hold the donor's first n tokens (a copy; the donor keeps its own)."""
        keep = self.cache.copy(donor.seq, donor.cached, slot.seq, n)
        slot.cached = donor.cached[:keep]
        return keep

    def _park_if_other(self, slot: _Slot, keep: int) -> None:
        """Another conversation is taking this slot: keep the old one's state in host RAM."""
        if slot.conversation and len(slot.cached) - keep >= 32 and keep < len(slot.cached) // 2:
            self.cache.park(slot.seq, slot.cached, min(slot.prefilled, len(slot.cached)))

    def _step(self) -> None:
        self._resolve_waits()
        lc, b = self._lc, self._batch
        n = 0
        seqs = 0
        gen = [(s, s.run, s.next_token) for s in self.slots if s.run is not None and s.next_token is not None]
        for s, _, tok in gen:
            self._put(n, tok, len(s.cached), s.seq, True)
            s.cached.append(tok)
            s.next_token = None
            s.batch_i = n
            n += 1
        seqs = len(gen)
        budget = min(self.chunk, self._n_batch - n)
        filling = sorted(((s, s.run) for s in self.slots if s.run is not None and s.todo), key=lambda sr: sr[0].order)
        sampled = [(s, run) for s, run, _ in gen]
        for s, run in filling:
            if budget <= 0:
                break
            room = budget
            nxt = next((p for p in s.plan if p > len(s.cached)), None)
            if nxt is not None:  # stop the chunk where a checkpoint is due
                room = min(room, nxt - len(s.cached))
            take = s.todo[:room]
            del s.todo[:len(take)]
            pos0 = len(s.cached)
            last = not s.todo
            for j, tok in enumerate(take):
                self._put(n, tok, pos0 + j, s.seq, last and j == len(take) - 1)
                n += 1
            s.cached.extend(take)
            budget -= len(take)
            seqs += 1
            if last:
                s.batch_i = n - 1
                sampled.append((s, run))
        if n == 0:
            return
        b.n_tokens = n
        rc = lc.llama_decode(self.model.ctx, b)
        self.steps += 1
        self.seqs_decoded += seqs
        self.max_seqs = max(self.max_seqs, seqs)
        self.tokens_decoded += n
        if rc != 0:
            self._decode_failed(rc, [(s, s.run) for s in self.slots if s.run is not None])
            return
        for s, _ in filling:
            if s.plan and len(s.cached) in s.plan:
                self.cache.save(s.seq, len(s.cached))
                s.plan = [p for p in s.plan if p > len(s.cached)]
        for s, run in sampled:
            self._sample(s, run)

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _decode_failed(self, rc: int, busy: list[tuple[_Slot, _Run]]) -> None:
        err = SchedulerError(f"llama_decode returned {rc} (no room in the KV cache or a compute failure); "
                             "the request was stopped",
                             "send it again; if it fails again, serve with fewer slots or a smaller n_ctx "
                             "(the server's log has llama.cpp's reason)", status=500, code="decode_failed")
        for s, run in busy:
            self._release(s)
            self.cache.rewind(s.seq, s.cached, 0)
            s.cached = []
            self._emit(run.req, ("error", err))

    def _sample(self, s: _Slot, run: _Run) -> None:
        req, scan = run.req, run.scan
        tok = run.sampler.sample(self.model.ctx, s.batch_i)
        if s.t_first is None:
            s.t_first = time.perf_counter()
        if self.model.is_eog(tok):
            self._finish(s, run, "stop")
            return
        s.n_gen += 1
        s.gen.append(tok)
        if req.top_logprobs:
            self._emit(req, ("logprobs", self._logprobs(s.batch_i, tok, req.top_logprobs, req.sampling.logit_bias)))
        text = scan.push(run.detok.text(tok))
        if text:
            self._emit(req, ("text", text))
        if scan.hit:
            self._finish(s, run, "stop")
        elif s.n_gen >= req.max_tokens or len(s.cached) + 1 >= self.model.n_ctx_slot:
            self._finish(s, run, "length")
        else:
            s.next_token = tok

    def _logprobs(self, i: int, tok: int, k: int, bias: dict[int, float]) -> dict:
        """Log-probabilities from the logits of batch row i with the request's logit bias
        (before penalties, truncation and temperature): the chosen token's and the k most
        likely, as OpenAI reports them."""
        import numpy as np
        row = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self.model.ctx, i), shape=(self.model.n_vocab,))
        if bias:
            row = row.copy()
            for t, b in bias.items():
                row[t] += b
        m = float(row.max())
        lse = m + float(np.log(np.exp(row - m).sum()))
        top = np.argpartition(row, -k)[-k:]
        top = top[np.argsort(row[top])[::-1]]
        return {"token": tok, "logprob": float(row[tok]) - lse,
                "top": [(int(t), float(row[t]) - lse) for t in top]}

    def _finish(self, s: _Slot, run: _Run, reason: str) -> None:
        req, scan = run.req, run.scan
        if reason != "cancelled" and not scan.hit:
            tail = scan.push(run.detok.flush())
            tail += "" if scan.hit else scan.flush()
            if scan.hit:
                reason = "stop"
            if tail:
                self._emit(req, ("text", tail))
        now = time.perf_counter()
        res = Result(reason, len(req.prompt), s.n_gen, s.n_cached,
                     None if s.t_first is None else s.t_first - req.submitted, now - req.submitted, s.gen)
        self._release(s)
        self.requests_done += 1
        if reason != "cancelled" or res.ttft_s is not None:
            self._emit(req, ("end", res))

    def _release(self, s: _Slot) -> None:
        if s.run is not None:
            s.run.sampler.close()
        s.run = None
        s.todo = []
        s.next_token = None
        s.batch_i = -1
