"""Notes on the KV cache types of a run: only what applies to this build and these settings,
each quoting its own measurement or saying that it was not measured.

* A CUDA build gets the flash-attention note for K/V pairs without a matched kernel; a CPU-only
  build (`llama_cpp.llama_supports_gpu_offload()` false) does not: that note is about CUDA kernels.
* A quantized KV pair gets the decode speed measured for that very pair on the Qwen3.5-35B-A3B
  shape (GPU build), or on the default model (CPU build), or the sentence "not measured".
* Layer counts and the memory a KV type saves come from the model's GGUF header, never from
  the model's name.

    notes(cfg)                        # build detected, header read from cfg.model when it exists
    notes(cfg, gpu=False, info=info)  # as the tuning panel asks
"""
from __future__ import annotations

from pathlib import Path

from qwenkit.units import format_bytes

__all__ = ["DEFAULT_MODEL_CPU_D4096", "DEFAULT_MODEL_CPU_WHERE", "MATCHED_FA_PAIRS", "QWEN35_GPU", "QWEN35_GPU_WHERE",
           "UNQUANTIZED", "gpu_build", "memory_note", "notes", "speed_note"]

# K-V pairs a default CUDA build compiles flash-attention kernels for (its build log prints
# "FlashAttention K-V type combinations: f16-f16;q4_0-q4_0;q8_0-q8_0;bf16-bf16").
MATCHED_FA_PAIRS = {("f16", "f16"), ("q4_0", "q4_0"), ("q8_0", "q8_0"), ("bf16", "bf16")}

# llama-bench tg128 decode tok/s on the Qwen3.5-35B-A3B shape (full-size random-weight model,
# Q4_K_M-like, 19.70 GiB), H200, CUDA build of llama.cpp 0c1e570, -fa 1 -ngl 99, 3 repetitions:
# (at depth 0, at depth 16384). benchmarks/results/gpu_suite.json, stage "kv" (tests check these
# against that file).
QWEN35_GPU = {
    ("f16", "f16"): (247.5, 238.9),
    ("q8_0", "q8_0"): (237.4, 215.0),
    ("q4_0", "q4_0"): (236.7, 213.3),
    ("q8_0", "f16"): (241.7, 225.6),
}
QWEN35_GPU_WHERE = "Qwen3.5-35B-A3B shape, H200, llama-bench tg128, llama.cpp 0c1e570"
# Decode speed relative to f16/f16 with 4,096 tokens in the cache, on a CPU build: the default
# model (SmolLM2-135M-Instruct Q4_1, dense, 30 layers), 2-core CPU, llama-bench tg64, median of
# the within-round ratios over 5 interleaved rounds. benchmarks/results/kv_quality.json.
DEFAULT_MODEL_CPU_D4096 = {("q8_0", "q8_0"): 0.78, ("q4_0", "q4_0"): 0.45, ("q8_0", "f16"): 0.91}
DEFAULT_MODEL_CPU_WHERE = "SmolLM2-135M, the default model, 2-core CPU build, llama-bench tg64 at depth 4096"

UNQUANTIZED = {"f32", "f16", "bf16"}


def gpu_build() -> bool:
    """True when this llama-cpp-python was built with a GPU backend."""
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - the kit always has it
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.0f} %"


def _pair(k: str, v: str) -> str:
    return f"K {k}/V {v}"


def _header(cfg):
    p = Path(cfg.model)
    if not p.is_file():
        return None
    try:
        from qwenkit.gguf_info import read_model_info
        return read_model_info(p)
    except Exception:  # noqa: BLE001 - a note must never break a run; the load reports bad files
        return None


def memory_note(cfg, info) -> str | None:
    """What the pair saves on this model at cfg.n_ctx, from its header (None without one)."""
    if info is None or not info.kv_layers:
        return None
    n = cfg.n_ctx or info.context_length or 0
    f16 = info.kv_bytes_per_token("f16", "f16") * n
    this = info.kv_bytes_per_token(cfg.type_k, cfg.type_v) * n

    def mib(b: int) -> str:
        return format_bytes(b, "MiB", 1, grouping=True)

    return (f"this model has a KV cache in {len(info.kv_layers)} of its {info.n_layer} layers (GGUF header): "
            f"{n:,} tokens take {mib(f16)} in f16/f16 and {mib(this)} with "
            f"{_pair(cfg.type_k, cfg.type_v)} ({mib(f16 - this)} saved)")


def speed_note(k: str, v: str, gpu: bool) -> str:
    """The measured decode cost of a quantized pair on this kind of build, or "not measured"."""
    if gpu:
        m, base = QWEN35_GPU.get((k, v)), QWEN35_GPU[("f16", "f16")]
        if m is None:
            return (f"{_pair(k, v)} was not measured on the Qwen3.5-35B-A3B shape (measured: "
                    + ", ".join(f"{a}/{b}" for a, b in QWEN35_GPU if (a, b) != ("f16", "f16"))
                    + "); measure it before relying on it (notebook 07)")
        return (f"measured for {_pair(k, v)} ({QWEN35_GPU_WHERE}): {m[0]} tok/s vs {base[0]} for f16/f16 at "
                f"depth 0 ({_pct(m[0], base[0])}), {m[1]} vs {base[1]} at depth 16,384 ({_pct(m[1], base[1])})")
    r = DEFAULT_MODEL_CPU_D4096.get((k, v))
    s = f"{_pair(k, v)} was not measured on the Qwen3.5-35B-A3B shape with a CPU build"
    if r is None:
        return s + " nor on the default model; measure it before relying on it (notebook 07)"
    return s + f"; measured on a CPU build ({DEFAULT_MODEL_CPU_WHERE}): {r:.2f}x the f16/f16 decode speed"


def notes(cfg, *, gpu: bool | None = None, info=None) -> list[str]:
    """Notes for a RunConfig on this build (`gpu` None: detect it) and model (`info` None: read
    the header of cfg.model when it is a file). Advice, not errors: an empty list is normal."""
    gpu = gpu_build() if gpu is None else gpu
    out = []
    k, v = cfg.type_k, cfg.type_v
    if gpu and cfg.flash_attn and (k, v) not in MATCHED_FA_PAIRS:
        s = (f"K={k}/V={v} has no matched flash-attention kernel in a default CUDA build "
             "(-DGGML_CUDA_FA_ALL_QUANTS=ON builds it); reports (llama.cpp #27109) say such pairs run "
             "attention on the CPU, 8-30x slower. ")
        if (k, v) in QWEN35_GPU:
            m, base = QWEN35_GPU[(k, v)], QWEN35_GPU[("f16", "f16")]
            s += (f"Measured for this pair ({QWEN35_GPU_WHERE}): {m[0]} tok/s vs {base[0]} for f16/f16 "
                  f"({_pct(m[0], base[0])}), no CPU fallback.")
        else:
            s += "This pair was not measured on the Qwen3.5-35B-A3B shape."
        out.append(s)
    if k not in UNQUANTIZED or v not in UNQUANTIZED:
        s = f"a quantized KV cache ({k}/{v}) buys memory, not speed: " + speed_note(k, v, gpu) + "."
        mem = memory_note(cfg, info if info is not None else _header(cfg))
        if mem:
            s += " " + mem[0].upper() + mem[1:] + "; quantize only when memory is short."
        out.append(s)
    return out
