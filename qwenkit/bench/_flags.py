"""The one place in qwenkit.bench that turns a RunConfig into llama.cpp command-line flags
(llama-bench, llama-server). Private on purpose: RunConfig is to become the only renderer of
these flags (issue 16); when it has `llama_bench_args()` / `llama_server_args()`, these two
functions go and their callers use RunConfig's."""
from __future__ import annotations

from qwenkit.config import RunConfig

__all__ = ["llama_bench_args", "llama_server_args"]


def _ngl(cfg: RunConfig) -> str:
    return str(999 if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers)  # -1 (all) is 999 to llama.cpp


def llama_bench_args(cfg: RunConfig) -> list[str]:
    """llama-bench flags for the settings of a RunConfig, as (flag, value) pairs (n_ctx does
    not apply: llama-bench sizes its context to p + n + d)."""
    return ["-t", str(cfg.n_threads), "-ngl", _ngl(cfg),
            "-fa", "1" if cfg.flash_attn else "0", "-ctk", cfg.type_k, "-ctv", cfg.type_v,
            "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch), "-ncmoe", str(cfg.n_cpu_moe)]


def llama_server_args(cfg: RunConfig) -> list[str]:
    """llama-server flags for the settings of a RunConfig (one slot, no web UI; the model, host
    and port are the caller's). -c is cfg.n_ctx: llama-server's TOTAL context over its slots."""
    return ["-c", str(cfg.n_ctx), "-t", str(cfg.n_threads),
            "-tb", str(cfg.n_threads_batch or cfg.n_threads),
            "-ngl", _ngl(cfg),
            "-fa", "on" if cfg.flash_attn else "off", "-ctk", cfg.type_k, "-ctv", cfg.type_v,
            "-b", str(cfg.n_batch), "-ub", str(cfg.n_ubatch), "-np", "1", "--no-webui",
            "-a", cfg.alias, *(["--n-cpu-moe", str(cfg.n_cpu_moe)] if cfg.n_cpu_moe else [])]
