"""In-kernel speed measurements on a model loaded in this process, the way llama-bench measures
(docs/facts.md, "How llama-bench measures"): defaults p=512, n=128, r=5; one warm-up (a full prompt
run, then one generated token); every repetition clears the KV cache, optionally prefills
`depth` tokens untimed (computed once, then restored from a saved state, as llama-bench does),
then times the test; pp decodes random tokens in n_batch batches, tg decodes n single tokens
with a synchronize after each. Each repetition's rate is tokens / seconds; the figure is the
mean +- sample standard deviation.

Paths (`path=`), all on the same loaded model:
  "decode"            llama-bench's own loop through the Python binding (random tokens, no
                      sampling): what the kernel gives, the ceiling for everything below.
  "kit"               the kit's generation loop (qwenkit.fastgen): decode + greedy argmax +
                      detokenization of every token. What a kit user's generation costs.
  "llama-cpp-python"  stock `Llama.generate` (greedy): llama-cpp-python's own per-token path.
pp is the same llama_decode for all three (the kit and "decode" share one implementation;
"llama-cpp-python" uses `Llama.eval`).
"""
from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qwenkit.bench.results import BenchError, BenchResult, config_fields, test_name
from qwenkit.config import RunConfig
from qwenkit.errors import QwenkitError
from qwenkit.trust import Probe

__all__ = ["MAX_REPS", "PATHS", "bench", "loaded", "sweep"]

PATHS = ("decode", "kit", "llama-cpp-python")
MAX_REPS = 50  # bench(until=...) stops after this many repetitions whatever the spread


class _Runner:
    """llama-bench's test loops over one loaded Llama."""

    def __init__(self, llm, seed: int = 1234):
        import numpy as np

        from qwenkit import llama_api  # imported here: importing qwenkit.bench needs no llama.cpp
        from qwenkit.fastgen import FastGen

        lc = llama_api.C
        self.api, self.lc, self.llm = llama_api, lc, llm
        self.ctx = llm.ctx
        self.fg = FastGen(llm)
        self.n_vocab = int(llm.n_vocab())
        self.n_batch = int(lc.llama_n_batch(self.ctx))
        vocab = llama_api.vocab(llm)
        self.bos = lc.llama_vocab_bos(vocab) if lc.llama_vocab_get_add_bos(vocab) else None
        self.rng = np.random.default_rng(seed)
        # (depth, saved sequence state), kept on the Llama so later bench() calls reuse it
        self._state: tuple[int, Any] | None = llm.__dict__.get("_qwenkit_depth_state")

    def rand_tokens(self, n: int, first: bool) -> list[int]:
        toks = self.rng.integers(0, self.n_vocab, size=n).tolist()
        if first and self.bos is not None and toks:
            toks[0] = self.bos
        return toks

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), False)
        self.api.set_evaluated(self.llm, 0)

    def depth(self, n_depth: int) -> None:
        """Prefill n_depth tokens untimed; computed once per depth, then restored."""
        if n_depth <= 0:
            return
        lc = self.lc
        if self._state and self._state[0] == n_depth:
            buf = self._state[1]
            if lc.llama_state_seq_set_data(self.ctx, buf, len(buf), 0):
                self.api.set_evaluated(self.llm, n_depth)
                return
        self.prompt(n_depth)
        size = lc.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        lc.llama_state_seq_get_data(self.ctx, buf, size, 0)
        self._state = (n_depth, buf)
        self.llm.__dict__["_qwenkit_depth_state"] = self._state

    def prompt(self, n: int, path: str = "kit") -> None:
        toks = self.rand_tokens(n, first=self.api.n_evaluated(self.llm) == 0)
        if path == "llama-cpp-python":
            self.llm.eval(toks)
        else:
            self.fg._decode(toks)
        self.lc.llama_synchronize(self.ctx)

    def gen(self, n: int, path: str) -> None:
        lc, ctx = self.lc, self.ctx
        at_start = self.api.n_evaluated(self.llm) == 0
        tok = self.bos if (self.bos is not None and at_start) else int(self.rng.integers(self.n_vocab))
        if path == "decode":  # llama-bench's test_gen, token for token
            one = (lc.llama_token * 1)()
            decode, get_one, sync = lc.llama_decode, lc.llama_batch_get_one, lc.llama_synchronize
            randint = self.rng.integers
            for _ in range(n):
                one[0] = tok
                if decode(ctx, get_one(one, 1)) != 0:
                    raise BenchError("llama_decode failed during tg",
                                     "use a smaller n_gen or a larger n_ctx (the KV cache may be full)")
                sync(ctx)
                tok = int(randint(self.n_vocab))
            self.api.set_evaluated(self.llm, self.api.n_evaluated(self.llm) + n)
        elif path == "kit":  # the fast generation loop: decode, argmax, detokenize
            from qwenkit.fastgen import Detokenizer, Sampler
            sampler, det, fg = Sampler(self.llm), Detokenizer(self.fg.vocab), self.fg
            for _ in range(n):
                fg._decode((tok,))
                tok = sampler.sample(ctx)
                det.text(tok)
        elif path == "llama-cpp-python":  # stock Llama.generate, greedy
            it = self.llm.generate([tok], temp=0.0, reset=False)
            for i, _t in enumerate(it):
                if i + 1 >= n:
                    break
            it.close()
        else:
            raise BenchError(f"unknown path {path!r}", f"use one of {', '.join(PATHS)}")

    def test(self, n_prompt: int, n_gen: int, n_depth: int, r: int, path: str) -> list[float]:
        rates = []
        for _ in range(r):
            self.clear()
            self.depth(n_depth)
            t0 = time.perf_counter_ns()
            if n_prompt:
                self.prompt(n_prompt, path)
            if n_gen:
                self.gen(n_gen, path)
            dt = time.perf_counter_ns() - t0
            rates.append(1e9 * (n_prompt + n_gen) / dt)
        return rates

    def warmup(self, n_prompt: int, n_gen: int, path: str) -> None:
        self.clear()
        if n_prompt:
            self.prompt(n_prompt, path)
        if n_gen:
            self.gen(1, path)


def _needed_ctx(p: int, n: int, d: int) -> int:
    # pp and tg are separate tests, each from a cleared cache (llama-bench: n_ctx = p + n + d
    # per test, where a pp test has n = 0)
    return max(p, n) + d


@contextlib.contextmanager
def loaded(cfg_or_llm, n_ctx_min: int = 0):
    """Yield (llm, cfg) for a RunConfig (loaded here, closed after) or an already loaded Llama."""
    if isinstance(cfg_or_llm, RunConfig):
        from qwenkit.engine import load
        cfg = cfg_or_llm
        if n_ctx_min and cfg.n_ctx and cfg.n_ctx < n_ctx_min:
            cfg = cfg.replace(n_ctx=n_ctx_min)
        llm = load(cfg)
        try:
            yield llm, cfg
        finally:
            llm.close()
    else:
        yield cfg_or_llm, getattr(cfg_or_llm, "_qwenkit_cfg", None)


def bench(cfg_or_llm, p: int = 512, n: int = 128, r: int = 5, d: int = 0, path: str = "kit",
          warmup: bool = True, seed: int = 1234, config: RunConfig | None = None,
          until: float | None = None, time_limit: float = 30.0) -> list[BenchResult]:
    """pp{p} and tg{n} (each at depth d) on one path, as llama-bench measures them.

    cfg_or_llm: a RunConfig (the model is loaded with n_ctx >= max(p, n) + d, then closed) or a
    loaded Llama (then `config`, if given, is what the results record). p=0 or n=0 skips that
    test. Returns [pp, tg] (those that ran).

    until: keep repeating after the first r runs until the mean is known to within this relative
    standard error (0.02: +-2 %) or `time_limit` seconds of that test have passed; r is then the
    least number of runs. Each result records in extra["machine"] what else used the CPU
    meanwhile (qwenkit.trust.Probe), so trust.judge() can say whether to believe it."""
    if path not in PATHS:
        raise BenchError(f"unknown path {path!r}", f"use one of {', '.join(PATHS)}")
    out = []
    with loaded(cfg_or_llm, _needed_ctx(p, n, d)) as (llm, cfg):
        need = _needed_ctx(p, n, d)
        if llm.n_ctx() < need:
            raise BenchError(f"the context holds {llm.n_ctx()} tokens; this test needs {need}",
                             f"load with n_ctx >= {need}")
        run = _Runner(llm, seed)
        cfg = cfg or config
        conf = config_fields(cfg) if cfg else {"n_threads": llm.n_threads, "model": Path(llm.model_path).name}
        for n_p, n_g in ((p, 0), (0, n)):
            if not (n_p or n_g):
                continue
            if warmup:
                run.warmup(n_p, n_g, path)
            with Probe(own_threads=conf.get("n_threads")) as probe:
                rates, stopped = _repeat(run, n_p, n_g, d, r, path, until, time_limit)
            extra: dict[str, Any] = {"machine": probe.record()}
            if until:
                extra.update(until=until, stopped=stopped)
            out.append(BenchResult(test_name(n_p, n_g, d), path, n_p, n_g, d, rates, dict(conf), extra))
        run.clear()
    return out



def _repeat(run: _Runner, n_p: int, n_g: int, d: int, r: int, path: str, until: float | None,
            time_limit: float) -> tuple[list[float], str]:
    """r runs, then more while the relative standard error exceeds `until` and time is left."""
    t0 = time.perf_counter()
    rates = run.test(n_p, n_g, d, max(1, r), path)
    if not until:
        return rates, "r runs"
    while True:
        rel_se = (statistics.stdev(rates) / statistics.fmean(rates) / len(rates) ** 0.5
                  if len(rates) > 1 else float("inf"))
        if rel_se <= until:
            return rates, f"standard error {rel_se:.1%} <= {until:.0%}"
        if time.perf_counter() - t0 >= time_limit or len(rates) >= MAX_REPS:
            return rates, f"time limit ({time_limit:g} s): standard error still {rel_se:.1%}"
        rates += run.test(n_p, n_g, d, 1, path)


def sweep(cfg: RunConfig, field_name: str, values: Sequence[Any], p: int = 512, n: int = 128,
          r: int = 3, d: int = 0, path: str = "kit", progress: bool = True) -> list[BenchResult]:
    """bench() for each value of one RunConfig field (e.g. "type_k", "n_threads", "n_ubatch",
    "n_cpu_moe"); each result's config holds the value. A value that fails to load is
    recorded with extra['error'] and no rates."""
    out: list[BenchResult] = []
    it: Iterable = values
    if progress:
        try:
            from tqdm.auto import tqdm
            it = tqdm(values, desc=f"sweep {field_name}")
        except ImportError:  # pragma: no cover
            pass
    for v in it:
        try:
            c = cfg.replace(**{field_name: v})
            res = bench(c, p=p, n=n, r=r, d=d, path=path)
        except QwenkitError as e:
            out.append(BenchResult(test_name(p, 0, d) if p else test_name(0, n, d), path, p, 0, d, [],
                                   {**config_fields(cfg), field_name: v}, {"error": e.problem}))
            continue
        for x in res:
            x.extra["sweep"] = field_name
        out.extend(res)
    return out
