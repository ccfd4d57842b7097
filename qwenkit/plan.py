"""Memory plan for a RunConfig, from the GGUF header alone, and a fit to a VRAM budget.

    info = read_model_info(path)
    p = plan(info, cfg)            # MemoryPlan: bytes on the GPU and in system RAM, by part
    print(p.table())
    cfg = fit(info, 16 * GiB, RunConfig(model=path, n_ctx=65536, type_k="q8_0", type_v="q8_0"))

Where llama.cpp puts things (llama-model.cpp `load_tensors`, llama 0c1e570):
* the input layer (`token_embd`) always stays in system RAM;
* with `n_gpu_layers = g`, the *last* g of the (n_layer + 1) layers go to the GPU, the
  output layer (`output`, `output_norm`) counting as the last; -1 means all;
* `n_cpu_moe = N` keeps the routed-expert tensors of blocks 0..N-1 in system RAM;
* a model without `output.weight` (tied embeddings) gets a second copy of `token_embd` on
  the output layer's device;
* the KV cache and the recurrent state of a layer live on that layer's device; only layers
  with attention have a KV cache (10 of 40 in Qwen3.5-35B-A3B).

Sizes that llama.cpp computes exactly (weights, KV, recurrent state, output buffer) are
computed exactly here. The compute (scratch) buffer is a model of the worst-case graph
llama.cpp reserves for one micro-batch (`n_ubatch` tokens over the whole context): the
logits (n_ubatch x n_vocab x 4 B) and the attention mask (n_ctx x n_ubatch) dominate; the
per-token layer terms were calibrated against llama.cpp's own no-alloc reservations
(`qwenkit.engine.probe`) for llama, qwen3moe and qwen35moe shapes. GPU-only items (CUDA
context, the expert copies llama.cpp's scheduler makes on the GPU when expert weights sit
in system RAM and a batch is large) are estimates until measured by `benchmarks/fit_gpu.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qwenkit.config import KV_BYTES_PER_ELEMENT, RunConfig
from qwenkit.errors import ConfigError
from qwenkit.units import GiB, MiB

__all__ = ["MiB", "GiB", "GPU_RUNTIME_BYTES", "DEFAULT_MARGIN_BYTES", "MARGIN_FRACTION",
           "batch_sizes", "slots_of", "compute_phases", "Row", "MemoryPlan", "plan", "FitResult",
           "fit_report", "fit", "compare", "target_model_info", "offload_sweep", "fit_table",
           "compare_table", "max_parallel"]


# CUDA context, cuBLAS handles and kernel images that a CUDA process holds on the card beyond
# the buffers llama.cpp reports (an estimate: benchmarks/fit_gpu.py measures it with NVML).
GPU_RUNTIME_BYTES = 400 * MiB
# minimum head-room the fit leaves on the card, on top of everything planned
DEFAULT_MARGIN_BYTES = 256 * MiB
MARGIN_FRACTION = 0.02


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# ------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class _Dims:
    E: int          # n_embd
    V: int          # n_vocab
    q_proj: int     # width of attn_q (Qwen3.5 adds a gate: 2 x heads x head_dim)
    q: int          # heads x head_dim
    n_head: int
    kv: int         # KV heads x head_dim
    n_ff: int       # dense FFN width (0 for MoE)
    uf: int         # experts used x expert FFN width (0 for dense)
    X: int          # expert count
    d_inner: int
    key_dim: int    # recurrent key width (state size x groups)
    hybrid: bool


def _dims(info) -> _Dims:
    def width(suffix: str) -> int:
        for t in info.tensors:
            if t.name.endswith(suffix) and len(t.shape) >= 2:
                return int(t.shape[1])
        return 0

    n_head = max(info.n_head) if info.n_head else 0
    kv_layers = list(info.kv_layers)
    n_head_kv = max((info.n_head_kv(i) for i in kv_layers), default=0)
    q = n_head * info.head_dim_k
    md = info.metadata
    n_ff = md.get(f"{info.arch}.feed_forward_length")
    if isinstance(n_ff, list):
        n_ff = max(n_ff) if n_ff else 0
    n_ff = int(n_ff or 0) or width("ffn_up.weight")
    uf = info.expert_used_count * (info.expert_ff or 0) if info.is_moe else 0
    return _Dims(
        E=info.n_embd, V=int(info.n_vocab or width("token_embd.weight") or 0),
        q_proj=width("attn_q.weight") or q, q=q, n_head=n_head, kv=n_head_kv * info.head_dim_k,
        n_ff=0 if info.is_moe else n_ff, uf=uf, X=info.expert_count,
        d_inner=info.ssm_inner_size, key_dim=info.ssm_state_size * info.ssm_group_count,
        hybrid=bool(info.recurrent_layers))


def batch_sizes(cfg: RunConfig, n_ctx: int) -> tuple[int, int, int]:
    """(n_batch, n_ubatch, kv cells) as llama-cpp-python and llama.cpp derive them. The kit's
    server makes one context of `parallel` x n_ctx cells (n_ctx is per slot)."""
    n_batch = min(n_ctx, cfg.n_batch)
    n_ubatch = min(n_batch, cfg.n_ubatch)
    return n_batch, n_ubatch, _pad(n_ctx * slots_of(cfg), 256)


def slots_of(cfg: RunConfig) -> int:
    """Sequence slots a plan counts (0, the server's automatic choice, is planned as 1)."""
    return max(1, cfg.parallel)


def compute_phases(info, cfg: RunConfig, n_ctx: int | None = None) -> dict[str, int]:
    """Peak scratch bytes of the graph phases llama.cpp reserves for one micro-batch.
    The compute buffer is their maximum (ggml-alloc reuses memory between phases)."""
    d = _dims(info)
    n_ctx = n_ctx or _n_ctx(info, cfg)
    _, T, n_kv = batch_sizes(cfg, n_ctx)
    f = 4  # f32 activations
    has_kv = bool(info.kv_layers)
    mask = n_kv * T * (2 if cfg.flash_attn else 4) if has_kv else 0
    out: dict[str, int] = {}
    out["output"] = T * d.V * f + (4 if d.hybrid else 2) * T * d.E * f
    if has_kv:
        attn = mask + T * f * (3 * d.E + 2 * d.q_proj + 2 * d.kv + 8)
        if not cfg.flash_attn:
            attn += T * n_kv * d.n_head * f  # KQ scores, f32
        out["attention"] = attn
    if d.hybrid:
        per_tok = (2 * d.E + 4 * d.uf + 2.5 * d.X + 2 * d.q + 2.5 * d.d_inner + 5 * d.key_dim - 1800)
        out["recurrent+ffn"] = mask + int(T * f * max(3 * d.E, per_tok))
    elif d.uf:
        out["ffn"] = mask + T * f * (3 * d.E + 3 * d.uf + d.q + 2 * d.X + 8)
    else:
        out["ffn"] = mask + T * f * (3 * d.E + 3 * d.n_ff + d.q + 8)
    return out


def _n_ctx(info, cfg: RunConfig) -> int:
    return cfg.n_ctx or int(info.context_length or 4096)


# ------------------------------------------------------------------------------------- plan
@dataclass
class Row:
    part: str        # "weights", "KV cache", ...
    detail: str
    gpu: int = 0
    cpu: int = 0

    @property
    def total(self) -> int:
        return self.gpu + self.cpu


@dataclass
class MemoryPlan:
    """Bytes on the GPU and in system RAM for one config. `rows` is the readable breakdown;
    the attributes hold the numbers the tests compare with llama.cpp."""
    cfg: RunConfig
    model: str
    gpu: bool                          # planned for a GPU build (False: everything in RAM)
    n_layer: int
    gpu_layers: tuple[int, ...]        # blocks on the GPU
    cpu_moe_layers: tuple[int, ...]    # blocks whose experts stay in system RAM
    output_on_gpu: bool
    weights_gpu_by_layer: dict[Any, int] = field(default_factory=dict)   # layer or "input"/"output"
    weights_cpu_by_layer: dict[Any, int] = field(default_factory=dict)
    experts_cpu_by_layer: dict[int, int] = field(default_factory=dict)
    weights_file: int = 0              # sum of tensor sizes (llama_model_size)
    kv_k: tuple[int, int] = (0, 0)     # (gpu, cpu)
    kv_v: tuple[int, int] = (0, 0)
    kv_cells: int = 0
    recurrent: tuple[int, int] = (0, 0)
    compute: tuple[int, int] = (0, 0)
    compute_phases: dict[str, int] = field(default_factory=dict)
    output_buffer: int = 0             # host
    runtime: int = 0                   # CUDA context estimate (GPU)
    margin: int = 0                    # safety margin (GPU)
    notes: list[str] = field(default_factory=list)

    # ---- totals
    @property
    def weights_gpu(self) -> int:
        return sum(self.weights_gpu_by_layer.values())

    @property
    def weights_cpu(self) -> int:
        return sum(self.weights_cpu_by_layer.values())

    @property
    def weights(self) -> int:
        """Bytes of weights llama.cpp allocates (tied embeddings on a GPU count twice)."""
        return self.weights_gpu + self.weights_cpu

    @property
    def kv(self) -> int:
        return sum(self.kv_k) + sum(self.kv_v)

    @property
    def kv_k_bytes(self) -> int:
        return sum(self.kv_k)

    @property
    def kv_v_bytes(self) -> int:
        return sum(self.kv_v)

    @property
    def recurrent_bytes(self) -> int:
        return sum(self.recurrent)

    @property
    def compute_bytes(self) -> int:
        return sum(self.compute)

    @property
    def gpu_total(self) -> int:
        """Everything planned on the card, CUDA context and margin included."""
        if not self.gpu:
            return 0
        return (self.weights_gpu + self.kv_k[0] + self.kv_v[0] + self.recurrent[0] + self.compute[0]
                + self.runtime + self.margin)

    @property
    def cpu_total(self) -> int:
        return (self.weights_cpu + self.kv_k[1] + self.kv_v[1] + self.recurrent[1] + self.compute[1]
                + self.output_buffer)

    @property
    def llama_total(self) -> int:
        """What llama.cpp itself reports, summed: weights (file size), KV, recurrent state,
        compute and output buffers: the figure `engine.probe().total_bytes` gives."""
        return (self.weights_file + self.kv + self.recurrent_bytes + self.compute_bytes
                + self.output_buffer)

    # ---- presentation
    @property
    def rows(self) -> list[Row]:
        g = self.gpu
        exp_cpu = sum(self.experts_cpu_by_layer.values())
        out = [
            Row("weights", "input layer (token_embd, always RAM)", 0, self.weights_cpu_by_layer.get("input", 0)),
            Row("weights", "blocks without CPU experts" if exp_cpu else "blocks",
                sum(v for k, v in self.weights_gpu_by_layer.items() if isinstance(k, int)),
                sum(v for k, v in self.weights_cpu_by_layer.items() if isinstance(k, int)) - exp_cpu),
        ]
        if self.cpu_moe_layers:
            out.append(Row("weights", f"experts of blocks 0-{max(self.cpu_moe_layers)} (n_cpu_moe="
                           f"{len(self.cpu_moe_layers)})", 0, exp_cpu))
        out.append(Row("weights", "output layer", self.weights_gpu_by_layer.get("output", 0),
                       self.weights_cpu_by_layer.get("output", 0)))
        out.append(Row("KV cache", f"K {self.cfg.type_k}, {self.kv_cells} cells", *self.kv_k))
        out.append(Row("KV cache", f"V {self.cfg.type_v}", *self.kv_v))
        if self.recurrent_bytes:
            out.append(Row("recurrent state", f"conv + SSM state, f32, {slots_of(self.cfg)} sequence(s)",
                           *self.recurrent))
        out.append(Row("compute buffers", f"n_ubatch {batch_sizes(self.cfg, max(self.kv_cells, 1))[1]}",
                       *self.compute))
        out.append(Row("output buffer", "logits of one token", 0, self.output_buffer))
        if g:
            out.append(Row("CUDA context", "estimate", self.runtime, 0))
            out.append(Row("safety margin", "", self.margin, 0))
        return out

    def table(self, unit: int = MiB) -> str:
        u = "MiB" if unit == MiB else "GiB"
        w = 60
        lines = [self.cfg.summary(),
                 f"{'part':<16}{'':<{w - 16}}{'GPU ' + u:>12}{'RAM ' + u:>12}"]
        for r in self.rows:
            lines.append(f"{r.part:<16}{r.detail[:w - 17]:<{w - 16}}{r.gpu / unit:>12,.1f}{r.cpu / unit:>12,.1f}")
        lines.append(f"{'total':<{w}}{self.gpu_total / unit:>12,.1f}{self.cpu_total / unit:>12,.1f}")
        if self.prompt_cache:
            lines.append(f"{'+ prompt cache':<16}{self._cache_detail[:w - 17]:<{w - 16}}{0:>12,.1f}"
                         f"{self.prompt_cache / unit:>12,.1f}")
        if not self.gpu:
            lines.append("(planned for a build without GPU offload: everything is in system RAM)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    @property
    def prompt_cache(self) -> int:
        """Host RAM the kit's server may fill with its prompt cache: a ceiling it reaches only as
        chats come back; not in cpu_total, which is what llama.cpp itself allocates (the
        in-kernel engine and the tuning panel have no cache)."""
        return self.cfg.prompt_cache_bytes(self.gpu)

    @property
    def _cache_detail(self) -> str:
        return "kit server / ChatSession, at most"

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html
        head = f"<b>{html.escape(self.cfg.summary())}</b>"
        tr = "".join(f"<tr><td>{html.escape(r.part)}</td><td>{html.escape(r.detail)}</td>"
                     f"<td style='text-align:right'>{r.gpu / MiB:,.1f}</td>"
                     f"<td style='text-align:right'>{r.cpu / MiB:,.1f}</td></tr>" for r in self.rows)
        tr += (f"<tr><td><b>total</b></td><td></td><td style='text-align:right'><b>{self.gpu_total / MiB:,.1f}</b></td>"
               f"<td style='text-align:right'><b>{self.cpu_total / MiB:,.1f}</b></td></tr>")
        if self.prompt_cache:
            tr += (f"<tr><td>+ prompt cache</td><td>{html.escape(self._cache_detail)}</td>"
                   f"<td style='text-align:right'>0.0</td>"
                   f"<td style='text-align:right'>{self.prompt_cache / MiB:,.1f}</td></tr>")
        notes = "".join(f"<br><i>note: {html.escape(n)}</i>" for n in self.notes)
        return (f"{head}<table><tr><th>part</th><th></th><th>GPU MiB</th><th>RAM MiB</th></tr>{tr}</table>{notes}")

    def to_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model, config=self.cfg.to_dict(), gpu=self.gpu, gpu_total=self.gpu_total,
            cpu_total=self.cpu_total, llama_total=self.llama_total, weights_gpu=self.weights_gpu,
            prompt_cache=self.prompt_cache,
            weights_cpu=self.weights_cpu, weights_file=self.weights_file,
            experts_cpu=sum(self.experts_cpu_by_layer.values()),
            kv_k=list(self.kv_k), kv_v=list(self.kv_v), kv_cells=self.kv_cells,
            recurrent=list(self.recurrent), compute=list(self.compute), compute_phases=self.compute_phases,
            output_buffer=self.output_buffer, runtime=self.runtime, margin=self.margin,
            gpu_layers=len(self.gpu_layers), cpu_moe_layers=len(self.cpu_moe_layers),
            output_on_gpu=self.output_on_gpu, notes=self.notes)


def _layer_on_gpu(info, cfg: RunConfig, gpu: bool) -> tuple[list[bool], bool]:
    n_all = info.n_layer_all
    if not gpu:
        return [False] * n_all, False
    g = n_all + 1 if cfg.n_gpu_layers < 0 else min(cfg.n_gpu_layers, n_all + 1)
    start = max(n_all + 1 - g, 0)
    return [il >= start for il in range(n_all)], (n_all >= start and g > 0)


def plan(info, cfg: RunConfig, *, gpu: bool = True, margin: int | None = None,
         runtime: int | None = None) -> MemoryPlan:
    """The memory plan for `cfg` on the model described by `info` (a gguf_info.ModelInfo).

    gpu=True plans for a CUDA build (layers per n_gpu_layers / n_cpu_moe); gpu=False for a
    build without GPU offload (everything in system RAM, as llama.cpp does there)."""
    n_ctx = _n_ctx(info, cfg)
    on_gpu, out_gpu = _layer_on_gpu(info, cfg, gpu)
    n_moe = min(cfg.n_cpu_moe, info.n_layer_all) if info.is_moe else 0
    p = MemoryPlan(cfg=cfg, model=_model_name(info), gpu=gpu, n_layer=info.n_layer,
                   gpu_layers=tuple(i for i, g in enumerate(on_gpu) if g),
                   cpu_moe_layers=tuple(range(n_moe)), output_on_gpu=out_gpu)

    # ---- weights
    wg: dict[Any, int] = {}
    wc: dict[Any, int] = {}
    ec: dict[int, int] = {}
    names = {t.name for t in info.tensors}
    for t in info.tensors:
        p.weights_file += t.nbytes
        il = t.layer
        if il is None:
            key = "input" if t.name.startswith("token_embd") else "output"
            dev_gpu = out_gpu if key == "output" else False
        else:
            key = il
            dev_gpu = on_gpu[il] if il < len(on_gpu) else False
            if t.is_expert and il < n_moe:
                dev_gpu = False
                ec[il] = ec.get(il, 0) + t.nbytes
        target = wg if dev_gpu else wc
        target[key] = target.get(key, 0) + t.nbytes
    if "output.weight" not in names and out_gpu:
        # tied embeddings: llama.cpp loads token_embd a second time on the output device
        tok = sum(t.nbytes for t in info.tensors if t.name == "token_embd.weight")
        wg["output"] = wg.get("output", 0) + tok
        p.notes.append("tied embeddings: token_embd is also loaded on the GPU as the output matrix")
    p.weights_gpu_by_layer, p.weights_cpu_by_layer, p.experts_cpu_by_layer = wg, wc, ec

    # ---- KV cache and recurrent state
    _, T, cells = batch_sizes(cfg, n_ctx)
    p.kv_cells = cells
    bk, bv = KV_BYTES_PER_ELEMENT[cfg.type_k], KV_BYTES_PER_ELEMENT[cfg.type_v]
    kg = kc = vg = vc = 0
    for il in info.kv_layers:
        k = int(cells * info.n_head_kv(il) * info.head_dim_k * bk)
        v = int(cells * info.n_head_kv(il) * info.head_dim_v * bv)
        if on_gpu[il]:
            kg, vg = kg + k, vg + v
        else:
            kc, vc = kc + k, vc + v
    p.kv_k, p.kv_v = (kg, kc), (vg, vc)
    r, s = info.recurrent_state_elements
    per_layer = (r + s) * 4 * slots_of(cfg)  # one recurrent state per sequence slot
    rg = sum(per_layer for il in info.recurrent_layers if on_gpu[il])
    rc = sum(per_layer for il in info.recurrent_layers if not on_gpu[il])
    p.recurrent = (rg, rc)

    # ---- compute and output buffers
    phases = compute_phases(info, cfg, n_ctx)
    peak = max(phases.values())
    d = _dims(info)
    if gpu:
        # a CUDA build keeps a GPU compute buffer even with n_gpu_layers=0 (large batches are
        # still offloaded to the card)
        copies = 0
        if ec or (not all(on_gpu)):
            # For batches >= 32 llama.cpp's scheduler runs matrix products whose weights sit in
            # system RAM on the GPU, copying that layer's weights into the GPU compute buffer.
            cpu_layer_w = [wc.get(il, 0) for il in range(info.n_layer_all)]
            copies = max(cpu_layer_w, default=0)
            phases["weight copies (op offload)"] = copies
        ffn_like = max((v for k, v in phases.items() if k not in ("output", "weight copies (op offload)")), default=0)
        gpu_compute = max(phases["output"] if out_gpu else 0, ffn_like + copies)
        host_compute = T * d.E * 4  # embeddings are looked up on the CPU (token_embd in RAM)
        if not all(on_gpu):
            host_compute += ffn_like  # layers computed on the CPU at full batch
        p.compute = (gpu_compute, host_compute)
        p.runtime = GPU_RUNTIME_BYTES if runtime is None else runtime
    else:
        p.compute = (0, peak)
    p.compute_phases = phases
    p.output_buffer = d.V * 4 * slots_of(cfg)  # one logits row per sequence of a decode
    if gpu:
        sub = p.weights_gpu + kg + vg + rg + p.compute[0] + p.runtime
        p.margin = (max(DEFAULT_MARGIN_BYTES, int(MARGIN_FRACTION * sub)) if margin is None else int(margin))
    return p


def _model_name(info) -> str:
    from pathlib import Path
    return Path(str(info.source)).name


# ---------------------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    cfg: RunConfig
    plan: MemoryPlan
    budget: int
    fits: bool
    tried: list[tuple[int, int, int]]   # (n_gpu_layers, n_cpu_moe, planned GPU bytes)
    reason: str

    def __str__(self) -> str:
        return f"{self.reason}\n{self.plan.table()}"

    def _repr_html_(self) -> str:
        import html
        return f"<p>{html.escape(self.reason)}</p>" + self.plan._repr_html_()


def fit_report(info, vram_budget: int, cfg: RunConfig | None = None, *, margin: int | None = None,
               runtime: int | None = None, ram_budget: int | None = None) -> FitResult:
    """The config that keeps the most on the GPU within `vram_budget` bytes: every layer on
    the GPU and the fewest expert layers in system RAM; whole layers move to the CPU only
    for dense models or when all experts in RAM are still too much. With `ram_budget`, a
    result that needs more system RAM than that is marked as not fitting.

    cfg: the settings to fit (n_ctx, KV types, batch sizes, slots...; n_gpu_layers and
    n_cpu_moe are what the fit chooses); default RunConfig's, for info's file."""
    if cfg is None:
        cfg = RunConfig(model=str(info.source))
    elif not isinstance(cfg, RunConfig):
        raise ConfigError(f"fit_report got {cfg!r} where it takes a RunConfig",
                          "pass the settings as one: fit_report(info, budget, RunConfig(model=..., n_ctx=..., "
                          "type_k=..., type_v=...))")
    r = _fit(info, vram_budget, cfg, margin=margin, runtime=runtime)
    if ram_budget is not None and r.fits and r.plan.cpu_total > ram_budget:
        r.fits = False
        r.reason += (f"; but it needs {_gib(r.plan.cpu_total)} of system RAM and "
                     f"{_gib(ram_budget)} is available")
    return r


def _fit(info, vram_budget: int, cfg: RunConfig, *, margin: int | None, runtime: int | None) -> FitResult:
    if vram_budget <= 0:
        raise ConfigError(f"vram_budget={vram_budget} must be positive", "pass the GPU's free memory in bytes")
    base = cfg.replace(n_gpu_layers=-1, n_cpu_moe=0)
    base.check_context(info.context_length)
    tried: list[tuple[int, int, int]] = []

    def attempt(g: int, n: int) -> MemoryPlan:
        c = base.replace(n_gpu_layers=g, n_cpu_moe=n)
        pl = plan(info, c, gpu=True, margin=margin, runtime=runtime)
        tried.append((g, n, pl.gpu_total))
        return pl

    n_all = info.n_layer_all
    if info.is_moe:
        # fewest expert layers on the CPU: gpu_total falls as n grows, so bisect
        lo, hi = 0, n_all
        p_hi = attempt(-1, hi)
        if p_hi.gpu_total <= vram_budget:
            p0 = attempt(-1, 0)
            if p0.gpu_total <= vram_budget:
                return FitResult(p0.cfg, p0, vram_budget, True, tried,
                                 f"everything fits on the GPU: {_gib(p0.gpu_total)} of {_gib(vram_budget)}")
            best = p_hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                pm = attempt(-1, mid)
                if pm.gpu_total <= vram_budget:
                    hi, best = mid, pm
                else:
                    lo = mid
            return FitResult(best.cfg, best, vram_budget, True, tried,
                             f"all layers on the GPU, experts of the first {hi} of {n_all} layers in "
                             f"system RAM: {_gib(best.gpu_total)} of {_gib(vram_budget)}")
        n_moe = n_all
    else:
        n_moe = 0
    # whole layers to the CPU (dense models, or MoE when all experts in RAM are not enough)
    for g in range(n_all + 1, -1, -1):
        pg = attempt(g, n_moe)
        if pg.gpu_total <= vram_budget:
            what = "" if not n_moe else "all experts in system RAM and "
            return FitResult(pg.cfg, pg, vram_budget, True, tried,
                             f"{what}{g} of {n_all + 1} layers on the GPU: "
                             f"{_gib(pg.gpu_total)} of {_gib(vram_budget)}")
    pg = attempt(0, n_moe)
    return FitResult(pg.cfg, pg, vram_budget, False, tried,
                     f"nothing fits in {_gib(vram_budget)} even with every layer in system RAM "
                     f"(compute buffers and the CUDA context need {_gib(pg.gpu_total)}): use a smaller "
                     "n_ctx / n_ubatch, or run on the CPU")


def fit(info, vram_budget: int, cfg: RunConfig | None = None, **kw: Any) -> RunConfig:
    """`fit_report(...).cfg`: the RunConfig that keeps the most on the GPU within the budget."""
    return fit_report(info, vram_budget, cfg, **kw).cfg


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ------------------------------------------------------------------------------ comparisons
def compare(p: MemoryPlan, probe) -> dict[str, dict[str, float]]:
    """Planned vs llama.cpp's no-alloc figures (an `engine.Probe`): bytes and relative error."""
    pairs = {
        "weights": (p.weights_file, probe.model_size),
        "kv": (p.kv, probe.kv_bytes),
        "kv_k": (p.kv_k_bytes, probe.kv_k_bytes),
        "kv_v": (p.kv_v_bytes, probe.kv_v_bytes),
        "recurrent": (p.recurrent_bytes, probe.recurrent_bytes),
        "compute": (p.compute_bytes if not p.gpu else p.compute_bytes, probe.compute_bytes),
        "output": (p.output_buffer, sum(probe.output_buffers.values())),
        "total": (p.llama_total, probe.total_bytes),
    }
    out = {}
    for k, (a, b) in pairs.items():
        err = (a - b) / b if b else (0.0 if a == b else math.inf)
        out[k] = dict(planned=a, llama=b, rel_error=err)
    return out


# ------------------------------------------------------------------------ notebook helpers
def target_model_info(arch: str = "qwen35moe", mix: str = "q4_k_m"):
    """ModelInfo of the full-size synthetic model (Qwen3.5-35B-A3B shape for "qwen35moe"),
    written once as a sparse file (header on disk, tensor data a hole) under the kit's cache."""
    from qwenkit import synthetic
    from qwenkit.gguf_info import read_model_info
    from qwenkit.models import cache_dir
    path = cache_dir() / "synthetic" / f"{arch}-full-{mix}-sparse-v{synthetic.GENERATOR_VERSION}.gguf"
    if not path.is_file():
        synthetic.write_model(path, arch=arch, size="full", weights="sparse", mix=mix, progress=False)
    return read_model_info(path)


def offload_sweep(info, cfg: RunConfig, **kw: Any) -> list[dict[str, Any]]:
    """GPU and system-RAM bytes for n_cpu_moe = 0 .. n_layer (all layers on the GPU)."""
    rows = []
    for n in range(info.n_layer_all + 1):
        p = plan(info, cfg.replace(n_cpu_moe=n, n_gpu_layers=-1), **kw)
        rows.append(dict(n_cpu_moe=n, gpu=p.gpu_total, ram=p.cpu_total))
    return rows


def fit_table(info, vram_budget: int, contexts=(8192, 32768, 65536, 131072),
              kv_types=(("f16", "f16"), ("q8_0", "q8_0"))) -> str:
    """A text table: for each context and KV type, the fitted n_cpu_moe / n_gpu_layers and the
    planned GPU use, so the cost of context and of KV quantization can be read side by side."""
    lines = [f"budget {vram_budget / GiB:.1f} GiB",
             f"{'n_ctx':>8} {'K/V':>10} {'KV MiB':>8} {'n_cpu_moe':>10} {'n_gpu_layers':>13} {'GPU GiB':>8} "
             f"{'RAM GiB':>8}"]
    for n_ctx in contexts:
        for tk, tv in kv_types:
            cfg = RunConfig(model=str(info.source), n_ctx=n_ctx, type_k=tk, type_v=tv)
            r = fit_report(info, vram_budget, cfg)
            c = r.cfg
            lines.append(f"{n_ctx:>8} {tk + '/' + tv:>10} {r.plan.kv / MiB:>8.0f} {c.n_cpu_moe:>10} "
                         f"{c.n_gpu_layers:>13} {r.plan.gpu_total / GiB:>8.2f} {r.plan.cpu_total / GiB:>8.2f}"
                         + ("" if r.fits else "  (does not fit)"))
    return "\n".join(lines)


def compare_table(cmp: dict[str, dict[str, float]]) -> str:
    lines = [f"{'':10s} {'planned MiB':>12} {'llama.cpp MiB':>14} {'error':>8}"]
    for k, v in cmp.items():
        lines.append(f"{k:10s} {v['planned'] / MiB:12,.2f} {v['llama'] / MiB:14,.2f} {v['rel_error'] * 100:+7.2f}%")
    return "\n".join(lines)


def max_parallel(cfg: RunConfig, limit: int = 8, free_bytes: int | None = None) -> int:
    """The most sequence slots (<= limit) whose plan fits the first GPU's free memory (as
    llama.cpp's backend reports it); 1 when even one does not, or without a GPU."""
    from qwenkit.gguf_info import read_model_info
    if free_bytes is None:
        from qwenkit.engine import gpu_free_bytes
        free_bytes = gpu_free_bytes()
    if not free_bytes:
        return 1
    info = read_model_info(cfg.model)
    for n in range(limit, 1, -1):
        p = plan(info, cfg.replace(parallel=n), gpu=True)
        if p.gpu_total <= free_bytes:
            return n
    return 1
