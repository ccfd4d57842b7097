"""Models a benchmark needs besides the default one: the full-size random synthetic
Qwen3.5-35B-A3B for GPU runs, and a logit_bias that keeps a model from ending its answers
early (so that every answer has max_tokens tokens)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from qwenkit.bench.results import BenchError

__all__ = ["SYNTHETIC_MODEL_NAME", "eog_bias", "synthetic_model"]

SYNTHETIC_MODEL_NAME = "qwen35moe-full-random-q4_k_m.gguf"


def synthetic_model(model_dir: str | Path) -> str:
    """The full-size random synthetic Qwen3.5-35B-A3B in model_dir, written once (~15 s on a
    GPU host; progress on stderr)."""
    from qwenkit.synthetic import write_model
    path = Path(model_dir) / SYNTHETIC_MODEL_NAME
    if not path.is_file():
        t = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing the full-size random qwen35moe to {path} ...", file=sys.stderr, flush=True)
        write_model(str(path), arch="qwen35moe", size="full", weights="random", progress=False)
        print(f"  written in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    return str(path)


def eog_bias(model: str) -> dict[str, float]:
    """logit_bias -100 for every end-of-generation token of the model's vocabulary (the model
    loaded vocab only: no weights, no context; llama.cpp's loader log kept off the terminal)."""
    from qwenkit.llama_api import C as lc
    from qwenkit.llamalog import capture_log
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.vocab_only = True
    with capture_log(echo=False):
        m = lc.llama_model_load_from_file(model.encode(), mp)
    if not m:
        raise BenchError(f"cannot read the vocabulary of {model}", "check that the path is a GGUF model")
    try:
        v = lc.llama_model_get_vocab(m)
        return {str(t): -100.0 for t in range(lc.llama_vocab_n_tokens(v)) if lc.llama_vocab_is_eog(v, t)}
    finally:
        lc.llama_model_free(m)
