"""Speed measurements comparable with llama.cpp's own tools.

In-kernel, the way llama-bench measures (FACTS.md, "How llama-bench measures"): defaults
p=512, n=128, r=5; one warm-up (a full prompt run, then one generated token); every
repetition clears the KV cache, optionally prefills `depth` tokens untimed (computed once,
then restored from a saved state, as llama-bench does), then times the test; pp decodes random
tokens in n_batch batches, tg decodes n single tokens with a synchronize after each. Each
repetition's rate is tokens / seconds; the figure is the mean +- sample standard deviation.

Paths (`path=`), all on the same loaded model:
  "decode"            llama-bench's own loop through the Python binding (random tokens, no
                      sampling): what the kernel gives, the ceiling for everything below.
  "kit"               the kit's generation loop (qwenkit.fastgen): decode + greedy argmax +
                      detokenization of every token. What a kit user's generation costs.
  "llama-cpp-python"  stock `Llama.generate` (greedy): llama-cpp-python's own per-token path.
pp is the same llama_decode for all three (the kit and "decode" share one implementation;
"llama-cpp-python" uses `Llama.eval`).

Through a server (`bench_server`): streamed /v1/completions, greedy, client-side: decode
tok/s = (chunks - 1) / (time of last chunk - time of first chunk), time to first token,
with a plain http.client SSE reader (no openai package needed). Works against the kit's
server, `python -m llama_cpp.server` and llama.cpp's native `llama-server` alike.

    from qwenkit import bench
    res = bench.bench(cfg, r=5)                          # [pp512, tg128] for path="kit"
    print(bench.table(res))
    rows = bench.sweep(cfg, "type_k", ["f16", "q8_0"], r=3)
    bench.plot(rows, x="type_k")
    bench.save_json(rows, "sweep.json")

llama.cpp's tools (llama-bench, llama-server) built from the same sources: `find_tools()`,
`run_llama_bench(...)`, `start_llama_server(...)` (scripts/build_tools.sh builds them).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenkit.config import RunConfig
from qwenkit.errors import QwenkitError
from qwenkit.trust import Probe

PATHS = ("decode", "kit", "llama-cpp-python")
ROOT = Path(__file__).resolve().parent.parent


class BenchError(QwenkitError, RuntimeError):
    """A benchmark that could not run (a tool missing, a server that did not answer)."""


# ---- results ---------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """One test (pp or tg) on one path: per-repetition rates and their mean +- sample sd."""
    test: str                  # "pp512", "tg128", "tg128 @ d4096" (llama-bench's names)
    path: str                  # decode | kit | llama-cpp-python | llama-bench | <server label>
    n_prompt: int
    n_gen: int
    n_depth: int
    rates: list[float]         # tokens / s of each repetition
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "pp" if self.n_prompt else "tg"

    @property
    def mean(self) -> float:
        return statistics.fmean(self.rates) if self.rates else float("nan")

    @property
    def sd(self) -> float:
        return statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(kind=self.kind, mean=self.mean, sd=self.sd)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def __str__(self) -> str:
        return f"{self.path:>18} {self.test:>16}: {self.mean:9.2f} ± {self.sd:.2f} t/s"


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return name + (f" @ d{n_depth}" if n_depth else "")


def merge(results: Iterable[BenchResult]) -> list[BenchResult]:
    """Join repetitions of the same (path, test, config) run separately (interleaved runs)."""
    out: dict[tuple, BenchResult] = {}
    for r in results:
        key = (r.path, r.test, json.dumps(r.config, sort_keys=True, default=str))
        if key in out:
            out[key].rates.extend(r.rates)
        else:
            out[key] = BenchResult(r.test, r.path, r.n_prompt, r.n_gen, r.n_depth, list(r.rates),
                                   dict(r.config), dict(r.extra))
    return list(out.values())


# ---- config in results -------------------------------------------------------------------------
_CFG_FIELDS = ("n_ctx", "type_k", "type_v", "flash_attn", "n_gpu_layers", "n_cpu_moe", "n_threads",
               "n_batch", "n_ubatch")


def config_fields(cfg: RunConfig) -> dict[str, Any]:
    d = {k: getattr(cfg, k) for k in _CFG_FIELDS}
    d["model"] = Path(cfg.model).name
    return d


# ---- in-kernel ---------------------------------------------------------------------------------
class _Runner:
    """llama-bench's test loops over one loaded Llama."""

    def __init__(self, llm, seed: int = 1234):
        import llama_cpp as lc
        import numpy as np

        from qwenkit.fastgen import FastGen

        self.lc, self.llm = lc, llm
        self.ctx = llm.ctx
        self.fg = FastGen(llm)
        self.n_vocab = int(llm.n_vocab())
        self.n_batch = int(lc.llama_n_batch(self.ctx))
        vocab = llm._model.vocab
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
        self.llm.n_tokens = 0

    def depth(self, n_depth: int) -> None:
        """Prefill n_depth tokens untimed; computed once per depth, then restored."""
        if n_depth <= 0:
            return
        lc = self.lc
        if self._state and self._state[0] == n_depth:
            buf = self._state[1]
            if lc.llama_state_seq_set_data(self.ctx, buf, len(buf), 0):
                self.llm.n_tokens = n_depth
                return
        self.prompt(n_depth)
        size = lc.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        lc.llama_state_seq_get_data(self.ctx, buf, size, 0)
        self._state = (n_depth, buf)
        self.llm.__dict__["_qwenkit_depth_state"] = self._state

    def prompt(self, n: int, path: str = "kit") -> None:
        toks = self.rand_tokens(n, first=self.llm.n_tokens == 0)
        if path == "llama-cpp-python":
            self.llm.eval(toks)
        else:
            self.fg._decode(toks)
        self.lc.llama_synchronize(self.ctx)

    def gen(self, n: int, path: str) -> None:
        lc, ctx = self.lc, self.ctx
        tok = self.bos if (self.bos is not None and self.llm.n_tokens == 0) else int(self.rng.integers(self.n_vocab))
        if path == "decode":  # llama-bench's test_gen, token for token
            one = (lc.llama_token * 1)()
            decode, get_one, sync = lc.llama_decode, lc.llama_batch_get_one, lc.llama_synchronize
            randint = self.rng.integers
            for _ in range(n):
                one[0] = tok
                if decode(ctx, get_one(one, 1)) != 0:
                    raise BenchError("llama_decode failed during tg")
                sync(ctx)
                tok = int(randint(self.n_vocab))
            self.llm.n_tokens += n
        elif path == "kit":  # the fast generation loop: decode, argmax, detokenize
            from qwenkit.fastgen import Sampler, _Detok
            sampler, det, fg = Sampler(self.llm), _Detok(self.fg.vocab), self.fg
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


MAX_REPS = 50


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


# ---- servers -------------------------------------------------------------------------------------
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


def stream_completion(base_url: str, prompt: str, max_tokens: int, *, headers: dict | None = None,
                      model: str | None = None, temperature: float = 0.0, timeout: float = 600,
                      extra: dict | None = None) -> StreamStats:
    """POST {base_url}/completions with stream=true and time every SSE event that carries text.
    base_url ends in /v1 (as an OpenAI client's). Plain http.client: no openai package needed."""
    u = urllib.parse.urlsplit(base_url.rstrip("/") + "/completions")
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
    if model:
        body["model"] = model
    body.update(extra or {})
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json", "Accept": "text/event-stream", **(headers or {})}
        t_send = time.perf_counter()
        conn.request("POST", u.path, body=json.dumps(body), headers=hdrs)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"{base_url}: HTTP {resp.status}: {resp.read()[:300]!r}")
        n, t_first, t_last, parts, finish, info, times = 0, None, None, [], None, {}, []
        while True:
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            try:
                ev = json.loads(data)
            except ValueError:
                continue
            if "error" in ev:
                raise BenchError(f"{base_url}: the stream reported an error: {ev['error']}")
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
    finally:
        conn.close()


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


# ---- llama.cpp's own tools ----------------------------------------------------------------------
def find_tools(required: Sequence[str] = ("llama-bench", "llama-server")) -> Path | None:
    """The folder holding llama.cpp's tools built from the same sources as the wheel:
    $QWENKIT_TOOLS_BIN, else what scripts/build_tools.sh built (its --print), else None."""
    cands = []
    if os.environ.get("QWENKIT_TOOLS_BIN"):
        cands.append(Path(os.environ["QWENKIT_TOOLS_BIN"]))
    script = ROOT / "scripts" / "build_tools.sh"
    if script.is_file():
        try:
            out = subprocess.run(["bash", str(script), "--print"], check=False, capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                cands.append(Path(out.stdout.strip().splitlines()[-1]))
        except (OSError, subprocess.SubprocessError):
            pass
    for c in cands:
        if all((c / t).is_file() for t in required):
            return c
    return None


def _tool(name: str, bin_dir: Path | None) -> Path:
    bin_dir = bin_dir or find_tools((name,))
    if not bin_dir or not (Path(bin_dir) / name).is_file():
        raise BenchError(f"{name} is not built", "run scripts/build_tools.sh (once; ~10 min on 2 cores), "
                         "or set QWENKIT_TOOLS_BIN to a folder holding it")
    return Path(bin_dir) / name


def _tool_env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(bin_dir)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
    return env


def llama_bench_args(cfg: RunConfig) -> list[str]:
    """llama-bench flags for the settings of a RunConfig (n_ctx does not apply: llama-bench
    sizes its context to p + n + d)."""
    return ["-t", str(cfg.n_threads), "-ngl", str(999 if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers),
            "-fa", "1" if cfg.flash_attn else "0", "-ctk", cfg.type_k, "-ctv", cfg.type_v,
            "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch), "-ncmoe", str(cfg.n_cpu_moe)]


def _csv(x) -> str:
    return ",".join(str(v) for v in x) if isinstance(x, (list, tuple)) else str(x)


def run_llama_bench(cfg: RunConfig, p: int | Sequence[int] = 512, n: int | Sequence[int] = 128, r: int = 5,
                    d: int | Sequence[int] = 0, bin_dir: Path | None = None, extra_args: Sequence[str] = (),
                    env: dict | None = None, timeout: float = 1800) -> list[BenchResult]:
    """Run llama-bench for cfg's model and settings; its JSON output as BenchResults.
    p, n, d take one value or a list (llama-bench runs each; p=0 or n=0 skips that test).
    extra_args may override a setting (e.g. ["-ub", "256,1024"]): each result's config is
    read back from llama-bench's own report."""
    exe = _tool("llama-bench", bin_dir)
    base = llama_bench_args(cfg)
    over = {a for a in extra_args if a.startswith("-")}
    kept = []
    for i in range(0, len(base), 2):  # a flag given in extra_args replaces the RunConfig's
        if base[i] not in over:
            kept += base[i:i + 2]
    args = [str(exe), "-m", cfg.model, "-p", _csv(p), "-n", _csv(n), "-r", str(r), "-d", _csv(d),
            *kept, "-o", "json", *extra_args]
    e = _tool_env(exe.parent)
    e.update(env or {})
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, env=e)
    if proc.returncode != 0:
        raise BenchError(f"llama-bench failed (exit {proc.returncode}): {proc.stderr[-800:]}",
                         "check the flags against `llama-bench --help`")
    data = json.loads(proc.stdout)
    conf = config_fields(cfg)
    out = []
    for t in data:
        npmt, ngen, ndep = int(t["n_prompt"]), int(t["n_gen"]), int(t.get("n_depth", 0))
        c = dict(conf)
        for k in ("n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers", "n_cpu_moe"):
            if k in t:
                c[k] = t[k]
        if "flash_attn" in t:
            fa = t["flash_attn"]
            c["flash_attn"] = fa if isinstance(fa, bool) else str(fa).lower() in ("1", "true", "on", "enabled")
        if c.get("n_gpu_layers") == 999 and cfg.n_gpu_layers < 0:
            c["n_gpu_layers"] = cfg.n_gpu_layers
        out.append(BenchResult(test_name(npmt, ngen, ndep), "llama-bench", npmt, ngen, ndep,
                               [float(x) for x in t["samples_ts"]], c,
                               {"build_commit": t.get("build_commit"), "backends": t.get("backends"),
                                "cpu_info": t.get("cpu_info"), "gpu_info": t.get("gpu_info"),
                                "model_type": t.get("model_type"), "model_size": t.get("model_size")}))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServerRun:
    """A benchmark server process on 127.0.0.1: started, polled until `ready_path` answers 200,
    stopped on exit; its output goes to a temporary log file."""
    name = "server"
    ready_path = "/health"

    def _launch(self, args: Sequence[str], env: dict, log_prefix: str, ready_timeout: float) -> None:
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)  # noqa: SIM115 - the process writes it
        self.proc = subprocess.Popen(list(args), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", self.ready_path)
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return
            except OSError:
                pass
            if time.monotonic() - t0 > ready_timeout:
                self.stop()
                raise BenchError(f"{self.name} did not become ready in {ready_timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    def headers(self) -> dict[str, str]:
        """Request headers a client needs (none: these servers run without a key), as
        qwenkit.server.ServerProcess.headers(), so every benchmark server is asked alike."""
        return {}

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class NativeServer(_ServerRun):
    """llama.cpp's `llama-server` for a RunConfig, on 127.0.0.1 (one slot, no web UI)."""
    name = "llama-server"

    def __init__(self, cfg: RunConfig, bin_dir: Path | None = None, port: int | None = None,
                 extra_args: Sequence[str] = (), env: dict | None = None, ready_timeout: float = 300):
        exe = _tool("llama-server", bin_dir)
        self.port = port or free_port()
        args = [str(exe), "-m", cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(cfg.n_ctx), "-t", str(cfg.n_threads),
                "-tb", str(cfg.n_threads_batch or cfg.n_threads),
                "-ngl", str(999 if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers),
                "-fa", "on" if cfg.flash_attn else "off", "-ctk", cfg.type_k, "-ctv", cfg.type_v,
                "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch), "-np", "1", "--no-webui",
                "-a", cfg.alias, *(["--n-cpu-moe", str(cfg.n_cpu_moe)] if cfg.n_cpu_moe else []),
                *extra_args]
        e = _tool_env(exe.parent)
        e.update(env or {})
        self._launch(args, e, "llama-server-", ready_timeout)


def start_llama_server(cfg: RunConfig, **kw) -> NativeServer:
    return NativeServer(cfg, **kw)


class StockServer(_ServerRun):
    """`python -m llama_cpp.server` with llama-cpp-python's own defaults plus the given
    arguments (a reference point: what a user of the plain package gets)."""
    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def __init__(self, model: str, args: Sequence[str] = (), port: int | None = None,
                 ready_timeout: float = 300, env: dict | None = None):
        self.port = port or free_port()
        e = {k: v for k, v in os.environ.items() if k.upper() not in ("HOST", "PORT", "API_KEY", "MODEL")}
        e.update(env or {})
        self._launch([sys.executable, "-m", "llama_cpp.server", "--model", model,
                      "--host", "127.0.0.1", "--port", str(self.port), *args], e, "llama_cpp-server-", ready_timeout)


@contextlib.contextmanager
def kit_server(cfg: RunConfig, env: dict[str, str] | None = None, **start_kw) -> Iterator[Any]:
    """The kit's server (qwenkit.server.start) for cfg. env: variables set while the process
    starts (only those the server passes on, e.g. GGML_*, CUDA_*)."""
    from qwenkit import server
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        srv = server.start(cfg, port="any", access_log=False, quiet=True, **start_kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield srv
    finally:
        srv.stop()


# ---- tables, plots, files ---------------------------------------------------------------------
def fmt_rate(r: BenchResult) -> str:
    if not r.rates:
        return "failed" if r.extra.get("error") else "-"
    return f"{r.mean:.2f} ± {r.sd:.2f}"


def table(results: Sequence[BenchResult], baseline: Callable[[BenchResult], BenchResult | None] | None = None,
          columns: Sequence[str] = ()) -> str:
    """A markdown table: path, test, config columns that vary, t/s (mean ± sd), reps, and the
    ratio to a baseline (a function result -> its baseline result)."""
    vary = list(columns) or [k for k in _CFG_FIELDS
                             if len({json.dumps(r.config.get(k)) for r in results}) > 1]
    head = ["path", "test", *vary, "t/s", "reps"] + (["ratio"] if baseline else [])
    rows = []
    for r in results:
        row = [r.path, r.test, *[str(r.config.get(k, "")) for k in vary], fmt_rate(r), str(len(r.rates))]
        if baseline:
            b = baseline(r)
            row.append(f"{r.mean / b.mean:.3f}" if b and b.rates and r.rates else "")
        rows.append(row)
    return _md(head, rows)


def html(markdown: str, trust_of: Sequence[BenchResult] | None = None):
    """A pipe table (table(), quality.table()) as a qwenkit.htmltable.Table: a notebook shows it
    as an HTML table (printed text tables wrap into unreadable lines), print() as text.
    trust_of: the results behind the rows, in order: adds a "trust" column (qwenkit.trust.judge)."""
    from qwenkit.htmltable import Table
    from qwenkit.trust import judge
    lines = [l.strip() for l in markdown.strip().splitlines() if l.strip().startswith("|")]
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
    head = cells[0] if cells else []
    rows = [r for r in cells[1:] if not all(set(c) <= set("-:") for c in r)]
    if trust_of is not None:
        head = [*head, "trust"]
        rows = [[*row, judge(r).short if r.rates else "-"] for row, r in zip(rows, trust_of)]
    return Table(head, rows)


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    line = lambda cells: "| " + " | ".join(str(c).ljust(n) for c, n in zip(cells, w)) + " |"
    return "\n".join([line(head), "| " + " | ".join("-" * n for n in w) + " |", *[line(r) for r in rows]])


def plot(results: Sequence[BenchResult], x: str | None = None, ax=None, title: str | None = None):
    """Bar chart of mean t/s with sd error bars: one panel per kind (pp, tg), bars by `x`
    (a config field that varies) or by path. Returns the matplotlib Figure."""
    import matplotlib
    if not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = [k for k in ("pp", "tg") if any(r.kind == k and r.rates for r in results)]
    if ax is None:
        fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.6), squeeze=False)
        axes = axes[0]
    else:
        axes, fig = [ax], ax.figure
    for a, kind in zip(axes, kinds):
        rs = [r for r in results if r.kind == kind and r.rates]
        labels = [(f"{r.config.get(x)}" if x else r.path) + ("" if x else f"\n{r.test}") for r in rs]
        a.bar(range(len(rs)), [r.mean for r in rs], yerr=[r.sd for r in rs], capsize=3, color="#4C72B0")
        a.set_xticks(range(len(rs)), labels, rotation=30 if len(rs) > 4 else 0, fontsize=8)
        a.set_ylabel("tokens / s")
        a.set_title(f"{kind} ({rs[0].test.split(' ')[0]})" + (f" vs {x}" if x else ""))
        for i, r in enumerate(rs):
            a.annotate(f"{r.mean:.1f}", (i, r.mean), ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def machine_info() -> dict[str, Any]:
    """Machine, CPU, GPU, load, date, commit: what a result file says about where it came from."""
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "hostname": platform.node(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        cpu = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
               if l.startswith("model name")]
        info["cpu"] = cpu[0] if cpu else platform.processor()
        info["cpu_count"] = len(os.sched_getaffinity(0))
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",  # noqa: PLW1510
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["gpu"] = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: PLW1510
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    try:
        import llama_cpp
        info["llama_cpp_python"] = llama_cpp.__version__
        info["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        info["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    except Exception:  # noqa: BLE001, S110 - optional facts
        pass
    return info


def save_json(results: Sequence[BenchResult], path: str | os.PathLike, meta: dict | None = None,
              **sections: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta if meta is not None else machine_info(),
           "results": [r.to_dict() for r in results], **sections}
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(p)
    return p


def load_json(path: str | os.PathLike) -> tuple[dict, list[BenchResult]]:
    doc = json.loads(Path(path).read_text())
    return doc.get("meta", {}), [BenchResult.from_dict(d) for d in doc.get("results", [])]
