"""Load, relaunch and close an in-kernel model from a RunConfig, with MoE expert placement.

llama-cpp-python 0.3.36 has no `--n-cpu-moe`: `llama_model_params.tensor_buft_overrides` is
bound as a plain pointer. This module fills it with ctypes, the way llama.cpp's own
`--n-cpu-moe N` does (patterns `blk\\.{i}\\.ffn_(up|down|gate|gate_up)_(ch|)exps` for the
first N layers, buffer type CPU):

    llm = load(cfg)                       # QwenkitLlama with cfg.n_cpu_moe applied
    eng = Engine(); eng.load(cfg); eng.load(cfg.replace(n_cpu_moe=8)); eng.close()
    p = probe(cfg)                        # what llama.cpp would allocate, nothing allocated

`QwenkitLlama(..., n_cpu_moe=N)` takes every `llama_cpp.Llama` argument plus `n_cpu_moe`. The
kit's server loads its model through the C API instead (`qwenkit.serving.model`), with the same
`apply_expert_overrides`. Everything below `Llama`'s public API goes through qwenkit.llama_api.
"""
from __future__ import annotations

import ctypes
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from qwenkit.config import RunConfig
from qwenkit.errors import ModelLoadError
from qwenkit.llamalog import KVCacheSize, LlamaLog, RecurrentSize, capture_log, load_llama, model_load_error
from qwenkit.units import MiB, rss_bytes

__all__ = [
    "Device", "EXPERT_PATTERN", "Engine", "Probe", "TensorOverrides", "apply_expert_overrides",
    "context_params", "cpu_buffer_type", "cpu_moe_patterns", "devices", "expert_patterns", "gpu_free_bytes",
    "last_logits", "llama_kwargs", "load", "probe", "qwenkit_llama_class", "rss_bytes",
]

# the expert tensors of layer i, as llama.cpp's `--n-cpu-moe` names them (common/arg.cpp)
EXPERT_PATTERN = r"blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps"

GGML_BACKEND_DEVICE_TYPE_CPU = 0
GGML_BACKEND_DEVICE_TYPE_GPU = 1


# ---- ggml handles ------------------------------------------------------------------------------
_cpu_buft: list[int] = []


def cpu_buffer_type() -> int:
    """`ggml_backend_buffer_type_t` of the CPU (system RAM), as an integer address."""
    if not _cpu_buft:
        from qwenkit.llama_api import ggml
        buft = None
        try:
            buft = ggml("ggml_backend_cpu_buffer_type")()
        except (OSError, AttributeError):
            pass
        if not buft:  # builds where it lives with the CPU backend: ask the device registry
            dev = ggml("ggml_backend_dev_by_type")(GGML_BACKEND_DEVICE_TYPE_CPU)
            buft = ggml("ggml_backend_dev_buffer_type")(dev) if dev else None
        if not buft:
            raise ModelLoadError("could not find ggml's CPU buffer type in llama-cpp-python's libraries",
                                 "reinstall llama-cpp-python 0.3.36 (`make setup`)")
        _cpu_buft.append(buft)
    return _cpu_buft[0]


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str          # "cpu", "gpu", "igpu", "accel"
    free: int          # bytes
    total: int         # bytes


def devices() -> list[Device]:
    """The ggml devices llama.cpp can use, with free/total memory as the backend reports it
    (for a CUDA GPU: cudaMemGetInfo, i.e. what other processes leave free)."""
    from qwenkit.llama_api import ggml  # loads the libraries and registers the backends
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
    name, description, kind = (ggml("ggml_backend_dev_name"), ggml("ggml_backend_dev_description"),
                               ggml("ggml_backend_dev_type"))
    memory, get = ggml("ggml_backend_dev_memory"), ggml("ggml_backend_dev_get")
    out = []
    for i in range(ggml("ggml_backend_dev_count")()):
        d = get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        memory(d, ctypes.byref(free), ctypes.byref(total))
        out.append(Device((name(d) or b"").decode(), (description(d) or b"").decode(),
                          kinds.get(kind(d), "?"), free.value, total.value))
    return out


def gpu_free_bytes() -> int | None:
    """Free memory of the first GPU as llama.cpp's backend sees it; None without GPU offload."""
    gpus = [d for d in devices() if d.kind == "gpu"]
    return gpus[0].free if gpus else None


# ---- tensor buffer-type overrides --------------------------------------------------------------
def expert_patterns(layers: Iterable[int]) -> list[str]:
    """Regexes matching the expert tensors of the given layers (llama.cpp's --n-cpu-moe form)."""
    return [EXPERT_PATTERN.format(i=i) for i in layers]


def cpu_moe_patterns(n_cpu_moe: int) -> list[str]:
    """Patterns that keep the experts of the first `n_cpu_moe` layers in system RAM."""
    return expert_patterns(range(max(0, int(n_cpu_moe))))


class TensorOverrides:
    """A NULL-terminated `llama_model_tensor_buft_override[]` that owns its strings.
    Keep the object alive as long as the model that was loaded with it."""

    def __init__(self, rules: Sequence[tuple[str, int]]):
        self.rules = [(p, int(b)) for p, b in rules]
        self._patterns = [p.encode() for p, _ in self.rules]   # owned: the array points into them
        from qwenkit.llama_api import TensorBuftOverride
        self.array = (TensorBuftOverride * (len(self.rules) + 1))()
        for i, (pat, (_, buft)) in enumerate(zip(self._patterns, self.rules, strict=True)):
            self.array[i].pattern = pat
            self.array[i].buft = buft
        self.array[len(self.rules)].pattern = None          # terminator
        self.array[len(self.rules)].buft = None

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)

    def __len__(self) -> int:
        return len(self.rules)

    def apply(self, model_params) -> None:
        """Point a `llama_model_params` at this array (None when there are no rules)."""
        model_params.tensor_buft_overrides = self.address if self.rules else None

    @classmethod
    def cpu_moe(cls, n_cpu_moe: int) -> "TensorOverrides":
        buft = cpu_buffer_type() if n_cpu_moe > 0 else 0
        return cls([(p, buft) for p in cpu_moe_patterns(n_cpu_moe)])

    def __repr__(self) -> str:
        return f"TensorOverrides({len(self.rules)} rules)"


def apply_expert_overrides(model_params, n_cpu_moe: int | RunConfig) -> TensorOverrides:
    """Set `model_params.tensor_buft_overrides` so the experts of the first N layers stay in
    system RAM. Returns the array: the caller keeps it alive as long as the model."""
    n = n_cpu_moe.n_cpu_moe if isinstance(n_cpu_moe, RunConfig) else int(n_cpu_moe)
    ov = TensorOverrides.cpu_moe(n)
    ov.apply(model_params)
    return ov


def _make_qwenkit_llama():
    from qwenkit.llama_api import Llama

    class QwenkitLlama(Llama):
        """`llama_cpp.Llama` plus MoE expert placement: `n_cpu_moe=N` keeps the expert tensors
        of the first N layers in system RAM (llama.cpp's --n-cpu-moe); `tensor_overrides`
        takes raw (pattern, buffer-type) rules. Everything else is Llama's own."""

        def __init__(self, *args: Any, n_cpu_moe: int = 0,
                     tensor_overrides: Sequence[tuple[str, int]] | None = None, **kwargs: Any):
            rules = list(tensor_overrides or [])
            if n_cpu_moe:
                buft = cpu_buffer_type()
                rules += [(p, buft) for p in cpu_moe_patterns(n_cpu_moe)]
            self.n_cpu_moe = int(n_cpu_moe)
            # must exist before Llama.__init__ assigns self.model_params (the hook below)
            self._qk_overrides = TensorOverrides(rules) if rules else None
            super().__init__(*args, **kwargs)

        # Llama.__init__ does `self.model_params = llama_model_default_params()` and then
        # fills fields in place before loading; catching that assignment is the one place
        # where the overrides reach the struct llama_model_load_from_file receives
        # (qwenkit.llama_api checks that Llama still assigns it).
        @property
        def model_params(self):
            return self.__dict__["_qk_model_params"]

        @model_params.setter
        def model_params(self, value):
            ov = self.__dict__.get("_qk_overrides")
            if ov is not None:
                ov.apply(value)
            self.__dict__["_qk_model_params"] = value

        @property
        def tensor_overrides(self) -> TensorOverrides | None:
            return self._qk_overrides

    return QwenkitLlama


_QL: Any = None


def qwenkit_llama_class():
    """The `QwenkitLlama` class (built on first use: importing qwenkit needs no llama_cpp)."""
    global _QL
    if _QL is None:
        _QL = _make_qwenkit_llama()
    return _QL


def __getattr__(name: str):  # `from qwenkit.engine import QwenkitLlama`
    if name == "QwenkitLlama":
        return qwenkit_llama_class()
    raise AttributeError(name)


# ---- load / relaunch / close -----------------------------------------------------------------
def llama_kwargs(cfg: RunConfig, **extra: Any) -> dict[str, Any]:
    kw = cfg.llama_kwargs()
    kw["n_cpu_moe"] = cfg.n_cpu_moe
    kw.update(extra)
    return kw


def load(cfg: RunConfig, **extra: Any):
    """A QwenkitLlama for `cfg` (n_cpu_moe applied). Raises ModelLoadError with llama.cpp's
    own reason. The load log is `llm.load_log` (a LlamaLog)."""
    if not Path(cfg.model).is_file():
        raise ModelLoadError(f"model file {cfg.model} does not exist",
                             "check the path, or download the model first (notebook 02)")
    return load_llama(qwenkit_llama_class(), **llama_kwargs(cfg, **extra))


def last_logits(llm) -> "Any":
    """Logits of the last evaluated token as a float32 numpy array (a copy). Works with
    logits_all=False, where `llm.scores` is not filled."""
    import numpy as np

    from qwenkit.llama_api import C
    ptr = C.llama_get_logits_ith(llm.ctx, -1)
    if not ptr:
        raise ModelLoadError("no logits: nothing was evaluated yet",
                             "evaluate at least one token first (llm.eval(tokens) or a completion)")
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


class Engine:
    """One in-kernel model at a time. `load(cfg)` closes the model it holds before loading
    the next, so memory stays flat over relaunches (the tuning panel relaunches a lot)."""

    def __init__(self) -> None:
        self.llm: Any = None
        self.cfg: RunConfig | None = None
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self.llm is not None

    @property
    def log(self) -> LlamaLog | None:
        return getattr(self.llm, "load_log", None)

    def load(self, cfg: RunConfig, **extra: Any):
        self.close()
        t0 = time.perf_counter()
        self.llm = load(cfg, **extra)
        self.load_seconds = time.perf_counter() - t0
        self.cfg = cfg
        return self.llm

    relaunch = load

    def close(self) -> None:
        if self.llm is not None:
            try:
                self.llm.close()  # frees context, batch and model (and their GPU buffers)
            finally:
                self.llm = None
                self.cfg = None
                gc.collect()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.cfg.summary() if self.cfg else 'nothing loaded'})"


# ---- no-alloc probe --------------------------------------------------------------------------
@dataclass
class Probe:
    """What llama.cpp would allocate for a config (a no-alloc load: metadata only)."""
    cfg: RunConfig
    model_size: int                      # llama_model_size(): bytes of all weights
    n_params: int
    n_layer: int
    kv: list[KVCacheSize]
    recurrent: list[RecurrentSize]
    compute_buffers: dict[str, int]      # backend buffer name -> bytes
    output_buffers: dict[str, int]
    offloaded: tuple[int, int] | None
    overrides: dict[str, str]            # tensor -> buffer type, from llama.cpp's log
    log: LlamaLog = field(repr=False)

    @property
    def kv_bytes(self) -> int:
        return sum(k.bytes for k in self.kv)

    @property
    def kv_k_bytes(self) -> int:
        return sum(round(k.k_mib * MiB) for k in self.kv)

    @property
    def kv_v_bytes(self) -> int:
        return sum(round(k.v_mib * MiB) for k in self.kv)

    @property
    def recurrent_bytes(self) -> int:
        return sum(r.bytes for r in self.recurrent)

    @property
    def compute_bytes(self) -> int:
        return sum(self.compute_buffers.values())

    @property
    def total_bytes(self) -> int:
        return (self.model_size + self.kv_bytes + self.recurrent_bytes + self.compute_bytes
                + sum(self.output_buffers.values()))

    def summary(self) -> dict[str, Any]:
        return dict(model_size=self.model_size, kv=self.kv_bytes, kv_k=self.kv_k_bytes,
                    kv_v=self.kv_v_bytes, recurrent=self.recurrent_bytes,
                    compute=self.compute_buffers, output=self.output_buffers,
                    total=self.total_bytes, offloaded=self.offloaded, n_overrides=len(self.overrides))


def context_params(cfg: RunConfig):
    """`llama_context_params` exactly as `llama_cpp.Llama(**cfg.llama_kwargs())` builds them."""
    from qwenkit.llama_api import C
    p = C.llama_context_default_params()
    n_batch = min(cfg.n_ctx, cfg.n_batch) if cfg.n_ctx else cfg.n_batch
    p.n_ctx = cfg.n_ctx
    p.n_batch = n_batch
    p.n_ubatch = min(n_batch, cfg.n_ubatch)
    p.n_threads = cfg.n_threads
    p.n_threads_batch = cfg.n_threads_batch or cfg.n_threads
    p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.type_k = cfg.llama_kwargs()["type_k"]
    p.type_v = cfg.llama_kwargs()["type_v"]
    p.no_perf = False
    return p


def probe(cfg: RunConfig, *, with_context: bool = True) -> Probe:
    """Ask llama.cpp what it would allocate for `cfg` without allocating it: a model load
    with `no_alloc` (and load mode NONE, the only mode no_alloc works with), then a context.
    Returns llama.cpp's own KV, recurrent-state and compute-buffer sizes and
    `llama_model_size`: the ground truth the planner is tested against. Reads only the
    file's metadata, so it works for a 20 GiB model on a machine without that much memory."""
    from qwenkit.llama_api import C
    if not Path(cfg.model).is_file():
        raise ModelLoadError(f"model file {cfg.model} does not exist", "check the path")
    C.llama_backend_init()
    mp = C.llama_model_default_params()
    mp.n_gpu_layers = 0x7FFFFFFF if cfg.n_gpu_layers == -1 else cfg.n_gpu_layers
    mp.load_mode = C.LLAMA_LOAD_MODE_NONE
    mp.no_alloc = True
    ov = apply_expert_overrides(mp, cfg.n_cpu_moe)
    model = ctx = None
    with capture_log(echo=False) as log:
        model = C.llama_model_load_from_file(cfg.model.encode(), mp)
        if model and with_context:
            ctx = C.llama_init_from_model(model, context_params(cfg))
    try:
        if not model:
            raise model_load_error(log, ValueError(f"Failed to load model from file: {cfg.model}"), cfg.model)
        if with_context and not ctx:
            raise model_load_error(log, ValueError("Failed to create llama_context"), cfg.model)
        size = int(C.llama_model_size(model))
        n_params = int(C.llama_model_n_params(model))
        n_layer = int(C.llama_model_n_layer(model))
    finally:
        if ctx:
            C.llama_free(ctx)
        if model:
            C.llama_model_free(model)
        del ov
    return Probe(cfg=cfg, model_size=size, n_params=n_params, n_layer=n_layer,
                 kv=log.kv_cache(), recurrent=log.recurrent(),
                 compute_buffers={k: round(v * MiB) for k, v in log.compute_buffers().items()},
                 output_buffers={k: round(v * MiB) for k, v in log.output_buffers().items()},
                 offloaded=log.offloaded(), overrides=log.overrides(), log=log)
