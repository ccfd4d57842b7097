"""Build verification: is this llama-cpp-python really using the GPU, and if not, how to fix it.

The most common failure of a local-LLM setup is silent: `pip install llama-cpp-python`
compiles a CPU-only build unless CMAKE_ARGS asked for CUDA, and pip's wheel cache then
keeps handing back that CPU build. `diagnose()` looks at the build, the GPUs (NVML) and the
toolchain and gives one verdict with the exact fix; `load_check()` loads a model once and
reports whether its layers really went to the GPU, and a short decode speed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwenkit.units import MiB

__all__ = ["GPU", "LLAMA_CPP_VERSION", "VERDICT_CPU_BUILD_WITH_GPU", "VERDICT_CUDA_NO_GPU", "VERDICT_NO_GPU",
           "VERDICT_NO_NVCC", "VERDICT_OK", "BuildInfo", "Report", "add_cli", "build_info", "diagnose", "load_check",
           "nvcc_version", "nvml_gpus", "reinstall_command", "run"]

LLAMA_CPP_VERSION = "0.3.36"   # = llama_api.TESTED_VERSION, not imported: doctor must run when that check fails

VERDICT_OK = "CUDA build and GPU: ok"
VERDICT_CPU_BUILD_WITH_GPU = "GPU present but CPU-only build"
VERDICT_NO_NVCC = "GPU present but CPU-only build, and no CUDA toolkit (nvcc) to build with"
VERDICT_NO_GPU = "no GPU: CPU only"
VERDICT_CUDA_NO_GPU = "CUDA build but no GPU visible"


@dataclass
class GPU:
    index: int
    name: str
    compute_capability: str      # "8.9"
    total_mib: int
    free_mib: int
    driver: str

    @property
    def arch(self) -> str:       # CMAKE_CUDA_ARCHITECTURES value, "89"
        return self.compute_capability.replace(".", "")


@dataclass
class BuildInfo:
    version: str
    gpu_offload: bool            # llama_supports_gpu_offload(): compiled with a GPU backend
    system_info: str             # llama_print_system_info(): CPU features, CUDA archs

    @property
    def backend(self) -> str:
        if not self.gpu_offload:
            return "CPU"
        for name in ("CUDA", "HIP", "Vulkan", "Metal", "SYCL"):
            if name.upper() in self.system_info.upper():
                return name
        return "GPU"


@dataclass
class Report:
    build: BuildInfo
    gpus: list[GPU]
    nvcc: str | None
    verdict: str
    advice: list[str] = field(default_factory=list)
    fix_command: str | None = None
    load: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.verdict in (VERDICT_OK, VERDICT_NO_GPU)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["build"]["backend"] = self.build.backend
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [f"llama-cpp-python {self.build.version}, backend: {self.build.backend}"]
        if self.gpus:
            for g in self.gpus:
                lines.append(f"GPU {g.index}: {g.name}, compute {g.compute_capability}, "
                             f"{g.free_mib:,} of {g.total_mib:,} MiB free, driver {g.driver}")
        else:
            lines.append("GPU: none found (NVML)")
        lines.append(f"nvcc: {self.nvcc or 'not found'}")
        lines.append(f"verdict: {self.verdict}")
        lines += [f"  - {a}" for a in self.advice]
        if self.fix_command:
            lines.append(f"fix: {self.fix_command}")
        if self.load:
            ld = self.load
            lines.append(f"load check ({Path(ld['model']).name}): {ld['offloaded']} layers on the GPU, "
                         f"{ld['tok_per_s']:.1f} tok/s decode ({ld['tokens']} tokens)")
        return "\n".join(lines)


# ---- facts -------------------------------------------------------------------------------
def build_info() -> BuildInfo:
    import llama_cpp
    return BuildInfo(version=llama_cpp.__version__,
                     gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
                     system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip())


def nvml_gpus() -> list[GPU]:
    """GPUs as NVML sees them; [] when there is no NVIDIA driver (a valid answer)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):   # no driver, no libnvidia-ml: no GPU to report
        return []
    try:
        out = []
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GPU(i, name, f"{major}.{minor}", mem.total // MiB, mem.free // MiB, driver))
        return out
    finally:
        pynvml.nvmlShutdown()


def nvcc_version() -> str | None:
    exe = shutil.which("nvcc")
    if not exe:
        return None
    try:
        # a failing nvcc still names itself: its path is the answer then (no release found below)
        text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return exe
    m = re.search(r"release ([\d.]+)", text)
    return f"{m.group(1)} ({exe})" if m else exe


# ---- verdict -----------------------------------------------------------------------------
def reinstall_command(arch: str) -> str:
    """Cache-proof rebuild for one GPU architecture: pip's wheel cache ignores CMAKE_ARGS,
    so without --no-cache-dir --force-reinstall a cached CPU wheel comes back silently."""
    return (f'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={arch}" '
            f"pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python=={LLAMA_CPP_VERSION}"
            "   (or: make setup, which does this and keeps the wheel per flag set)")


def diagnose(build: BuildInfo | None = None, gpus: list[GPU] | None = None,
             nvcc: str | None | Literal[False] = False) -> Report:
    """One verdict from the build, the GPUs and the toolchain.

    Each fact may be handed in (the test seam for machines this one is not); missing ones
    are read from this machine. `nvcc=False` means "look it up"; None means "not installed"."""
    build = build if build is not None else build_info()
    gpus = gpus if gpus is not None else nvml_gpus()
    nvcc = nvcc_version() if nvcc is False else nvcc
    advice: list[str] = []
    fix = None
    if gpus and build.gpu_offload:
        verdict = VERDICT_OK
        advice.append("load models with n_gpu_layers=-1 (the kit's default) so every layer runs on the GPU")
    elif gpus and nvcc:
        verdict = VERDICT_CPU_BUILD_WITH_GPU
        advice.append("this llama-cpp-python was compiled without CUDA: every layer runs on the CPU, "
                      "typically 5-20x slower than the card could decode")
        fix = reinstall_command(gpus[0].arch)
    elif gpus:
        verdict = VERDICT_NO_NVCC
        advice += [
            "building llama-cpp-python with CUDA needs the CUDA toolkit's compiler, nvcc",
            "install it: Debian/Ubuntu/WSL2 `sudo apt install nvidia-cuda-toolkit`, or NVIDIA's "
            "cuda-toolkit package for your distribution, or `conda install -c nvidia cuda-nvcc`; "
            "then make sure `nvcc --version` works (add /usr/local/cuda/bin to PATH)",
        ]
        fix = reinstall_command(gpus[0].arch)
    elif build.gpu_offload:
        verdict = VERDICT_CUDA_NO_GPU
        advice.append("the build has a GPU backend but NVML sees no GPU: check the driver "
                      "(`nvidia-smi`), and on WSL2 the Windows NVIDIA driver")
    else:
        verdict = VERDICT_NO_GPU
        advice += [
            "everything runs on the CPU: decode speed is bounded by RAM bandwidth divided by the "
            "bytes read per token (about 2 GB for Qwen3.5-35B-A3B at Q4_K_M), so expect a few to "
            "~15 tok/s for the 35B model on a desktop; the small default model decodes 150-200 tok/s "
            "on a quiet 2-core machine (llama-bench tg128 measured 155-197 there; a busy one measures less)",
            "the kit, its notebooks and tests all work here on the small default model",
        ]
    return Report(build, gpus, nvcc or None, verdict, advice, fix)


# ---- load check --------------------------------------------------------------------------
def load_check(model: str | Path | None = None, n_tokens: int = 32, n_ctx: int = 512) -> dict[str, Any]:
    """Load a model once with every layer asked for the GPU; report what llama.cpp did and
    a short greedy decode speed. Uses the default model, or a tiny synthetic one."""
    from qwenkit.config import default_threads
    from qwenkit.llamalog import capture_log, load_llama

    if model is None:
        model = _check_model()
    with capture_log(echo=False) as log:
        # load_llama: a failed load raises ModelLoadError with llama.cpp's own reason
        llm = load_llama(model_path=str(model), n_ctx=n_ctx, n_gpu_layers=-1, flash_attn=True,
                         n_threads=default_threads(), verbose=False)
    try:
        off = log.offloaded()
        offloaded = f"{off[0]}/{off[1]}" if off else "0 (no GPU backend)"
        prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog. Then")
        llm.eval(prompt)
        t0 = time.perf_counter()
        n = 0
        for tok in llm.generate([], temp=0.0, reset=False):
            n += 1
            if n >= n_tokens or tok == llm.token_eos():
                break
        dt = time.perf_counter() - t0
    finally:
        llm.close()
    return {"model": str(model), "offloaded": offloaded, "tokens": n, "seconds": dt,
            "tok_per_s": n / dt if dt > 0 else 0.0}


def _check_model() -> Path:
    from qwenkit.errors import GGUFError
    from qwenkit.models import default_model_path
    try:
        path = default_model_path()
        if path.is_file():
            return path
    except GGUFError:
        pass
    from qwenkit.synthetic import tiny_model  # where the default is not installed
    return tiny_model("qwen35moe")


def run(load: bool = True, model: str | Path | None = None) -> Report:
    report = diagnose()
    if load:
        report.load = load_check(model)
    return report


# ---- CLI -----------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("doctor", help="check that llama-cpp-python uses your GPU, and how to fix it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-load", action="store_true", help="skip loading a model")
    p.add_argument("--model", help="GGUF to load for the check (default: --config's model, or the small "
                                   "default model)")
    p.add_argument("--config", metavar="FILE", help="a saved RunConfig: its model is the one loaded for the check")

    def _run(args) -> int:
        from qwenkit.config import RunConfig
        model = args.model or (RunConfig.load(args.config).model if args.config else None)
        report = run(load=not args.no_load, model=model)
        print(report.to_json() if args.json else report)
        return 0 if report.ok else 1

    p.set_defaults(func=_run)
