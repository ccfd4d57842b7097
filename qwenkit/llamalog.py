"""llama.cpp's own log, captured and parsed.

llama.cpp says what it allocated and why it failed only in its log, which llama-cpp-python
hides when `verbose=False` (and prints to C stderr, out of a notebook's sight, when not).
This module routes that log into Python for the length of a `with` block:

    with capture_log() as log:
        llm = Llama(model_path=..., verbose=False)
    log.offloaded()          # (31, 31) or None on a CPU-only build
    log.kv_cache()           # [KVCacheSize(size_mib=5.98, cells=512, layers=30, ...)]
    log.compute_buffers()    # {'CPU': 98.25}
    log.failure_reason()     # "tensor 'blk.3...' data is not within the file bounds, ..."

`LlamaLog.from_text(text)` parses text captured elsewhere (e.g. a server's stderr) the same
way. `load_llama(**kw)` is `Llama(**kw)` that raises `ModelLoadError` carrying llama.cpp's
reason and a fix instead of a bare `ValueError: Failed to load model from file`.

The llama.cpp logger is process-global: a capture also sees lines from other threads, and
nested captures must end in the reverse order they began (a `with` block guarantees it).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from qwenkit.errors import ModelLoadError
from qwenkit.units import MiB

__all__ = [
    "KVCacheSize", "LEVEL_CONT", "LEVEL_DEBUG", "LEVEL_ERROR", "LEVEL_INFO", "LEVEL_NAMES", "LEVEL_NONE", "LEVEL_WARN",
    "LlamaLog", "LogLine", "RecurrentSize", "capture_log", "fix_for", "load_llama", "model_load_error",
]

# ggml.h `enum ggml_log_level` (llama-cpp-python's _logger.py maps these one off; these are
# the values the vendored llama.cpp really sends).
LEVEL_NONE, LEVEL_DEBUG, LEVEL_INFO, LEVEL_WARN, LEVEL_ERROR, LEVEL_CONT = 0, 1, 2, 3, 4, 5
LEVEL_NAMES = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error"}


_lock = threading.Lock()


@dataclass(frozen=True)
class LogLine:
    level: int
    text: str  # without the trailing newline

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES.get(self.level, str(self.level))


@dataclass(frozen=True)
class KVCacheSize:
    """One `llama_kv_cache: size = ...` line (sizes in MiB as llama.cpp prints them, 2 decimals)."""
    size_mib: float
    cells: int
    layers: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float

    @property
    def bytes(self) -> int:
        return round(self.size_mib * MiB)


@dataclass(frozen=True)
class RecurrentSize:
    """One `llama_memory_recurrent: size = ...` line: R (conv) and S (ssm) states, P if any."""
    size_mib: float
    cells: int
    layers: int
    type_r: str
    r_mib: float
    type_s: str
    s_mib: float

    @property
    def bytes(self) -> int:
        return round(self.size_mib * MiB)


_FUNC_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_:~]*:\s+")
_RE_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RE_KV = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,[^)]*\), "
    r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB")
_RE_RS = re.compile(
    r"llama_memory_recurrent: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,[^)]*\), "
    r"R \((\w+)\):\s*([\d.]+) MiB, S \((\w+)\):\s*([\d.]+) MiB")
_RE_BUF = re.compile(r"^\w+:\s+(\S+)\s+(model|compute|KV|RS|output) buffer size =\s*([\d.]+) MiB")
_RE_OVERRIDE = re.compile(r"tensor (\S+) \((\d+) MiB (\w+)\) buffer type overridden to (\S+)")
_RE_LAYER_DEV = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")

# error lines that only say *that* something failed, not why (a better line usually precedes)
_GENERIC_ERRORS = (
    re.compile(r"failed to load model\s*$"),
    re.compile(r"failed to load model from \S+\s*$"),
    re.compile(r"error loading model: llama_model_loader: failed to load model from"),
    re.compile(r"failed to allocate compute buffers\s*$"),
    re.compile(r"failed to allocate graph\s*$"),
)

_FIXES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"not within the file bounds|corrupted or incomplete|failed to read|"
                r"invalid magic|bad GGUF version|failed to load model from|unexpectedly reached end|"
                r"tensor data is not|file bounds", re.I),
     "the GGUF file is truncated or corrupted (an interrupted download leaves such a file): "
     "delete it and download it again, then verify its size and SHA-256"),
    (re.compile(r"out of memory|cudaMalloc failed|failed to allocate|unable to allocate|"
                r"ErrorOutOfDeviceMemory|could not allocate", re.I),
     "not enough memory: use a smaller n_ctx, a quantized KV cache (type_k/type_v q8_0), or keep "
     "more expert layers in system RAM (a larger n_cpu_moe); `python -m qwenkit fit` picks them"),
    (re.compile(r"quantized V cache.*requires flash_attn|requires Flash Attention", re.I),
     "set flash_attn=True, or type_v='f16'"),
    (re.compile(r"does not divide n_embd_head", re.I),
     "this model's head size does not fit that KV cache type: use f16 or q8_0"),
    (re.compile(r"unknown model architecture", re.I),
     "this llama-cpp-python is too old for the model's architecture: install llama-cpp-python 0.3.36"),
    (re.compile(r"wrong number of tensors|missing tensor|tensor .* has wrong shape", re.I),
     "the GGUF does not match its architecture (a broken conversion): download it again or "
     "use another quant"),
]


def _strip_func(text: str) -> str:
    return _FUNC_PREFIX.sub("", text, count=1)


class LlamaLog:
    """Lines llama.cpp logged, with parsers for what matters. `lines` are strings,
    `records` keep the level (LogLine)."""

    def __init__(self, records: list[LogLine] | None = None):
        self.records: list[LogLine] = list(records or [])
        self._partial: str = ""
        self._partial_level: int = LEVEL_INFO

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, level: int = LEVEL_INFO) -> "LlamaLog":
        """Parse a log captured elsewhere (e.g. llama_cpp.server's stderr with verbose on).
        Levels are unknown there: lines containing 'error' (any case) count as errors."""
        recs = []
        for line in text.splitlines():
            lv = LEVEL_ERROR if re.search(r"\berror\b|failed", line, re.I) else level
            recs.append(LogLine(lv, line))
        return cls(recs)

    def _feed(self, level: int, text: str) -> None:
        if level == LEVEL_CONT:
            level = self._partial_level
        if not self._partial:
            self._partial_level = level
        buf = self._partial + text
        parts = buf.split("\n")
        self._partial = parts.pop()
        for p in parts:
            self.records.append(LogLine(self._partial_level, p))
            self._partial_level = level

    def _flush(self) -> None:
        if self._partial:
            self.records.append(LogLine(self._partial_level, self._partial))
            self._partial = ""

    # ---- raw access --------------------------------------------------------------------
    @property
    def lines(self) -> list[str]:
        return [r.text for r in self.records]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def grep(self, pattern: str, flags: int = 0) -> list[str]:
        rx = re.compile(pattern, flags)
        return [line for line in self.lines if rx.search(line)]

    @property
    def errors(self) -> list[str]:
        return [r.text for r in self.records if r.level == LEVEL_ERROR]

    @property
    def warnings(self) -> list[str]:
        return [r.text for r in self.records if r.level == LEVEL_WARN]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"LlamaLog({len(self.records)} lines, {len(self.errors)} errors)"

    # ---- parsers -----------------------------------------------------------------------
    def offloaded(self) -> tuple[int, int] | None:
        """(layers offloaded, offloadable layers) from `offloaded N/M layers to GPU`; None on a
        build without GPU offload (llama.cpp prints nothing then)."""
        for line in reversed(self.lines):
            m = _RE_OFFLOADED.search(line)
            if m:
                return int(m.group(1)), int(m.group(2))
        return None

    def kv_cache(self) -> list[KVCacheSize]:
        """Every KV cache llama.cpp created (a hybrid model has one; iSWA models have two)."""
        out = []
        for line in self.lines:
            m = _RE_KV.search(line)
            if m:
                out.append(KVCacheSize(float(m.group(1)), int(m.group(2)), int(m.group(3)),
                                       m.group(4), float(m.group(5)), m.group(6), float(m.group(7))))
        return out

    def recurrent(self) -> list[RecurrentSize]:
        """Recurrent-state memories (Gated-DeltaNet / Mamba layers)."""
        out = []
        for line in self.lines:
            m = _RE_RS.search(line)
            if m:
                out.append(RecurrentSize(float(m.group(1)), int(m.group(2)), int(m.group(3)),
                                         m.group(4), float(m.group(5)), m.group(6), float(m.group(7))))
        return out

    def _buffers(self, kind: str) -> dict[str, float]:
        """{backend buffer name: MiB} for `<name> <kind> buffer size = X MiB` lines. A name that
        appears more than once (several graphs, several caches) is summed, except compute
        buffers, where the last reservation is the one kept."""
        out: dict[str, float] = {}
        for line in self.lines:
            m = _RE_BUF.search(line)
            if m and m.group(2) == kind:
                name, mib = m.group(1), float(m.group(3))
                if kind == "compute":
                    out[name] = mib
                else:
                    out[name] = out.get(name, 0.0) + mib
        return out

    def model_buffers(self) -> dict[str, float]:
        """Weights per buffer: e.g. {'CUDA0': 11234.5, 'CPU_Mapped': 8123.4, 'CPU_REPACK': ...}.
        Zero in a no-alloc probe (nothing is allocated then)."""
        return self._buffers("model")

    def compute_buffers(self) -> dict[str, float]:
        """Compute (scratch) buffer per backend: e.g. {'CUDA0': 493.0, 'CUDA_Host': 20.0}."""
        # a context reserves its graphs once at creation; later lines (e.g. the destructor's
        # "compute buffer size is X MiB, matches expectation") use another wording
        return self._buffers("compute")

    def kv_buffers(self) -> dict[str, float]:
        return self._buffers("KV")

    def rs_buffers(self) -> dict[str, float]:
        return self._buffers("RS")

    def output_buffers(self) -> dict[str, float]:
        return self._buffers("output")

    def overrides(self) -> dict[str, str]:
        """{tensor name: buffer type} for each `tensor X (...) buffer type overridden to B` line."""
        out = {}
        for line in self.lines:
            m = _RE_OVERRIDE.search(line)
            if m:
                out[m.group(1)] = m.group(4)
        return out

    def layer_devices(self) -> dict[int, str]:
        """{layer: device} from `load_tensors: layer N assigned to device D` (debug lines)."""
        out = {}
        for line in self.lines:
            m = _RE_LAYER_DEV.search(line)
            if m:
                out[int(m.group(1))] = m.group(2)
        return out

    def failure_reason(self) -> str | None:
        """llama.cpp's most specific error message, without the function-name prefix
        (e.g. "tensor 'blk.0.ffn_up.weight' data is not within the file bounds, model is
        corrupted or incomplete"); None when it logged no error."""
        errs = self.errors
        if not errs:
            return None
        specific = [e for e in errs if not any(g.search(e) for g in _GENERIC_ERRORS)]
        chosen = (specific or errs)[0]
        reason = _strip_func(chosen.strip())
        # "llama_model_load: error loading model: <reason>" -> "<reason>"
        reason = re.sub(r"^error loading model:\s*", "", reason)
        reason = re.sub(r"^failed to initialize the context:\s*", "", reason)
        reason = _strip_func(reason) if reason.startswith("llama_model_loader:") else reason
        return reason.strip()

    def fix_hint(self, reason: str | None = None) -> str | None:
        return fix_for(reason if reason is not None else (self.failure_reason() or ""))

    def summary(self) -> dict[str, Any]:
        """Everything parsed, as plain data (for JSON reports)."""
        return dict(
            offloaded=self.offloaded(),
            model_buffers=self.model_buffers(), kv_buffers=self.kv_buffers(),
            rs_buffers=self.rs_buffers(), compute_buffers=self.compute_buffers(),
            output_buffers=self.output_buffers(),
            kv_cache=[vars(k) for k in self.kv_cache()],
            recurrent=[vars(r) for r in self.recurrent()],
            n_overrides=len(self.overrides()),
            failure_reason=self.failure_reason(),
        )


def fix_for(reason: str) -> str | None:
    """The fix for a llama.cpp failure message, or None when it is not a known kind."""
    for rx, fix in _FIXES:
        if rx.search(reason or ""):
            return fix
    return None


# ---- capture ------------------------------------------------------------------------------
def _lc():
    # imported lazily: importing qwenkit must not need the compiled library. llama_api also
    # imports llama-cpp-python's _logger, whose default callback must be installed first
    from qwenkit.llama_api import C
    return C


@contextlib.contextmanager
def capture_log(echo: bool = True) -> Iterator[LlamaLog]:
    """Route llama.cpp's log into a LlamaLog for the `with` block.

    echo=True also passes each message on to the callback that was installed before
    (llama-cpp-python's own, which prints according to its `verbose`), so behaviour
    outside the capture is unchanged. The previous callback is restored on exit."""
    lc = _lc()
    log = LlamaLog()
    prev_cb = lc.llama_log_callback()
    prev_ud = ctypes.c_void_p()
    with _lock:
        lc.llama_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_ud))
    has_prev = bool(ctypes.cast(prev_cb, ctypes.c_void_p).value)

    def _cb(level: int, text: bytes, user_data: Any) -> None:
        with contextlib.suppress(Exception):  # never raise into C
            log._feed(int(level), (text or b"").decode("utf-8", "replace"))
        if echo and has_prev:
            with contextlib.suppress(Exception):
                prev_cb(level, text, prev_ud)

    c_cb = lc.llama_log_callback(_cb)  # kept alive by this frame until restored
    with _lock:
        lc.llama_log_set(c_cb, ctypes.c_void_p(0))
    try:
        yield log
    finally:
        with _lock:
            if has_prev:
                lc.llama_log_set(prev_cb, prev_ud)
            else:
                lc.llama_log_set(lc.llama_log_callback(), ctypes.c_void_p(0))
        log._flush()
        # keep the ctypes thunk reachable from the log: a thread still inside it must not
        # find it freed
        log._callback = c_cb  # type: ignore[attr-defined]


# ---- loading with reasons -------------------------------------------------------------------
def model_load_error(log: LlamaLog, exc: BaseException | None, path: str | None = None) -> ModelLoadError:
    """A ModelLoadError that carries llama.cpp's own reason (from `log`) and a fix."""
    reason = log.failure_reason()
    bare = str(exc) if exc is not None else "llama.cpp failed"
    where = f" ({path})" if path else ""
    what = "create the context" if "llama_context" in bare else "load the model"
    if reason:
        problem = f"llama.cpp could not {what}{where}: {reason}"
    else:
        problem = f"{bare}{'' if path and path in bare else where}"
    fix = fix_for(reason or "") or fix_for(bare)
    if fix is None and "llama_context" in bare:
        # with no reason logged, memory for the KV cache / compute buffers is the usual cause
        fix = ("not enough memory is the usual cause: use a smaller n_ctx, a quantized KV cache "
               "(type_k/type_v q8_0) or a larger n_cpu_moe; also check that type_v is f16 when "
               "flash_attn is off. Run with verbose=True to see llama.cpp's full log")
    err = ModelLoadError(problem, fix)
    err.reason = reason  # type: ignore[attr-defined]
    err.log = log  # type: ignore[attr-defined]
    return err


def load_llama(llama_cls: Any = None, *, echo: bool = True, **kwargs: Any):
    """`llama_cpp.Llama(**kwargs)` (or `llama_cls(**kwargs)`), raising ModelLoadError with
    llama.cpp's own reason and a fix on failure. The load log is kept as `llm.load_log`."""
    if llama_cls is None:
        from qwenkit.llama_api import Llama as llama_cls
    path = kwargs.get("model_path")
    failure: ValueError | None = None
    llm: Any = None     # set unless the load failed (then raised below)
    with capture_log(echo=echo) as log:
        try:
            llm = llama_cls(**kwargs)
        except ValueError as e:
            failure = e
    if failure is not None:
        msg = str(failure)
        if msg.startswith("Model path does not exist"):
            raise ModelLoadError(f"model file {path} does not exist",
                                 "check the path, or download the model first") from failure
        if not ("Failed to" in msg or log.errors):
            raise failure
        # the half-built Llama (its loaded model: GiBs of GPU memory) is reachable from the
        # traceback's frames until they are dropped; a smaller retry would then run out of memory
        failure = failure.with_traceback(None)
        gc.collect()
        raise model_load_error(log, failure, str(path) if path else None) from failure
    try:
        llm.load_log = log
    except AttributeError:  # pragma: no cover - a class with __slots__
        pass
    return llm
