"""Does a quant fit a VRAM + RAM budget? From its header the memory planner decides; from
its file size only, an estimate. (`fit_verdict` is the one function the planner replaces.)"""
from __future__ import annotations

import os
from dataclasses import dataclass

from qwenkit.gguf_info import ModelInfo
from qwenkit.hub.sizes import GiB, human_size

__all__ = ["GPU_RESERVE", "RAM_RESERVE", "Verdict", "add_verdicts", "fit_verdict", "system_ram_bytes"]


# fit_verdict from file size: what a GPU needs beyond the weights (CUDA context, compute
# buffers, an 8K KV cache) and what the OS and a notebook keep of system RAM.
GPU_RESERVE = int(1.5 * GiB)
RAM_RESERVE = 4 * GiB


@dataclass(frozen=True)
class Verdict:
    """Does a model fit a VRAM + RAM budget? `kind` is "gpu", "offload" or "no"."""
    kind: str
    text: str
    need_bytes: int
    vram_bytes: int
    ram_bytes: int | None
    n_cpu_moe: int | None = None  # expert layers to keep in RAM (an estimate until the planner)
    source: str = "file size"

    def __str__(self) -> str:
        return self.text

    @property
    def fits(self) -> bool:
        return self.kind != "no"


def fit_verdict(info_or_size: ModelInfo | int, vram_bytes: int, ram_bytes: int | None = None,
                n_ctx: int = 8192, type_k: str = "f16", type_v: str = "f16") -> Verdict:
    """Does a model fit `vram_bytes` of GPU memory, with `ram_bytes` of system RAM for the
    MoE experts llama.cpp can keep there (--n-cpu-moe)?

    Given a ModelInfo (a local or remote header), the memory planner decides
    (`qwenkit.plan.fit_report`: weights per layer, KV only where the model has it, recurrent
    state, compute buffers, CUDA context) at `n_ctx` with the given KV types. Given only a
    file size, an estimate: the size plus GPU_RESERVE."""
    vram_txt = f"{vram_bytes / GiB:.0f} GB VRAM" if vram_bytes % GiB == 0 else f"{vram_bytes / GiB:.1f} GiB VRAM"
    if isinstance(info_or_size, ModelInfo):
        return _planned_verdict(info_or_size, vram_bytes, ram_bytes, n_ctx, type_k, type_v, vram_txt)
    need = int(info_or_size) + GPU_RESERVE
    if need <= vram_bytes:
        return Verdict("gpu", f"fits in {vram_txt} ({human_size(vram_bytes - need)} to spare; estimate from "
                       "the file size)", need, vram_bytes, ram_bytes, 0, "file size")
    ram_free = max((ram_bytes or 0) - RAM_RESERVE, 0)
    if need - vram_bytes <= ram_free:
        return Verdict("offload", f"needs about {human_size(need)}: may fit {vram_txt} with "
                       f"{human_size(need - vram_bytes)} of MoE experts in system RAM (estimate from the "
                       "file size; read the header for a plan)", need, vram_bytes, ram_bytes, None, "file size")
    ram_txt = f" + {ram_bytes / GiB:.0f} GB RAM" if ram_bytes else ""
    return Verdict("no", f"does not fit: needs about {human_size(need)}, have {vram_txt}{ram_txt}", need,
                   vram_bytes, ram_bytes, None, "file size")


def _planned_verdict(info: ModelInfo, vram_bytes: int, ram_bytes: int | None, n_ctx: int,
                     type_k: str, type_v: str, vram_txt: str) -> Verdict:
    from qwenkit import plan as planner
    from qwenkit.config import RunConfig

    n_ctx = min(n_ctx, info.context_length or n_ctx)
    ram_budget = max(ram_bytes - RAM_RESERVE, 0) if ram_bytes else None
    cfg = RunConfig(model=str(info.source), n_ctx=n_ctx, type_k=type_k, type_v=type_v)
    r = planner.fit_report(info, vram_bytes, cfg, ram_budget=ram_budget)
    p, cfg = r.plan, r.cfg
    src = "memory plan"
    ctx = f"at n_ctx {n_ctx} KV {type_k}/{type_v}"
    if not r.fits:
        return Verdict("no", f"does not fit {ctx}: {r.reason}", p.gpu_total, vram_bytes, ram_bytes, None, src)
    if cfg.n_cpu_moe == 0 and cfg.n_gpu_layers < 0:
        return Verdict("gpu", f"fits in {vram_txt} {ctx}: {human_size(p.gpu_total)} planned, "
                       f"{human_size(vram_bytes - p.gpu_total)} to spare", p.gpu_total, vram_bytes, ram_bytes, 0, src)
    where = (f"--n-cpu-moe {cfg.n_cpu_moe}" if cfg.n_gpu_layers < 0
             else f"--n-cpu-moe {cfg.n_cpu_moe}, {cfg.n_gpu_layers} layers on the GPU")
    return Verdict("offload", f"fits {vram_txt} {ctx} with {where}: {human_size(p.gpu_total)} on the GPU, "
                   f"{human_size(p.cpu_total)} in system RAM (slower decode)", p.gpu_total, vram_bytes,
                   ram_bytes, cfg.n_cpu_moe, src)


def system_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def add_verdicts(quants, vram_gb, ram_gb) -> None:
    if vram_gb is None:
        return
    ram = int(ram_gb * GiB) if ram_gb is not None else system_ram_bytes()
    for q in quants:
        q.verdict = fit_verdict(q.info if q.info is not None else q.size, int(vram_gb * GiB), ram)
