"""llama.cpp's recurrent-state rollback (`n_rs_seq`) measured on the synthetic Qwen3.5 (issue 14).

The vendored llama.cpp (llama-cpp-python 0.3.36) has `llama_context_params.n_rs_seq`: "number
of recurrent-state snapshots per seq for rollback (0 = no rollback) [EXPERIMENTAL]", enabled
for qwen35 / qwen35moe (`llm_arch_supports_rs_rollback`), used by llama-server to take back
rejected draft tokens in speculative decoding. How it works (src/llama-memory-recurrent.cpp,
src/models/delta-net-base.cpp):
- the recurrent tensors get (1 + n_rs_seq) row groups per cell; every ubatch writes the state
  after each of its last min(tokens, n_rs_seq + 1) tokens into groups 0 (the final state),
  1 (one token earlier), ...; `split_equal` keeps a sequence's last n_rs_seq + 1 tokens of a
  llama_decode call in one ubatch;
- `llama_memory_seq_rm(mem, seq, p, -1)` with 1 <= (last pos - p + 1) <= n_rs_seq sets a
  pending rollback index (single use) and cuts the position; the next decode reads its input
  state from that group. Any other partial cut of a recurrent sequence returns false (and the
  hybrid memory leaves the attention KV untouched then).

The kit's prompt cache (qwenkit/serving/prompt_cache.py) does not use it: it stops the prefill
4 tokens before a prompt's end and copies the recurrent state out
(`llama_state_seq_get_data_ext`, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY).

What this script measures, per model (the tiny and the small synthetic qwen35moe, random
weights) and n_rs_seq in (0, 4, 8), through the low-level API as qwenkit.serving.model creates
a context (engine.context_params; one sequence; n_batch 1024, n_ubatch 512, f16 KV; flash
attention off for (a), (b), (d): CPU flash attention is not split-invariant, so two fresh runs
of the same tokens split into different llama_decode calls already differ by ~0.1 in the
logits with it on; on for the speed rounds, the kit's default), on a prompt of N tokens of
qwenkit/data/sample_en.txt (default 520: two ubatches):
(a) after a prefill of N tokens in one llama_decode call, does seq_rm(0, N - k, -1) succeed,
    for k = 1, 2, 3, 4, 5, 8, 9 and N // 2; is a second rollback before any decode refused;
(b) after a successful rollback, re-decoding the k cut tokens (one call) gives last logits
    equal to a fresh run with the same split (prefill N - k, then the k tokens): max abs diff;
    and decoding k OTHER tokens instead (a rejected draft) vs a fresh run of those; plus the
    diff to a one-call prefill of N tokens (the noise of a different split) and to n_rs_seq 0
    (the op differs: ggml_gated_delta_net with snapshots vs the chunked/fused delta net);
(c) llama.cpp's recurrent state size (its `llama_memory_recurrent: size = ...` line), the
    size of the kit's checkpoint (PARTIAL_ONLY state bytes), the same sizes for the full-size
    Qwen3.5-35B-A3B header (no_alloc: nothing allocated), and prefill (N tokens, one call) and
    decode (32 tokens, one per call) speed, rounds interleaved over the three contexts; also
    the kit's own checkpoint cost on the n_rs_seq 0 context (prefill split at N - 4 + the
    PARTIAL_ONLY copy, and its restore);
(d) whether the snapshots cover a rollback after single-token decode steps (prefill N, then 4
    decodes of one token; cut k = 1, 2, 4) and after a multi-token batch (prefill N, then one
    4-token call; cut k = 1, 3, 4, 5): seq_rm's answer and the logits after re-decoding.
"Correct" means a max abs logit diff against the same-split fresh run of at most 3x the
model's split noise: two fresh runs of the same tokens split into different llama_decode calls
are not bit-equal even with flash attention off (other kernels for other batch sizes; a 1e-7
difference can flip a near-tied pick of the random router), measured here up to 0.03 on the
tiny model and 0.7 on the small one (logits std about 1); a rollback to a wrong state moves
the logits by 3-5.

Measured (2-core AMD EPYC, 1 thread, llama-cpp-python 0.3.36; benchmarks/results/rs_rollback_cpu.json):
seq_rm(N-k) after a one-call prefill succeeds exactly for 1 <= k <= n_rs_seq (never with 0), once
per decode, and the re-decoded logits agree with a fresh run within the split noise; after
single-token decode steps it ALSO succeeds but restores a stale state (logits off by 4-5): only
the trailing tokens of the last llama_decode call, minus its first, have valid snapshots. Cost:
the recurrent state grows (1 + n_rs_seq)x (small model 9.4 -> 47.1 / 84.8 MiB; the full-size
Qwen3.5-35B-A3B 62.8 -> 314 / 565 MiB per sequence), prefill -1.6 / -1.9 %, decode -5.5 / -7.4 %
(n_rs_seq 4 / 8). The kit's checkpoint: 9.4 MiB copied in ~0.9 ms, the split prefill costs ~1 %.

    python benchmarks/rs_rollback.py                 # writes benchmarks/results/rs_rollback_cpu.json
    python benchmarks/rs_rollback.py --models tiny --threads 2 --out /tmp/rs.json
"""
from __future__ import annotations

import qwenkit  # noqa: F401  first: it loads llama.cpp before numpy (see qwenkit/__init__.py)

# isort: split
import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench, synthetic
from qwenkit.config import RunConfig
from qwenkit.data import sample_one_line
from qwenkit.engine import context_params
from qwenkit.llamalog import capture_log

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RS_SEQS = (0, 4, 8)
CUTS = (1, 2, 3, 4, 5, 8, 9)            # k tokens cut back after a prefill; plus N // 2
STEP_CUTS = (1, 2, 4)                   # after 4 single-token decodes
BATCH_CUTS = (1, 3, 4, 5)               # after one 4-token call
N_CTX, N_BATCH, N_UBATCH = 2048, 1024, 512
DECODE_TOKENS = 32


def _lc():
    import llama_cpp
    return llama_cpp


# ---- one context -----------------------------------------------------------------------------
class Ctx:
    """A llama_context over a shared model with one sequence and `n_rs_seq` snapshots."""

    def __init__(self, model, path: str, n_rs_seq: int, threads: int, flash_attn: bool):
        lc = _lc()
        cfg = RunConfig(model=path, n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_UBATCH, n_threads=threads,
                        flash_attn=flash_attn)
        cp = context_params(cfg)
        cp.n_seq_max = 1
        cp.n_rs_seq = n_rs_seq
        with capture_log(echo=False) as log:
            self.ctx = lc.llama_init_from_model(model, cp)
        if not self.ctx:
            raise bench.BenchError(f"cannot create a context with n_rs_seq={n_rs_seq}: {log.text[-500:]}")
        self.n_rs_seq = int(lc.llama_n_rs_seq(self.ctx))   # what llama.cpp kept (clamped to 0 if unsupported)
        rs = log.recurrent()
        self.recurrent = [vars(r) for r in rs]
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model)))
        self.batch = lc.llama_batch_init(N_BATCH, 0, 1)

    def close(self) -> None:
        lc = _lc()
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)

    def clear(self) -> None:
        _lc().llama_memory_clear(self.mem, True)

    def decode(self, tokens: list[int], pos0: int) -> None:
        """One llama_decode call: `tokens` at positions pos0.., logits for the last one."""
        lc, b = _lc(), self.batch
        n = len(tokens)
        if not 0 < n <= N_BATCH:
            raise bench.BenchError(f"one llama_decode call takes 1 to {N_BATCH} tokens, not {n}")
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == n - 1
        b.n_tokens = n
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise bench.BenchError(f"llama_decode returned {rc} (n_rs_seq={self.n_rs_seq}, {n} tokens at {pos0})")

    def logits(self) -> np.ndarray:
        ptr = _lc().llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def run(self, calls: list[list[int]]) -> np.ndarray:
        """Fresh sequence, then one llama_decode per list; the last logits."""
        self.clear()
        pos = 0
        for toks in calls:
            self.decode(toks, pos)
            pos += len(toks)
        return self.logits()

    def seq_rm(self, p0: int) -> bool:
        return bool(_lc().llama_memory_seq_rm(self.mem, 0, p0, -1))

    def pos_max(self) -> int:
        return int(_lc().llama_memory_seq_pos_max(self.mem, 0))

    def state_size(self, partial: bool) -> int:
        lc = _lc()
        flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else lc.LLAMA_STATE_SEQ_FLAGS_NONE
        return int(lc.llama_state_seq_get_size_ext(self.ctx, 0, flags))


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


# ---- (a) + (b): rollback after a prefill -----------------------------------------------------------
def rollback_after_prefill(c: Ctx, toks: list[int], alt: list[int], base_full: np.ndarray | None) -> dict[str, Any]:
    n = len(toks)
    full = c.run([toks])
    out: dict[str, Any] = {"n_prompt": n, "logits_std": float(full.std()),
                           "vs_n_rs_seq_0": None if base_full is None else _diff(full, base_full), "cuts": []}
    for k in (*CUTS, n // 2):
        row: dict[str, Any] = {"k": k, "p0": n - k}
        c.run([toks])
        row["ok"] = c.seq_rm(n - k)
        row["pos_max_after"] = c.pos_max()
        if row["ok"]:
            if k == 1:  # a second rollback before any decode: the index is single-use
                row["second_rollback_ok"] = c.seq_rm(n - 2)
            c.decode(toks[n - k:], n - k)
            got = c.logits()
            ref = c.run([toks[:n - k], toks[n - k:]])
            row["diff_same_tokens"] = _diff(got, ref)
            row["diff_vs_one_call_prefill"] = _diff(got, full)
            row["split_noise"] = _diff(ref, full)        # what a different split alone changes
            c.run([toks])
            if not c.seq_rm(n - k):  # it took this cut a moment ago, on the same prefill
                raise bench.BenchError(f"the same rollback by {k} tokens was refused the second time "
                                       f"(n_rs_seq={c.n_rs_seq})")
            c.decode(alt[:k], n - k)
            got = c.logits()
            ref = c.run([toks[:n - k], alt[:k]])
            row["diff_other_tokens"] = _diff(got, ref)
        out["cuts"].append(row)
    return out


# ---- (d): what the snapshots cover ---------------------------------------------------------------
def rollback_after_steps(c: Ctx, toks: list[int], alt: list[int]) -> list[dict[str, Any]]:
    """toks = prompt + 4 more tokens. 'steps': the 4 as 4 single-token calls; 'batch': one call."""
    n = len(toks) - 4
    rows = []
    for mode, cuts in (("steps", STEP_CUTS), ("batch", BATCH_CUTS)):
        tail_calls = [[t] for t in toks[n:]] if mode == "steps" else [toks[n:]]
        for k in cuts:
            row: dict[str, Any] = {"after": mode, "k": k, "p0": n + 4 - k}
            c.run([toks[:n], *tail_calls])
            row["ok"] = c.seq_rm(n + 4 - k)
            if row["ok"]:
                c.decode(alt[:k], n + 4 - k)
                got = c.logits()
                ref = c.run([toks[:n + 4 - k], alt[:k]])
                row["diff_other_tokens"] = _diff(got, ref)
            rows.append(row)
    return rows


# ---- (c): speed and the kit's checkpoint cost --------------------------------------------------------
def speed_round(c: Ctx, toks: list[int]) -> dict[str, float]:
    c.clear()
    t = time.perf_counter()
    c.decode(toks, 0)
    prefill_s = time.perf_counter() - t
    n, tok = len(toks), int(np.argmax(c.logits()))
    t = time.perf_counter()
    for i in range(DECODE_TOKENS):
        c.decode([tok], n + i)
        tok = int(np.argmax(c.logits()))
    decode_s = time.perf_counter() - t
    return {"prefill_tps": n / prefill_s, "decode_tps": DECODE_TOKENS / decode_s}


def kit_checkpoint_round(c: Ctx, toks: list[int]) -> dict[str, float]:
    """What the kit does on a hybrid model: prefill to N - 4, copy the recurrent state out
    (PARTIAL_ONLY), prefill the last 4; later: restore it and cut the KV to N - 4."""
    lc, n = _lc(), len(toks)
    flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
    c.clear()
    t0 = time.perf_counter()
    c.decode(toks[:n - 4], 0)
    t1 = time.perf_counter()
    size = int(lc.llama_state_seq_get_size_ext(c.ctx, 0, flags))
    buf = (ctypes.c_uint8 * size)()
    got = int(lc.llama_state_seq_get_data_ext(c.ctx, buf, size, 0, flags))
    t2 = time.perf_counter()
    c.decode(toks[n - 4:], n - 4)
    t3 = time.perf_counter()
    ok = int(lc.llama_state_seq_set_data_ext(c.ctx, buf, got, 0, flags)) > 0 and c.seq_rm(n - 4)
    t4 = time.perf_counter()
    return {"copy_ms": (t2 - t1) * 1e3, "restore_ms": (t4 - t3) * 1e3, "prefill_split_s": (t1 - t0) + (t3 - t2),
            "bytes": got, "restore_ok": float(ok)}


# ---- memory at the real model's size (header only) -------------------------------------------------
def full_size_memory(n_seq_maxes=(1, 4)) -> list[dict[str, Any]]:
    from qwenkit.models import cache_dir
    lc = _lc()
    path = cache_dir() / "synthetic" / f"qwen35moe-full-q4_k_m-sparse-v{synthetic.GENERATOR_VERSION}.gguf"
    if not path.is_file():
        synthetic.write_model(path, arch="qwen35moe", size="full", weights="sparse", progress=False)
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.load_mode = lc.LLAMA_LOAD_MODE_NONE
    mp.no_alloc = True
    rows = []
    with capture_log(echo=False):
        model = lc.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise bench.BenchError(f"cannot read {path}")
    try:
        for n_seq in n_seq_maxes:
            for rs in RS_SEQS:
                cp = context_params(RunConfig(model=str(path), n_ctx=8192 * n_seq, n_batch=512, n_ubatch=512))
                cp.n_seq_max = n_seq
                cp.n_rs_seq = rs
                with capture_log(echo=False) as log:
                    ctx = lc.llama_init_from_model(model, cp)
                if ctx:
                    lc.llama_free(ctx)
                rec = log.recurrent()
                rows.append({"n_seq_max": n_seq, "n_rs_seq": rs,
                             "recurrent_mib": rec[0].size_mib if rec else None,
                             "r_mib": rec[0].r_mib if rec else None, "s_mib": rec[0].s_mib if rec else None})
    finally:
        lc.llama_model_free(model)
    return rows


# ---- one model -------------------------------------------------------------------------------------
def _tokens(model, n: int, offset: int) -> list[int]:
    lc = _lc()
    vocab = lc.llama_model_get_vocab(model)
    text = sample_one_line("en")
    b = text.encode()
    buf = (lc.llama_token * (len(b) + 8))()
    m = lc.llama_tokenize(vocab, b, len(b), buf, len(buf), False, False)
    toks = list(buf[:m])
    if m < offset + n:
        raise bench.BenchError(f"the sample text has {m} tokens, fewer than {offset + n}")
    return toks[offset:offset + n]


def measure_model(size: str, threads: int, n_prompt: int, rounds: int, check_flash_attn: bool) -> dict[str, Any]:
    lc = _lc()
    path = str(synthetic.cached_model("qwen35moe", size))
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    with capture_log(echo=False):
        model = lc.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise bench.BenchError(f"cannot load {path}")
    toks = _tokens(model, n_prompt + 4, 0)
    alt = _tokens(model, 16, 3000)
    prompt = toks[:n_prompt]
    out: dict[str, Any] = {"model": Path(path).name, "size": size, "n_prompt": n_prompt,
                           "hparams": {k: v for k, v in vars(synthetic.hparams("qwen35moe", size)).items()
                                       if k in ("n_layer", "n_embd", "n_vocab", "n_expert", "n_expert_used",
                                                "ssm_d_state", "ssm_n_group", "ssm_dt_rank",
                                                "full_attention_interval")},
                           "per_n_rs_seq": {}}
    ctxs: dict[int, Ctx] = {}
    try:
        for rs in RS_SEQS:
            ctxs[rs] = Ctx(model, path, rs, threads, check_flash_attn)
        base_full = None
        for rs, c in ctxs.items():
            t = time.monotonic()
            r = {"n_rs_seq_effective": c.n_rs_seq, "recurrent": c.recurrent}
            r["after_prefill"] = rollback_after_prefill(c, prompt, alt, base_full)
            if rs == 0:
                base_full = c.run([prompt])
            r["snapshots_cover"] = rollback_after_steps(c, toks, alt)
            c.run([prompt])
            r["state_bytes_full"] = c.state_size(partial=False)
            r["state_bytes_partial"] = c.state_size(partial=True)   # the kit's checkpoint
            r["correctness_s"] = round(time.monotonic() - t, 1)
            out["per_n_rs_seq"][str(rs)] = r
            print(f"  {size} n_rs_seq={rs}: correctness done in {r['correctness_s']} s", flush=True)
        for c in ctxs.values():
            c.close()
        ctxs = {rs: Ctx(model, path, rs, threads, True) for rs in RS_SEQS}   # speed: the kit's default
        speed: dict[int, list[dict[str, float]]] = {rs: [] for rs in ctxs}
        kit: list[dict[str, float]] = []
        for rnd in range(rounds):
            order = list(ctxs)[rnd % len(ctxs):] + list(ctxs)[:rnd % len(ctxs)]
            for rs in order:
                speed[rs].append(speed_round(ctxs[rs], prompt))
            kit.append(kit_checkpoint_round(ctxs[0], prompt))
        for rs, rows in speed.items():
            out["per_n_rs_seq"][str(rs)]["speed_rounds"] = rows
        out["kit_checkpoint_rounds"] = kit
    finally:
        for c in ctxs.values():
            c.close()
        lc.llama_model_free(model)
    return out


# ---- summary: verdicts, table, comparisons -------------------------------------------------------------
def judge(m: dict[str, Any], factor: float, floor: float) -> None:
    """A rollback is correct when its logit diffs stay within `factor` x the model's noise: the
    largest diff between two fresh runs of the same tokens split differently ("split noise")."""
    rows = [c for r in m["per_n_rs_seq"].values() for c in r["after_prefill"]["cuts"]]
    noise = max((c["split_noise"] for c in rows if "split_noise" in c), default=0.0)
    m["noise_floor"], m["threshold"] = noise, max(floor, factor * noise)
    for r in m["per_n_rs_seq"].values():
        for c in r["after_prefill"]["cuts"]:
            if c["ok"]:
                c["correct"] = max(c["diff_same_tokens"], c["diff_other_tokens"]) <= m["threshold"]
        for c in r["snapshots_cover"]:
            if c["ok"]:
                c["correct"] = c["diff_other_tokens"] <= m["threshold"]



def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def comparisons(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """t/s with n_rs_seq > 0 against n_rs_seq 0, same model and run (RESULTS.md's table)."""
    out = []
    for m in models:
        base = m["per_n_rs_seq"]["0"]["speed_rounds"]
        for rs in RS_SEQS[1:]:
            rows = m["per_n_rs_seq"][str(rs)]["speed_rounds"]
            for key, what in (("prefill_tps", f"prefill {m['n_prompt']} tokens (one call)"),
                              ("decode_tps", f"decode {DECODE_TOKENS} tokens (one per call)")):
                v, sd = _mean_sd([r[key] for r in rows])
                bv, bsd = _mean_sd([r[key] for r in base])
                out.append({"figure": f"{m['size']}: {what}, n_rs_seq={rs}", "value": v, "sd": sd, "reps": len(rows),
                            "baseline_path": f"{m['size']}: n_rs_seq=0", "baseline_test": key.split("_")[0],
                            "baseline": bv, "baseline_sd": bsd, "baseline_reps": len(base), "ratio": v / bv})
    return out


def _ks(rows, pred) -> str:
    ks = [str(c["k"]) for c in rows if pred(c)]
    return ",".join(ks) if ks else "none"


def findings(m: dict[str, Any]) -> list[str]:
    """One line per question, from the numbers (they go to RESULTS.md as notes)."""
    name, out = m["size"], []
    for rs, r in m["per_n_rs_seq"].items():
        cuts, cover = r["after_prefill"]["cuts"], r["snapshots_cover"]
        ok = [c for c in cuts if c["ok"]]
        line = (f"{name}, n_rs_seq {rs}: after a one-call prefill of {m['n_prompt']} tokens seq_rm(N-k) "
                f"succeeds for k = {_ks(cuts, lambda c: c['ok'])}, refused for k = {_ks(cuts, lambda c: not c['ok'])}")
        if ok:
            worst = max(max(c["diff_same_tokens"], c["diff_other_tokens"]) for c in ok)
            line += (f"; re-decoded logits correct for k = {_ks(ok, lambda c: c['correct'])} (max diff {worst:.2g}, "
                     f"split noise {m['noise_floor']:.2g})")
            second = next((c["second_rollback_ok"] for c in cuts if "second_rollback_ok" in c), None)
            line += f"; a second rollback before a decode {'accepted' if second else 'refused'}"
            for mode, what in (("steps", "4 single-token decodes"), ("batch", "one 4-token call")):
                rows = [c for c in cover if c["after"] == mode]
                bad = [c for c in rows if c["ok"] and not c["correct"]]
                line += (f"; after {what}: seq_rm succeeds for k = {_ks(rows, lambda c: c['ok'])}, logits correct "
                         f"for k = {_ks(rows, lambda c: c['ok'] and c['correct'])}"
                         + (f", WRONG for k = {_ks(bad, lambda c: True)} (diff up to "
                            f"{max(c['diff_other_tokens'] for c in bad):.2g})" if bad else ""))
        out.append(line)
    mem = ", ".join(f"{r['recurrent'][0]['size_mib']:.2f}" for r in m["per_n_rs_seq"].values() if r["recurrent"])
    ck, base = m["kit_checkpoint_rounds"], m["per_n_rs_seq"]["0"]["speed_rounds"]
    out.append(f"{name}: llama.cpp's recurrent state (1 sequence) {mem} MiB for n_rs_seq "
               f"{', '.join(m['per_n_rs_seq'])}; the kit's checkpoint (PARTIAL_ONLY) "
               f"{m['per_n_rs_seq']['0']['state_bytes_partial'] / 2**20:.2f} MiB whatever n_rs_seq, copied in "
               f"{statistics.median(x['copy_ms'] for x in ck):.2f} ms, restored in "
               f"{statistics.median(x['restore_ms'] for x in ck):.2f} ms (medians); its prefill split at N-4 "
               f"(two calls) {statistics.median(x['prefill_split_s'] for x in ck):.3f} s vs one call "
               f"{statistics.median(m['n_prompt'] / x['prefill_tps'] for x in base):.3f} s")
    return out


def _e(row: dict, key: str) -> str:
    return f"{row[key]:.2e}" if key in row else "-"


def _yn(x) -> str:
    return "-" if x is None else ("yes" if x else "no")


def table(m: dict[str, Any]) -> str:
    lines = [f"{m['model']} (prompt {m['n_prompt']} tokens; split noise {m['noise_floor']:.2e}, "
             f"correct = diffs <= {m['threshold']:.2e})"]
    lines.append(f"{'n_rs_seq':>8} {'k':>4} {'seq_rm':>6} {'diff same':>10} {'diff other':>10} "
                 f"{'split noise':>11} {'correct':>7}")
    for rs, r in m["per_n_rs_seq"].items():
        for row in r["after_prefill"]["cuts"]:
            lines.append(f"{rs:>8} {row['k']:>4} {_yn(row['ok']):>6} {_e(row, 'diff_same_tokens'):>10} "
                         f"{_e(row, 'diff_other_tokens'):>10} {_e(row, 'split_noise'):>11} "
                         f"{_yn(row.get('correct')):>7}")
    for rs, r in m["per_n_rs_seq"].items():
        ap = r["after_prefill"]
        vs0 = "-" if ap["vs_n_rs_seq_0"] is None else f"{ap['vs_n_rs_seq_0']:.2e}"
        second = next((c["second_rollback_ok"] for c in ap["cuts"] if "second_rollback_ok" in c), None)
        lines.append(f"n_rs_seq {rs}: one-call prefill logits vs n_rs_seq 0: {vs0} (logits std "
                     f"{ap['logits_std']:.2f}); a second rollback before any decode accepted: {_yn(second)}")
    lines.append(f"{'n_rs_seq':>8} {'after':>6} {'k':>3} {'seq_rm':>6} {'diff other':>10} {'correct':>7}")
    for rs, r in m["per_n_rs_seq"].items():
        for row in r["snapshots_cover"]:
            other = f"{row['diff_other_tokens']:.2e}" if "diff_other_tokens" in row else "-"
            lines.append(f"{rs:>8} {row['after']:>6} {row['k']:>3} {_yn(row['ok']):>6} {other:>10} "
                         f"{_yn(row.get('correct')):>7}")
    lines.append(f"{'n_rs_seq':>8} {'RS MiB':>8} {'ckpt KiB':>9} {'prefill t/s':>12} {'decode t/s':>11}")
    for rs, r in m["per_n_rs_seq"].items():
        rec = r["recurrent"][0]["size_mib"] if r["recurrent"] else float("nan")
        p, _ = _mean_sd([x["prefill_tps"] for x in r["speed_rounds"]])
        d, _ = _mean_sd([x["decode_tps"] for x in r["speed_rounds"]])
        lines.append(f"{rs:>8} {rec:>8.2f} {r['state_bytes_partial'] / 1024:>9.1f} {p:>12.1f} {d:>11.1f}")
    k = m["kit_checkpoint_rounds"]
    lines.append("kit checkpoint (n_rs_seq 0): copy {:.2f} ms, restore {:.2f} ms, {:.1f} KiB (median of {})".format(
        statistics.median(x["copy_ms"] for x in k), statistics.median(x["restore_ms"] for x in k),
        k[0]["bytes"] / 1024, len(k)))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,small", help="comma list of synthetic qwen35moe sizes")
    ap.add_argument("--threads", type=int, default=1, help="default 1 (a shared 2-core machine)")
    ap.add_argument("--prompt-tokens", type=int, default=520, help="N (default 520: two ubatches of 512)")
    ap.add_argument("--rounds", type=int, default=5, help="speed rounds, interleaved over the contexts")
    ap.add_argument("--noise-factor", type=float, default=3.0,
                    help="a rollback is correct when its max abs logit diff is within this many times the "
                         "model's split noise (default 3)")
    ap.add_argument("--tol", type=float, default=1e-3, help="the threshold's floor (default 1e-3)")
    ap.add_argument("--check-flash-attn", action="store_true",
                    help="flash attention on for the correctness runs too (CPU flash attention is not "
                         "split-invariant: logits then differ by ~0.1 between two fresh runs split differently)")
    ap.add_argument("--no-full-size", action="store_true", help="skip the full-size header memory rows")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=str(HERE / "results" / "rs_rollback_cpu.json"))
    a = ap.parse_args(argv)
    sizes = [s for s in a.models.split(",") if s]
    t_start = time.monotonic()
    meta = bench.machine_info()
    version = synthetic.GENERATOR_VERSION
    meta.update(model=", ".join(f"qwen35moe-{s}-v{version}.gguf (qwenkit.synthetic)" for s in sizes),
                threads=a.threads, suite="rs_rollback", reps=a.rounds, notes=list(a.note),
                settings={"n_ctx": N_CTX, "n_batch": N_BATCH, "n_ubatch": N_UBATCH, "n_seq_max": 1,
                          "flash_attn_correctness": a.check_flash_attn, "flash_attn_speed": True, "kv": "f16",
                          "prompt_tokens": a.prompt_tokens, "noise_factor": a.noise_factor, "tol": a.tol,
                          "cuts": [*CUTS, "N // 2"], "step_cuts": STEP_CUTS, "batch_cuts": BATCH_CUTS})
    load = []   # RESULTS.md shows the range (other processes share the CPU)
    models = []
    for s in sizes:
        print(f"== {s}", flush=True)
        la0 = os.getloadavg()
        models.append(measure_model(s, a.threads, a.prompt_tokens, a.rounds, a.check_flash_attn))
        judge(models[-1], a.noise_factor, a.tol)
        load.append({"model": s, "before": list(la0), "after": list(os.getloadavg())})
        print(table(models[-1]), flush=True)
    doc: dict[str, Any] = {"meta": meta, "rs_rollback": models, "comparisons": comparisons(models)}
    meta["notes"] += [line for m in models for line in findings(m)]
    if not a.no_full_size:
        doc["full_size_memory"] = full_size_memory()
        line = "full-size Qwen3.5-35B-A3B header (no_alloc), llama.cpp's recurrent state in MiB: " + "; ".join(
            f"{r['n_seq_max']} seq n_rs_seq {r['n_rs_seq']}: {r['recurrent_mib']}" for r in doc["full_size_memory"])
        meta["notes"].append(line)
        print(line)
    for line in meta["notes"]:
        print("- " + line)
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    meta["load"] = load
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
