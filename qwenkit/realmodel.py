"""One path to the real model: `REPO:QUANT` -> a verified local GGUF -> a config fitted to the GPU.

    python -m qwenkit serve --model unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M --fit

downloads the quant if it is not on disk (resumable, SHA-256 verified: `qwenkit.hub`), reads
its header, plans memory and picks the fewest expert layers to keep in system RAM for the
GPU's free memory (`qwenkit.plan.fit_report`), prints the plan, and serves that config.
"""
from __future__ import annotations

from pathlib import Path

from qwenkit.config import RunConfig
from qwenkit.errors import ConfigError, GGUFError

__all__ = ["fit_config", "gpu_budget", "is_hub_spec", "resolve_model"]


def is_hub_spec(spec: str) -> bool:
    """'owner/repo:QUANT' (not an existing file, not a Windows drive path)."""
    if Path(spec).expanduser().exists():
        return False
    repo, sep, quant = spec.rpartition(":")
    return bool(sep and quant and "/" in repo and not repo.endswith((".gguf", "/")))


def resolve_model(spec: str, *, download: bool = True, progress: bool = True) -> Path:
    """A GGUF path for `spec`: a local file as is, or `REPO:QUANT` from the kit's models folder
    (or huggingface_hub's cache), downloaded first when missing and `download` is True."""
    if not is_hub_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise GGUFError(f"model file {path} does not exist",
                            "pass a GGUF path, or REPO:QUANT (e.g. unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M) "
                            "to download one; `python -m qwenkit models` lists what is on disk")
        return path
    from qwenkit import hub

    repo, _, quant = spec.rpartition(":")
    local = hub.find_local(repo, quant)
    if local is not None:
        return Path(local.path)
    if not download:
        raise GGUFError(f"{repo} {quant} is not on disk",
                        f"download it: python -m qwenkit download {repo} {quant}")
    return Path(hub.download(repo, quant, progress=progress).path)


def gpu_budget() -> int:
    """Free memory of the first GPU as llama.cpp sees it; a clear error without one."""
    from qwenkit.engine import gpu_free_bytes

    free = gpu_free_bytes()
    if not free:
        raise ConfigError("--fit needs a GPU, and this llama-cpp-python sees none (CPU-only build or no GPU)",
                          "check with `python -m qwenkit doctor`; to plan for a card you do not have here, "
                          "pass its memory: --vram 16GiB")
    return int(free)


def fit_config(cfg: RunConfig, vram_budget: int | None = None, ram_budget: int | None = None):
    """`plan.fit_report` for cfg's model, n_ctx and KV types within the GPU budget (default:
    the GPU's free memory). Returns the FitResult; raises ConfigError when nothing fits."""
    from qwenkit.gguf_info import read_model_info
    from qwenkit.plan import fit_report

    info = read_model_info(cfg.model)
    budget = vram_budget if vram_budget is not None else gpu_budget()
    result = fit_report(info, budget, cfg, ram_budget=ram_budget)
    if not result.fits:
        raise ConfigError(f"{Path(cfg.model).name} does not fit: {result.reason}",
                          "use a smaller n_ctx or a quantized KV cache (--type_k q8_0 --type_v q8_0), "
                          "or a smaller quant (python -m qwenkit quants)")
    return result
